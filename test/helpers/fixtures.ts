// Captured kernel output under test/fixtures/, found from the source tree (tsx) or from dist/.

import { readFileSync } from 'node:fs';
import path from 'node:path';

import { REPO_ROOT } from './repo.js';

export { REPO_ROOT };

/** Path of `test/fixtures/<kind>/<name>`. */
export function fixturePath(kind: string, name: string): string {
  return path.join(REPO_ROOT, 'test/fixtures', kind, name);
}

/** Text of `test/fixtures/<kind>/<name>`. */
export function readFixture(kind: string, name: string): string {
  return readFileSync(fixturePath(kind, name), 'utf8');
}
