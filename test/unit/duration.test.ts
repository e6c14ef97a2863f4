// Durations as operators write them (`250ms`, `30s`, `1h30m`, `0`) and the errors for what they
// get wrong: a bare number, a space, an unknown unit.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HalfcloseError } from '../../src/errors.js';
import { formatDuration, parseDuration } from '../../src/util/duration.js';

test('parses each unit and combinations', () => {
  const cases: [string | number, number][] = [
    ['250ms', 250],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['2d', 172_800_000],
    ['1h30m', 5_400_000],
    ['1m30s500ms', 90_500],
    ['1.5s', 1500],
    [' 10s ', 10_000],
    ['0', 0],
    [0, 0],
    ['0s', 0],
  ];
  for (const [text, ms] of cases) assert.equal(parseDuration(text, 'x'), ms, JSON.stringify(text));
});

test('rejects a number without a unit, naming the key and what was expected', () => {
  for (const bad of ['30', 30, '', '5 s', '5sec', '-1s', 's', '1h 30m', 'abc', '10S', '1e3ms']) {
    assert.throws(
      () => parseDuration(bad, 'timeouts.idle'),
      (err: unknown) =>
        err instanceof HalfcloseError &&
        err.code === 'HC_ERR_DURATION' &&
        err.message.startsWith('timeouts.idle: expected a duration with a unit (250ms, 30s, 1h) or 0, got ') &&
        !err.message.includes('\n'),
      JSON.stringify(bad),
    );
  }
});

test('formats in the largest whole unit, and parsing the result gives the same value back', () => {
  assert.equal(formatDuration(0), '0');
  assert.equal(formatDuration(3_600_000), '1h');
  assert.equal(formatDuration(300_000), '5m');
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(1500), '1500ms');
  for (const ms of [0, 1, 250, 1000, 1500, 59_000, 60_000, 5_400_000, 86_400_000]) {
    assert.equal(parseDuration(formatDuration(ms), 'x'), ms);
  }
});
