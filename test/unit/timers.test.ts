// Each timer ends exactly the connections it should, with its own close reason, and leaves the
// others alone: connect (an upstream that never answers the SYN), idle (no bytes either way),
// half-close (half-closed and idle), max duration (age, however busy). Timeouts are a second or more and the "busy" peers talk every 100 ms, so a loaded
// machine does not blur which connection is which.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type net from 'node:net';
import { blackholeUpstream } from '../helpers/blackhole.js';
import { connect, fdCount, observe, sleep, startRouteProxy, startServer, waitFor, type LoggedConnection, type Observed } from '../helpers/proxy.js';

interface Pair {
  client: net.Socket;
  server: net.Socket;
  clientSaw: Promise<Observed>;
  /** The proxy's connection id. */
  id: number;
}

async function setup(timeouts: Record<string, string>) {
  const accepted: net.Socket[] = [];
  const up = await startServer((s) => {
    s.on('error', () => {}); // resets are expected here; observe() reports the ones a test checks
    accepted.push(s);
  });
  const px = await startRouteProxy(up.port, { timeouts });
  const pairs: Pair[] = [];
  const open = async (): Promise<Pair> => {
    const n = accepted.length;
    const newest = (): number => Math.max(0, ...px.proxy.registry.all().map((c) => c.id));
    const before = newest();
    const client = await connect(px.port);
    const clientSaw = observe(client);
    // The upstream can accept before the proxy's books have the connection (the splice relay's
    // records reach them every 20 ms): its id is the one the registry learns of next.
    await waitFor(() => accepted.length > n && newest() > before, 5000, 'upstream accept and the registry entry');
    const id = newest();
    const p = { client, server: accepted[n]!, clientSaw, id };
    pairs.push(p);
    return p;
  };
  const entry = (p: Pair): LoggedConnection | undefined => px.log.find((e) => e.id === p.id);
  const live = (p: Pair): boolean => px.proxy.registry.all().some((c) => c.id === p.id);
  /** Sends a byte each way every 100 ms until stopped: never idle. */
  const busy = (p: Pair): (() => void) => {
    const t = setInterval(() => {
      if (!p.client.writableEnded) p.client.write('.');
      if (!p.server.writableEnded && !p.server.destroyed) p.server.write('.');
    }, 100);
    return () => clearInterval(t);
  };
  const cleanup = async (): Promise<void> => {
    for (const p of pairs) {
      p.client.destroy();
      p.server.destroy();
    }
    await px.close();
    await up.close();
  };
  return { px, open, entry, live, busy, cleanup };
}

/** A server socket that has already read EOF is not reading: the proxy's RST shows on its next write. */
async function writeFails(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    const again = setInterval(() => {
      if (s.destroyed) return;
      s.write('x');
    }, 50);
    s.once('close', () => clearInterval(again));
  });
}

test('connect timeout resets the client (never a clean EOF) with connect-timeout and leaves no socket behind', async (t) => {
  const up = await blackholeUpstream();
  t.after(() => up.close());
  const px = await startRouteProxy(up.port, { timeouts: { connect: '500ms', idle: '0' } });
  t.after(() => px.close());
  const fds = fdCount();
  const c = await connect(px.port);
  const saw = observe(c);
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'connect-timeout');
  assert.match(String(entry!.error), /no answer from 127\.0\.0\.1:\d+ within 500ms/);
  assert.equal((await saw).end, 'reset', 'the client must not see an empty reply');
  // Not before the timeout (a little slack: timers run on libuv's cached loop time, not Date.now()).
  assert.ok(Date.parse(entry!.closedAt as string) - Date.parse(entry!.startedAt as string) >= 450);
  await waitFor(() => fdCount() <= fds, 5000, `fds back to ${fds}`);
});

test('idle timeout ends the silent connection with idle-timeout, resets both peers, spares the busy one', async (t) => {
  const h = await setup({ idle: '1s' });
  t.after(h.cleanup);
  const silent = await h.open();
  const talky = await h.open();
  const serverSaw = observe(silent.server);
  const stop = h.busy(talky);
  await waitFor(() => h.entry(silent) !== undefined, 10_000, 'the silent connection to expire');
  assert.equal(h.entry(silent)!.reason, 'idle-timeout');
  assert.equal((await silent.clientSaw).end, 'reset', 'the client is reset, not sent a FIN');
  assert.equal((await serverSaw).end, 'reset', 'the upstream is reset too');
  // Twice the timeout later the busy connection is still there.
  await sleep(2000);
  assert.ok(h.live(talky), 'the busy connection was ended');
  stop();
  talky.client.end();
  talky.server.end();
  await waitFor(() => h.entry(talky) !== undefined, 5000, 'the busy connection to close');
  assert.equal(h.entry(talky)!.reason, 'both-fin');
  assert.deepEqual(h.px.log.map((e) => e.reason).sort(), ['both-fin', 'idle-timeout']);
});

