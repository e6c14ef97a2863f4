// What is particular to the splice relay (the relay's semantics themselves are checked for both
// relays by relay-matrix, backpressure and relay-buffers): its pipes are borrowed only while bytes
// are in flight, so idle connections hold no descriptor beyond their two sockets; the worker
// thread really owns the connections (it accepts, connects and closes them, IPv6 included); and it
// resets them when a timer ends them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { resolveConfig } from '../../src/config/schema.js';
import type { Logger } from '../../src/log.js';
import { SpliceRelay, type SpliceHost, type SpliceOptions } from '../../src/proxy/splice.js';
import { libcCalls } from '../../src/kernel/libc.js';
import { getIntOption, IPPROTO_TCP, TCP_NODELAY } from '../../src/kernel/sockopt.js';
import { connect, fdCount, observe, sleep, socketFds, startProxy, startRouteProxy, startServer, waitFor, type Observed } from '../helpers/proxy.js';

/** This process's open pipe descriptors. */
function pipeFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('pipe:')) n++;
    } catch {
      // closed while listing
    }
  }
  return n;
}

test('idle connections that have carried bytes hold no pipe; pooled pipes go when the proxy is idle', async (t) => {
  const up = await startServer((s) => s.pipe(s));
  const px = await startRouteProxy(up.port);
  const clients: net.Socket[] = [];
  t.after(async () => {
    for (const c of clients) c.destroy();
    await px.close();
    await up.close();
  });
  const before = pipeFds();
  for (let i = 0; i < 40; i++) {
    const c = await connect(px.port);
    clients.push(c);
    c.write(`hello ${i}`);
    await new Promise((r) => c.once('data', r));
  }
  // The worker reports to the main thread at most a millisecond after the fact.
  await waitFor(() => px.proxy.registry.size === 40, 2000, 'the 40 connections in the registry');
  assert.ok([...px.proxy.registry.all()].every((c) => c.offload !== null), 'every connection is on the splice relay');
  // 40 connections have each moved bytes both ways; a few pipes may sit in the pool, not 160.
  assert.ok(pipeFds() - before <= 8, `${pipeFds() - before} pipe descriptors held by 40 idle connections`);
  // After a second without events the pool is emptied too.
  await waitFor(() => pipeFds() === before, 3000, 'the pipe pool to empty');
  // The connections still work, byte counts included.
  for (const c of clients) {
    c.write('again');
    await new Promise((r) => c.once('data', r));
  }
  const conn = [...px.proxy.registry.all()][0]!;
  assert.equal(conn.c2s.bytes, 'hello 0'.length + 'again'.length);
  assert.equal(conn.s2c.bytes, conn.c2s.bytes);
});

test('an idle timeout ends a spliced connection: the worker lets go, both sides get an RST', async (t) => {
  let server: net.Socket | null = null;
  const up = await startServer((s) => {
    server = s;
  });
  const px = await startRouteProxy(up.port, { timeouts: { idle: '300ms' } });
  t.after(async () => {
    await px.close();
    await up.close();
  });
  const c = await connect(px.port);
  const clientSaw = observe(c);
  c.write('x');
  await waitFor(() => server !== null, 2000, 'upstream accept');
  const serverSaw = observe(server!);
  await sleep(100);
  assert.ok(onlyOffloaded(px), 'the connection is on the splice relay');
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'idle-timeout');
  assert.equal((await clientSaw).end, 'reset');
  assert.equal((await serverSaw).end, 'reset');
  assert.equal((await serverSaw).data.toString(), 'x');
});

function onlyOffloaded(px: Awaited<ReturnType<typeof startRouteProxy>>): boolean {
  const all = [...px.proxy.registry.all()];
  return all.length === 1 && all[0]!.offload !== null;
}

