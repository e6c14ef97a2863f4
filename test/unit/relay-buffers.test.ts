// The relay's reused read buffers (UPSTREAM_ONREAD): quiet upstream sockets share one buffer and
// bulk ones reuse pooled buffers, so a chunk still queued for a slow client must never be
// overwritten by a later read of the same or another connection. Many connections at once, each
// mixing 1-byte and 200 KiB writes, half of them read by a slow client: every client must read
// exactly the bytes its upstream wrote. The same load goes through the splice relay too (whose
// pipes are pooled and reused between connections the same way).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type net from 'node:net';
import { connect, startRouteProxy, startServer } from '../helpers/proxy.js';

const CONNECTIONS = 16;
// More than the kernel's loopback socket buffers hold, so the proxy has to queue for slow clients.
const BYTES_PER_CONNECTION = 12 * 1024 * 1024;

/** xorshift32: the same seed gives the same write sizes and bytes on both ends. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The writes an upstream makes for connection `id`: sizes from 1 B to 200 KiB, content from the seed. */
function* writes(id: number): Generator<Buffer> {
  const next = prng(0x9e3779b9 ^ (id * 7919));
  let left = BYTES_PER_CONNECTION;
  while (left > 0) {
    const r = next();
    // Mostly small writes (a quiet socket, the shared buffer), with bulk bursts (private buffers).
    const size = Math.min(left, r % 4 === 0 ? 1 + (next() % (200 * 1024)) : 1 + (next() % 512));
    const b = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) b[i] = next() & 0xff;
    left -= size;
    yield b;
  }
}

function expectedHash(id: number): string {
  const h = createHash('sha256');
  for (const b of writes(id)) h.update(b);
  return h.digest('hex');
}

for (const relay of ['splice', 'copy'] as const) {
test(`concurrent upstreams mixing small and bulk writes, slow and fast clients (${relay} relay): every byte arrives intact`, { timeout: 120_000 }, async (t) => {
  const up = await startServer((s) => {
    s.once('data', (d: Buffer) => {
      const gen = writes(d.readUInt32BE(0));
      // Writes in bursts with event-loop turns between them, so reads of different connections interleave.
      const pump = (): void => {
        for (let i = 0; i < 8; i++) {
          const n = gen.next();
          if (n.done) {
            s.end();
            return;
          }
          if (!s.write(n.value)) {
            s.once('drain', pump);
            return;
          }
        }
        setImmediate(pump);
      };
      pump();
    });
    s.on('error', () => s.destroy());
  });
  t.after(() => up.close());
  const px = await startRouteProxy(up.port, { relay });
  t.after(() => px.close());

  const one = async (id: number): Promise<{ id: number; got: string; bytes: number }> => {
    const c: net.Socket = await connect(px.port);
    const idBuf = Buffer.alloc(4);
    idBuf.writeUInt32BE(id);
    c.write(idBuf);
    const h = createHash('sha256');
    let bytes = 0;
    const slow = id % 2 === 1;
    // A slow client first reads nothing for a while: the kernel buffers fill, then the proxy's queue.
    if (slow) c.pause();
    if (slow) setTimeout(() => c.resume(), 300);
    await new Promise<void>((resolve, reject) => {
      c.on('data', (d: Buffer) => {
        h.update(d);
        bytes += d.length;
        if (slow) {
          // A slow reader: the proxy's writes to it queue, so its read buffers are retained.
          c.pause();
          setTimeout(() => c.resume(), 1 + (bytes % 3));
        }
      });
      c.on('end', () => {
        c.end();
        resolve();
      });
      c.on('error', reject);
    });
    return { id, got: h.digest('hex'), bytes };
  };

  const results = await Promise.all(Array.from({ length: CONNECTIONS }, (_, i) => one(i + 1)));
  for (const r of results) {
    assert.equal(r.bytes, BYTES_PER_CONNECTION, `connection ${r.id}: bytes read`);
    assert.equal(r.got, expectedHash(r.id), `connection ${r.id}: sha256 of what the client read`);
  }
  const closed = await px.closed(CONNECTIONS);
  assert.ok(closed.every((c) => c.reason === 'both-fin'), `close reasons: ${closed.map((c) => c.reason).join(', ')}`);
});
}