test('half-close timeout ends only half-closed connections that are idle, with half-close-timeout', async (t) => {
  const h = await setup({ idle: '0', halfClose: '1s' });
  t.after(h.cleanup);
  const openIdle = await h.open(); // established and silent: no timer applies (idle is off)
  const halfIdle = await h.open(); // client FIN, then nothing
  const halfBusy = await h.open(); // client FIN, the server keeps sending
  halfIdle.client.end();
  halfBusy.client.end();
  const stop = h.busy(halfBusy);
  await waitFor(() => h.entry(halfIdle) !== undefined, 10_000, 'the idle half-closed connection to expire');
  const e = h.entry(halfIdle)!;
  assert.equal(e.reason, 'half-close-timeout');
  assert.equal((e.clientToServer as { state: string }).state, 'fin-forwarded', 'the client FIN had been forwarded');
  assert.equal((await halfIdle.clientSaw).end, 'reset', 'the half-closed client is reset');
  assert.match(await writeFails(halfIdle.server), /^(ECONNRESET|EPIPE)$/, 'the upstream was reset');
  await sleep(2000);
  assert.ok(h.live(openIdle), 'an established connection was ended by the half-close timer');
  assert.ok(h.live(halfBusy), 'a half-closed connection still carrying bytes was ended');
  stop();
  halfBusy.server.end();
  openIdle.client.end();
  openIdle.server.end();
  await h.px.closed(3);
  assert.deepEqual(h.px.log.map((x) => [x.id, x.reason]).sort(), [
    [openIdle.id, 'both-fin'],
    [halfIdle.id, 'half-close-timeout'],
    [halfBusy.id, 'both-fin'],
  ].sort());
});

test('max duration ends a busy connection at its age, with max-duration; each connection has its own clock', async (t) => {
  const h = await setup({ idle: '0', maxDuration: '1500ms' });
  t.after(h.cleanup);
  const first = await h.open();
  const stopFirst = h.busy(first);
  const quick = await h.open();
  quick.client.end();
  quick.server.end();
  await sleep(800);
  const second = await h.open(); // opened 800 ms later: its deadline is 800 ms after the first's
  const stopSecond = h.busy(second);
  await waitFor(() => h.entry(first) !== undefined, 10_000, 'the first connection to reach its max duration');
  assert.equal(h.entry(first)!.reason, 'max-duration');
  assert.equal(h.entry(quick)!.reason, 'both-fin');
  assert.equal((await first.clientSaw).end, 'reset');
  const startedFirst = Date.parse(h.entry(first)!.startedAt as string);
  const closedFirst = Date.parse(h.entry(first)!.closedAt as string);
  assert.ok(closedFirst - startedFirst >= 1500, `ended after ${closedFirst - startedFirst} ms, before its max duration`);
  assert.ok(h.live(second), "the second connection ended on the first one's clock");
  await waitFor(() => h.entry(second) !== undefined, 10_000, 'the second connection to reach its max duration');
  stopFirst();
  stopSecond();
  const e2 = h.entry(second)!;
  assert.equal(e2.reason, 'max-duration');
  assert.ok(Date.parse(e2.closedAt as string) - Date.parse(e2.startedAt as string) >= 1500);
  assert.ok((e2.clientToServer as { bytes: number }).bytes > 0, 'the connection was busy until the end');
});

test('a deadline further away than the far-deadline sweep still fires on time, and only once', async () => {
  const { ConnectionTimers } = await import('../../src/proxy/timers.js');
  const fired: { id: number; reason: string; after: number }[] = [];
  const start = Date.now();
  const timers = new ConnectionTimers({ idleTimeoutMs: 3200, halfCloseTimeoutMs: 0, maxDurationMs: 0 }, (conn, reason) => {
    fired.push({ id: conn.id, reason, after: Date.now() - start });
  });
  // Plain records: the timers read only these fields.
  const conn = (id: number, lastActivityAt: number) => ({ id, lastActivityAt, halfClosedAt: 0, startedAt: start, closedAt: 0, reason: null }) as unknown as LoggedConnection & Parameters<typeof timers.arm>[0];
  const quiet = conn(1, start);
  const busy = conn(2, start);
  const ended = conn(3, start);
  for (const c of [quiet, busy, ended]) timers.arm(c);
  timers.disarm(ended);
  // The busy one keeps stamping activity: its deadline moves and it never fires.
  const stamp = setInterval(() => ((busy as { lastActivityAt: number }).lastActivityAt = Date.now()), 200);
  await sleep(4500);
  clearInterval(stamp);
  timers.disarm(busy);
  assert.deepEqual(fired.map((f) => [f.id, f.reason]), [[1, 'idle-timeout']]);
  assert.ok(fired[0]!.after >= 3200 && fired[0]!.after < 4200, `fired after ${fired[0]!.after} ms, deadline 3200 ms`);
});