test('the worker accepts IPv6 clients, turns Nagle off on both sockets and reports both sides\' addresses as the sockets see them', async (t) => {
  let seenByUpstream: { host: string; port: number } | null = null;
  const up = await startServer((s) => {
    seenByUpstream = { host: s.remoteAddress!, port: s.remotePort! };
    s.end('hi');
    s.resume();
  });
  const px = await startProxy(
    resolveConfig({ listeners: [{ kind: 'route', name: 'v6', listen: '[::1]:0', upstream: `127.0.0.1:${up.port}` }], admin: { address: 'off' } }, 'test'),
  );
  t.after(async () => {
    await px.close();
    await up.close();
  });
  const c = net.connect({ host: '::1', port: px.port });
  await new Promise((r) => c.once('connect', r));
  const local = { host: c.localAddress!, port: c.localPort! };
  await waitFor(() => px.proxy.registry.size === 1 && [...px.proxy.registry.all()][0]!.connectedAt !== 0, 2000, 'connected');
  const nodelay = socketFds([...px.proxy.registry.all()][0]!).map((fd) => getIntOption(fd, IPPROTO_TCP, TCP_NODELAY, 'TCP_NODELAY'));
  let got = '';
  c.on('data', (d) => (got += d));
  await new Promise((r) => c.once('end', r));
  c.end();
  const [entry] = await px.closed(1);
  assert.equal(got, 'hi');
  assert.deepEqual(nodelay, [1, 1], 'Nagle is off on both sockets (the client one inherits it from the listener)');
  assert.equal(entry!.reason, 'both-fin');
  assert.deepEqual(entry!.client, { host: '::1', port: local.port, family: 6 });
  assert.ok(seenByUpstream);
  assert.deepEqual(entry!.upstreamLocal, { host: '127.0.0.1', port: (seenByUpstream as { port: number }).port, family: 4 });
  assert.deepEqual(entry!.target, { host: '127.0.0.1', port: up.port, family: 4 });
});

// (A start() that waited for the failed worker's exit a second time hung here: the timeout fails it.)
test('a worker that cannot start: start() rejects and leaves no descriptor behind', { timeout: 10_000 }, async () => {
  const quiet = { info() {}, warn() {}, error() {}, debug() {} } as unknown as Logger;
  const host: SpliceHost = { accepted() {}, connected() {}, halfClosed() {}, finished() {}, acceptFailed() {}, gone() {} };
  const opts = (workerUrl?: URL): SpliceOptions => ({
    logger: quiet,
    host,
    listeners: [],
    workerListeners: [],
    ownPorts: [],
    localHosts: [],
    connectTimeoutMs: 1000,
    bufferLimitBytes: 1 << 20,
    halfClosed: null,
    established: null,
    userTimeoutMs: 0,
    ...(workerUrl ? { workerUrl } : {}),
  });
  const fds = fdCount();
  await assert.rejects(SpliceRelay.start(opts(new URL('data:text/javascript,throw new Error("no epoll here")'))), /no epoll here/);
  await assert.rejects(SpliceRelay.start(opts(new URL('data:text/javascript,process.exit(3)'))), /exited with code 3/);
  assert.equal(fdCount(), fds, 'the eventfds are closed again');
  // A working one starts and stops.
  const relay = await SpliceRelay.start(opts());
  assert.equal(relay.size, 0);
  await relay.stop();
});

test('a worker that dies: its connections are reset on both sides and logged, and Node serves the same port from then on', { timeout: 15_000 }, async (t) => {
  const upstreams: Promise<Observed>[] = [];
  const up = await startServer((s) => {
    upstreams.push(observe(s));
    s.pipe(s);
  });
  const px = await startRouteProxy(up.port);
  t.after(async () => {
    await px.close();
    await up.close();
  });
  const before = connect(px.port);
  const c = await before;
  const saw = observe(c);
  c.write('x');
  await waitFor(() => px.proxy.registry.size === 1 && [...px.proxy.registry.all()][0]!.offload !== null, 2000, 'a spliced connection');
  // Killed as soon as the upstream has accepted: the worker may not have reported the connect yet
  // (its records go out every 20 ms), and its upstream socket must be reset all the same.
  await waitFor(() => upstreams.length === 1, 2000, 'the upstream connection');
  // The worker thread goes away as a crash would take it. It sleeps in epoll_wait, where a
  // terminate() cannot reach it: a wake-up brings it back to JavaScript, where it stops.
  const splice = (px.proxy as unknown as { splice: { worker: { terminate(): Promise<number> }; wakeFd: number } }).splice;
  const terminated = splice.worker.terminate();
  libcCalls().write(splice.wakeFd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), 8);
  await terminated;
  assert.equal((await saw).end, 'reset', 'its client is reset, not left hanging');
  const upstreamEnd = await Promise.race([upstreams[0]!, sleep(3000).then(() => ({ end: 'still open after 3 s' }))]);
  assert.equal(upstreamEnd.end, 'reset', 'its upstream is reset, not left open');
  const [entry] = await px.closed(1);
  assert.match(String(entry!.error), /splice relay worker failed/);
  // The same port answers again, now through Node.
  let again: net.Socket | null = null;
  await waitFor(async () => {
    again?.destroy();
    again = await connect(px.port).catch(() => null);
    return again !== null;
  }, 5000, 'the port to listen again');
  const echoed = new Promise((r) => again!.once('data', r));
  again!.write('y');
  assert.equal(String(await echoed), 'y');
  assert.ok([...px.proxy.registry.all()].every((conn) => conn.offload === null && conn.client !== null), 'carried by Node now');
  again!.destroy();
});
