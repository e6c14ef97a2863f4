// The benchmark's smoke test: a seconds-long `make bench` (BENCH_QUICK) in which every contender
// installed here must produce a number for every figure. No figure is compared with anything:
// speed is never asserted in a test.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { runBench } from '../../bench/run.js';
import { hasCommand } from '../../src/kernel/run.js';

const THROUGHPUT = ['throughput1', 'throughput8'];
const LATENCY = ['rtt1p50', 'rtt1p99', 'rtt1kp50', 'rtt1kp99', 'connRate'];
const MEMORY = ['memTotal', 'memPerConn'];

test('a quick bench run gives every contender a number for every figure', { timeout: 120_000 }, async (t) => {
  const out = mkdtempSync(join(os.tmpdir(), 'halfclose-bench-smoke-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  const log: string[] = [];
  const res = await runBench({ quick: true, outDir: out, log: (l) => log.push(l) });

  const byName = new Map(res.contenders.map((c) => [c.name, c]));
  assert.deepEqual([...byName.keys()], ['direct', 'halfclose', 'haproxy', 'haproxy-log', 'nginx', 'socat']);
  // direct and halfclose need nothing but this repository (built): they always run.
  assert.equal(byName.get('direct')!.skipped, null);
  assert.equal(byName.get('halfclose')!.skipped, null, 'halfclose was skipped: run make build first');
  const iperf = hasCommand('iperf3');
  for (const c of res.contenders) {
    if (c.skipped) {
      t.diagnostic(`${c.name} skipped: ${c.skipped}`);
      continue;
    }
    assert.deepEqual(c.errors, [], `${c.name} failed:\n${log.join('\n')}`);
    const keys = [...LATENCY, ...(iperf ? THROUGHPUT : []), ...(c.name === 'direct' ? [] : MEMORY)];
    for (const k of keys) {
      const m = c.metrics[k];
      assert.ok(m && m.runs.length === 1 && Number.isFinite(m.median), `${c.name} has no ${k}: ${JSON.stringify(m)}`);
    }
    // Throughput and rates are positive whatever the machine's load; a zero means nothing moved.
    for (const k of ['connRate', ...(iperf ? THROUGHPUT : []), ...(c.name === 'direct' ? [] : ['memTotal'])]) {
      assert.ok(c.metrics[k]!.median > 0, `${c.name} ${k} is ${c.metrics[k]!.median}`);
    }
  }

  // Both outputs are written, and the table names every contender and the per-core setup.
  const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as typeof res;
  assert.equal(json.contenders.length, 6);
  const md = readFileSync(join(out, 'RESULTS.md'), 'utf8');
  assert.match(md, /\| \| direct \| halfclose \| haproxy \| haproxy-log \| nginx \| socat \|/);
  assert.match(md, /Per core:/);
  assert.match(md, /Memory per idle connection/);
});
