// `halfclose lab` on the command line: a truthful --help, and bad input answered with one line
// naming the flag and exit status 2, before any namespace is made.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { SCENARIO_NAMES } from '../../src/lab/scenarios.js';
import { readableBySidecar, SIDECAR_NAMES } from '../../src/lab/sidecars.js';
import { ROOT } from '../helpers/netns.js';

const lab = (...args: string[]): { code: number | null; out: string; err: string } => {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'lab', ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

test('--help names every scenario, sidecar and flag', () => {
  const r = lab('--help');
  assert.equal(r.code, 0);
  for (const name of [...SCENARIO_NAMES, ...SIDECAR_NAMES, '--scenario', '--proxy', '--close-wait', '--report', '--json', '--parallel']) assert.ok(r.out.includes(name), name);
});

test('bad input: one line naming the flag, exit status 2', () => {
  const cases: [string[], RegExp][] = [
    [['--bogus'], /unknown flag --bogus/],
    [['--proxy', 'envoy'], /--proxy "envoy" is unknown; expected all or one of: halfclose, envoy-like/],
    [['--scenario', 'seed,nope'], /--scenario "nope" is unknown/],
    [['--close-wait', '0'], /--close-wait must be a whole number from 1 to 60/],
    [['--report', 'out.txt'], /--report needs a file name ending in \.html/],
  ];
  for (const [args, re] of cases) {
    const r = lab(...args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.err, re);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.equal(r.out, '');
  }
});

const MAIN = path.join(ROOT, 'dist/src/cli/main.js');

test('not root: one line saying so, exit status 2, nothing created', { skip: readableBySidecar(MAIN) ? false : 'the checkout is not readable by uid 1337' }, () => {
  const r = spawnSync('setpriv', ['--reuid=1337', '--regid=1337', '--clear-groups', '--', process.execPath, path.join(ROOT, 'dist/src/cli/main.js'), 'lab', '--scenario', 'seed'], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^halfclose: lab: needs root/);
  assert.equal(r.stderr.trim().split('\n').length, 1);
});
