// The main thread's CPU per connection: its books (connection records, registry, timers, guard,
// metrics, access log) measured without sockets or a network, so that a change to them can be
// judged by itself. The splice relay's worker is replaced by bench/books-worker.ts, which sends
// the records a real worker sends for short connections (connect, a message each way, both FINs)
// at a fixed rate; the proxy is the real one, with its metrics and an access log in a file, as
// the CLI runs it. CPU time per thread comes from /proc/self/task/TID/schedstat (nanoseconds).
//
// usage: node dist/bench/books-cost.js [SECONDS=3] [RATE=6000] [REPS=3]
// BOOKS_LOG=off: the access log off, to see what it costs.
// Prints, per repetition, the main thread's and the V8 helper threads' µs per connection.

import fs from 'node:fs';
import v8 from 'node:v8';
import os from 'node:os';
import path from 'node:path';
import { resolveConfig } from '../src/config/schema.js';
import { silentLogger } from '../src/log.js';
import { ProxyMetrics } from '../src/admin/metrics.js';
import { Proxy } from '../src/proxy/proxy.js';

// As the CLI sets it (src/cli/proxy.ts): the young generation stays at its size.
v8.setFlagsFromString('--semi-space-growth-factor=1');
const [seconds = 3, rate = 6000, reps = 3] = process.argv.slice(2).map(Number);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'halfclose-books-'));
const tidFile = path.join(dir, 'worker-tid');
process.env.BOOKS_RATE = String(rate);
process.env.BOOKS_TID_FILE = tidFile;

/** CPU nanoseconds per thread of this process. */
function threadCpu(): Map<string, number> {
  const m = new Map<string, number>();
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      m.set(tid, Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      /* the thread ended */
    }
  }
  return m;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

try {
  for (let rep = 0; rep < reps; rep++) {
    const config = resolveConfig(
      { listeners: [{ kind: 'route', listen: '127.0.0.1:0', upstream: '127.0.0.1:9' }], accessLog: process.env.BOOKS_LOG === 'off' ? 'off' : path.join(dir, `access-${rep}.log`), admin: { address: 'off' } },
      'bench',
    );
    const proxy = new Proxy(config, { logger: silentLogger(), spliceWorkerUrl: new URL('./books-worker.js', import.meta.url) });
    new ProxyMetrics(proxy);
    let closed = 0;
    proxy.observe({ closed: () => closed++ });
    await proxy.start();
    await sleep(1000);
    const worker = fs.readFileSync(tidFile, 'utf8');
    const [c0, n0] = [threadCpu(), closed];
    await sleep(seconds * 1000);
    const [c1, n] = [threadCpu(), closed - n0];
    let main = 0;
    let helpers = 0;
    for (const [tid, ns] of c1) {
      const d = ns - (c0.get(tid) ?? 0);
      if (tid === String(process.pid)) main += d;
      else if (tid !== worker) helpers += d;
    }
    console.log(`main ${(main / 1000 / n).toFixed(2)} µs/conn   other threads ${(helpers / 1000 / n).toFixed(2)} µs/conn   (${n} connections, ${Math.round(n / seconds)}/s)`);
    await proxy.drain(0);
    await proxy.close();
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
