// Captured kernel output under test/fixtures/, found from the source tree (tsx) or from dist/.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
  return dir;
}

export const REPO_ROOT = findRoot();

/** Path of `test/fixtures/<kind>/<name>`. */
export function fixturePath(kind: string, name: string): string {
  return path.join(REPO_ROOT, 'test/fixtures', kind, name);
}

/** Text of `test/fixtures/<kind>/<name>`. */
export function readFixture(kind: string, name: string): string {
  return readFileSync(fixturePath(kind, name), 'utf8');
}
