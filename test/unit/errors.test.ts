// Every error code in src/errors.ts is documented in docs/errors.md with the same one-line
// meaning, and the page documents no code the program does not have (fastify's rule).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ERROR_CODES, HalfcloseError, type ErrorCode } from '../../src/errors.js';
import { REPO_ROOT } from '../helpers/repo.js';


const doc = readFileSync(path.join(REPO_ROOT, 'docs', 'errors.md'), 'utf8');

/** `## HC_ERR_X` sections: code -> the section's text. */
function sections(): Map<string, string> {
  const out = new Map<string, string>();
  const parts = doc.split(/^## /m).slice(1);
  for (const p of parts) {
    const [title, ...rest] = p.split('\n');
    out.set(title!.trim(), rest.join('\n'));
  }
  return out;
}

test('every code in src/errors.ts has a section in docs/errors.md with its one-line meaning', () => {
  const s = sections();
  for (const [code, meaning] of Object.entries(ERROR_CODES)) {
    assert.ok(s.has(code), `docs/errors.md has no "## ${code}" section`);
    assert.ok(s.get(code)!.includes(meaning), `docs/errors.md, ${code}: the section should say "${meaning}"`);
  }
});

test('docs/errors.md documents no code the program does not have', () => {
  const known = new Set(Object.keys(ERROR_CODES));
  for (const title of sections().keys()) assert.ok(known.has(title), `docs/errors.md documents "${title}", which src/errors.ts does not define`);
  for (const mention of doc.match(/HC_ERR_[A-Z_]+/g) ?? []) assert.ok(known.has(mention), `docs/errors.md mentions unknown code ${mention}`);
});

test('errors carry their code and cause', () => {
  const cause = new Error('EADDRINUSE');
  const e = new HalfcloseError('HC_ERR_LISTEN' satisfies ErrorCode, 'cannot listen', { cause });
  assert.equal(e.code, 'HC_ERR_LISTEN');
  assert.equal(e.cause, cause);
  assert.ok(e instanceof Error);
});
