// A slow reader behind 200 MB: the proxy stops reading from the fast side while the slow side's
// unsent bytes are over the buffer limit, so what it holds for a connection stays near the limit
// (1 MiB by default) however much is pushed at it. Measured, sampled every few ms, not as wall
// time: with the splice relay as the bytes in the direction's pipe (its shared counter); with the
// copying relay as the bytes pending in the proxy's own sockets (the upstream socket's
// writableLength plus what the client socket has read but not handed on). The process's RSS is
// checked loosely too.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type net from 'node:net';
import { socketFd, takeSocketError } from '../../src/kernel/sockopt.js';
import { connect, sleep, startRouteProxy, startServer, waitFor } from '../helpers/proxy.js';

const TOTAL = 200 * 1024 * 1024;
const BLOCK = randomBytes(1024 * 1024); // 200 copies of one random MiB, hashed as a stream
const LIMIT = 1 << 20;
// The pump pauses once the destination holds >= LIMIT; on top come the chunk that crossed it
// (<= 64 KiB, the read size) and what the paused client socket has read ahead (its 16 KiB
// high-water mark plus the 64 KiB read that crossed it). Measured peak: LIMIT + 128 KiB.
const BOUND = LIMIT + 256 * 1024;

for (const relay of ['splice', 'copy'] as const) {
for (const direction of ['client->server', 'server->client'] as const) {
test(`a slow reader behind 200 MB (${direction}, ${relay} relay) keeps the bytes the proxy holds under the buffer limit`, { timeout: 120_000 }, async (t) => {
  let server: net.Socket | null = null;
  let client: net.Socket | null = null;
  const up = await startServer((s) => {
    server = s;
    s.pause();
  });
  const c2s = direction === 'client->server';
  const px = await startRouteProxy(up.port, { bufferLimit: LIMIT, relay });
  t.after(async () => {
    // A paused socket does not notice a reset: destroy our peers, or server.close() waits forever.
    server?.destroy();
    client?.destroy();
    await px.close();
    await up.close();
  });
  client = await connect(px.port);
  client.pause();
  await waitFor(() => server !== null, 5000, 'upstream accept');
  const conn = [...px.proxy.registry.all()][0]!;
  // The fast writer and the slow reader, and the proxy's own sockets on each side.
  const [fast, srv] = c2s ? [client, server! as net.Socket] : [server! as net.Socket, client];
  const dir = c2s ? conn.c2s : conn.s2c;
  const copied = (): number =>
    c2s ? (conn.upstream?.writableLength ?? 0) + (conn.client?.readableLength ?? 0) : (conn.client?.writableLength ?? 0) + (conn.upstream?.readableLength ?? 0);
  const held = (): number => dir.held ?? copied();

  // The client writes as fast as the proxy accepts, honouring its own backpressure.
  const sentHash = createHash('sha256');
  let sent = 0;
  const writer = (async () => {
    while (sent < TOTAL) {
      sentHash.update(BLOCK);
      sent += BLOCK.length;
      if (!fast.write(BLOCK)) await new Promise((r) => fast.once('drain', r));
    }
    fast.end();
  })();

  let maxHeld = 0;
  let pausedSeen = 0;
  const sampler = setInterval(() => {
    maxHeld = Math.max(maxHeld, held());
    if (dir.paused) pausedSeen++;
  }, 5);
  const rssBefore = process.memoryUsage().rss;
  let maxRss = rssBefore;

  // Phase 1: the reader reads nothing. The proxy must stop reading the client, not buffer.
  await waitFor(() => dir.paused, 10_000, 'the proxy to pause reading the fast side');
  await sleep(500);
  const stalledAt = dir.bytes;
  await sleep(500);
  assert.equal(dir.bytes, stalledAt, 'the proxy kept reading the fast side while the slow one was not draining');
  assert.ok(held() <= BOUND, `held ${held()} bytes with the reader stopped`);
  assert.ok(sent < TOTAL, 'the writer could push everything: nothing was held back');

  // Phase 2: the reader reads in bursts with pauses in between, until all 200 MB are through.
  const gotHash = createHash('sha256');
  let got = 0;
  srv.on('data', (c: Buffer) => {
    gotHash.update(c);
    got += c.length;
  });
  const ended = new Promise<void>((r) => srv.once('end', () => r()));
  let reading = true;
  const slow = setInterval(() => {
    reading = !reading;
    if (reading) srv.resume();
    else srv.pause();
    maxRss = Math.max(maxRss, process.memoryUsage().rss);
  }, 20);
  srv.resume();
  await ended;
  clearInterval(slow);
  clearInterval(sampler);
  await writer;

  assert.equal(got, TOTAL);
  assert.equal(gotHash.digest('hex'), sentHash.digest('hex'), 'sha256 of the 200 MB');
  assert.ok(maxHeld <= BOUND, `the proxy held up to ${maxHeld} bytes for the connection (bound ${BOUND})`);
  assert.ok(maxHeld >= LIMIT / 2, `sampling saw at most ${maxHeld} bytes held: the measurement is not seeing the buffer`);
  assert.ok(pausedSeen > 0);
  // Loose: buffering the whole transfer would add 200 MB.
  assert.ok(maxRss - rssBefore < 100 * 1024 * 1024, `RSS grew by ${Math.round((maxRss - rssBefore) / 1048576)} MiB`);
  t.diagnostic(`max held ${maxHeld} B, RSS growth ${Math.round((maxRss - rssBefore) / 1048576)} MiB`);
  srv.end();
  await px.closed(1);
  assert.equal(px.log[0]!.reason, 'both-fin');
  assert.equal((px.log[0]![c2s ? 'clientToServer' : 'serverToClient'] as { bytes: number }).bytes, TOTAL);
});
}
}

