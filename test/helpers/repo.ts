// Where the repository is, for tests that run the built CLI or read the docs: found by walking up
// from the test file, so the same test works from source (tsx, test/unit) and built (dist/test/unit).

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'bin', 'halfclose')) || !existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('bin/halfclose not found above the test helpers');
    dir = up;
  }
  return dir;
}

export const REPO_ROOT = findRepoRoot();
/** The built CLI (`make build` first). */
export const BIN = path.join(REPO_ROOT, 'bin', 'halfclose');
