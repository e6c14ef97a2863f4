// The access log's writer: every line of a batch reaches the destination whole and in order, also
// when the destination is a non-blocking pipe that is full (a slow reader of stdout), and a batch
// that fails is reported once, not thrown into the proxy.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { libcCalls, O_CLOEXEC, O_NONBLOCK } from '../../src/kernel/libc.js';
import { createAccessLog, LineWriter } from '../../src/proxy/accesslog.js';
import { Connection } from '../../src/proxy/registry.js';
import { resolveConfig } from '../../src/config/schema.js';

const config = resolveConfig({ listeners: [{ kind: 'route', name: 'web', listen: '127.0.0.1:0', upstream: '127.0.0.1:8080' }], admin: { address: 'off' } }, 'test');

test('a full non-blocking pipe is waited for: nothing is lost, nothing reordered, multi-byte text intact', async () => {
  const sys = libcCalls();
  const fds = Buffer.alloc(8);
  assert.equal(sys.pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  const [r, w] = [fds.readInt32LE(0), fds.readInt32LE(4)];
  // A reader in another thread that starts late and reads slowly, so the 64 KiB pipe fills.
  const reader = new Worker(
    `const fs = require('node:fs'); const { workerData, parentPort } = require('node:worker_threads');
     const buf = Buffer.alloc(4096); const parts = [];
     const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
     sleep(200);
     for (;;) {
       let n;
       try { n = fs.readSync(workerData.fd, buf); } catch (e) { if (e.code === 'EAGAIN') { sleep(2); continue; } throw e; }
       if (n === 0) break;
       parts.push(Buffer.from(buf.subarray(0, n)));
     }
     parentPort.postMessage(Buffer.concat(parts).toString('utf8'));`,
    { eval: true, workerData: { fd: r } },
  );
  const lines = Array.from({ length: 3000 }, (_, i) => `{"n":${i},"text":"é ü → ${'x'.repeat(i % 97)}"}\n`);
  const out = new LineWriter(w);
  const t0 = Date.now();
  for (let i = 0; i < lines.length; i += 500) out.write(lines.slice(i, i + 500).join(''));
  const waited = Date.now() - t0;
  sys.close(w);
  const [got] = (await new Promise((resolve) => reader.once('message', (m) => resolve([m])))) as [string];
  sys.close(r);
  assert.equal(got, lines.join(''), 'every byte, in order');
  assert.ok(waited >= 150, `the writer must have waited for the late reader (it returned after ${waited} ms)`);
});

test('lines reach a file whole; a destination that refuses writes is reported once, not thrown', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'halfclose-al-'));
  try {
    const file = path.join(dir, 'a', 'b', 'access.json');
    const errors: string[] = [];
    const log = createAccessLog(file, (err) => errors.push(err.code ?? err.message));
    const conn = new Connection(7, config.listeners[0]!, null, { host: '127.0.0.1', port: 5000, family: 4 }, Date.now());
    conn.closedAt = Date.now();
    conn.reason = 'both-fin';
    log.write(conn);
    log.flush();
    const line = JSON.parse(readFileSync(file, 'utf8'));
    assert.equal(line.id, 7);
    assert.equal(line.reason, 'both-fin');
    assert.equal(line.msg, 'connection closed');
    assert.deepEqual(errors, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // A destination that refuses every write (/dev/full: ENOSPC): each batch is dropped, the first
  // failure reported, and nothing thrown at the caller.
  const errors: string[] = [];
  const full = createAccessLog('/dev/full', (err) => errors.push(err.code ?? err.message));
  for (let batch = 0; batch < 3; batch++) {
    const conn = new Connection(batch, config.listeners[0]!, null, { host: '127.0.0.1', port: 5000, family: 4 }, Date.now());
    conn.closedAt = Date.now();
    full.write(conn);
    full.flush();
  }
  assert.deepEqual(errors, ['ENOSPC']);
});
