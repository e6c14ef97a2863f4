// Durations as operators write them: `250ms`, `30s`, `5m`, `1h`, `1h30m`; `0` disables a timer.

import { HalfcloseError } from '../errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;

/** Parses a duration into milliseconds. `what` names the flag or key in the error. */
export function parseDuration(text: string | number, what: string): number {
  if (typeof text === 'number') {
    if (text === 0) return 0;
    throw new HalfcloseError('HC_ERR_DURATION', `${what}: expected a duration with a unit (250ms, 30s, 1h) or 0, got ${text}`);
  }
  const s = text.trim();
  if (s === '0') return 0;
  let total = 0;
  let consumed = 0;
  PART.lastIndex = 0;
  for (let m = PART.exec(s); m !== null; m = PART.exec(s)) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    consumed = PART.lastIndex;
  }
  if (s.length === 0 || consumed !== s.length) {
    throw new HalfcloseError('HC_ERR_DURATION', `${what}: expected a duration with a unit (250ms, 30s, 1h) or 0, got "${text}"`);
  }
  return Math.round(total);
}

/** The shortest readable form: 3600000 -> "1h", 1500 -> "1500ms", 0 -> "0". */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