// While the proxy is not reading a side (its destination is full), nothing would notice that side's
// RST: the connection would hang on, unreset, until the stuck reader drained — maybe never. And
// once reading resumes, libuv reports such a reset as a plain EOF after the queued bytes, which
// the relay must not forward as a FIN.
for (const resetter of ['client', 'server'] as const) {
  for (const readerResumes of [false, true]) {
    const title = `an RST from the ${resetter} while reading from it is paused is forwarded as an RST (${readerResumes ? 'the reader drains at once' : 'the reader stays stuck'})`;
    test(title, { timeout: 60_000 }, async (t) => {
      let server: net.Socket | null = null;
      const up = await startServer((s) => {
        server = s;
        s.pause();
      });
      const px = await startRouteProxy(up.port, { bufferLimit: '64KiB' });
      const client = await connect(px.port);
      client.pause();
      t.after(async () => {
        client.destroy();
        (server as net.Socket | null)?.destroy();
        await px.close();
        await up.close();
      });
      await waitFor(() => server !== null, 5000, 'upstream accept');
      const srv = server! as net.Socket;
      const [writer, reader] = resetter === 'client' ? [client, srv] : [srv, client];
      const dir = resetter === 'client' ? 'c2s' : 's2c';
      const conn = [...px.proxy.registry.all()][0]!;
      writer.on('error', () => {});
      reader.on('error', () => {});
      writer.write(Buffer.alloc(16 * 1024 * 1024));
      await waitFor(() => conn[dir].paused, 10_000, 'the proxy to pause reading');
      const readerFd = socketFd(reader);
      writer.resetAndDestroy();
      if (readerResumes) {
        reader.on('data', () => {});
        reader.resume();
      }
      await waitFor(() => px.log.length === 1, 10_000, 'the reset to end the connection');
      assert.equal(px.log[0]!.reason, resetter === 'client' ? 'downstream-reset' : 'upstream-reset');
      assert.match(String(px.log[0]!.error), /ECONNRESET/);
      assert.equal((px.log[0]![dir === 'c2s' ? 'clientToServer' : 'serverToClient'] as { state: string }).state, 'reset');
      if (!readerResumes) {
        // The reader is not reading, so Node cannot tell it; the kernel holds the reset for it.
        assert.equal(takeSocketError(readerFd), 'ECONNRESET', 'the stuck reader was sent an RST, not a FIN');
      }
    });
  }
}
