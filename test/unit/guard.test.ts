// The conntrack guard on loopback: what it decides from the CLOSE_WAIT timeout, the keepalive it
// sets on both sockets of a half-closed connection (read back from the kernel), and the RST that
// libuv cannot see on a socket past EOF, which the guard finds through TCP_INFO.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import type net from 'node:net';
import pino from 'pino';
import { resolveConfig, type FileConfig } from '../../src/config/schema.js';
import { getKeepalive, getTcpState, getUserTimeout, socketFd, takeSocketError, TCP_STATE_CLOSE } from '../../src/kernel/sockopt.js';
import { planGuard } from '../../src/proxy/guard.js';
import type { Connection } from '../../src/proxy/registry.js';
import { connect, observe, sleep, socketFds, startRouteProxy, startServer as startHalfOpenServer, waitFor, type TestProxy } from '../helpers/proxy.js';

const cfg = (over: FileConfig = {}) => resolveConfig({ listeners: [], admin: { address: 'off' }, ...over }, 'test');

function captureLogger(): { logger: pino.Logger; lines: () => Record<string, unknown>[] } {
  const text: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      text.push(String(chunk));
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines: () => text.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l)) };
}

/**
 * The helper's half-open server, whose close() first destroys every accepted socket: a server
 * socket past EOF is not polled either, so it would not notice our reset and server.close() would
 * wait for it forever.
 */
async function startServer(onSocket: (s: net.Socket) => void): ReturnType<typeof startHalfOpenServer> {
  const sockets = new Set<net.Socket>();
  const srv = await startHalfOpenServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    onSocket(s);
  });
  return {
    ...srv,
    close: () => {
      for (const s of sockets) s.destroy();
      return srv.close();
    },
  };
}

function onlyConn(px: TestProxy): Connection {
  const all = [...px.proxy.registry.all()];
  assert.equal(all.length, 1, 'one live connection');
  return all[0]!;
}

test('plan: auto takes a third of the CLOSE_WAIT timeout, at least 1 s, count 3', () => {
  assert.deepEqual(planGuard(cfg(), 60), {
    mode: 'auto',
    closeWaitSec: 60,
    source: 'sysctl',
    halfClosed: { idleSec: 20, intervalSec: 20, count: 3 },
    established: null,
    userTimeoutMs: 0,
    warnings: [],
  });
  assert.deepEqual(planGuard(cfg(), 2).halfClosed, { idleSec: 1, intervalSec: 1, count: 3 });
  // No conntrack: the kernel default is assumed, and said so.
  const none = planGuard(cfg(), null);
  assert.equal(none.source, 'default');
  assert.equal(none.closeWaitSec, 60);
  assert.deepEqual(none.halfClosed, { idleSec: 20, intervalSec: 20, count: 3 });
  // 1 s cannot be beaten by keepalive, whose unit is the second.
  const tooShort = planGuard(cfg(), 1);
  assert.equal(tooShort.warnings.length, 1);
  assert.match(tooShort.warnings[0]!, /nf_conntrack_tcp_timeout_close_wait is 1s, too short/);
});

test('plan: a fixed keepalive not below the timeout is warned about, naming the value', () => {
  const interval = planGuard(cfg({ keepalive: { halfClosed: '10s:75s:9' } }), 60);
  assert.equal(interval.mode, 'fixed');
  assert.deepEqual(interval.halfClosed, { idleSec: 10, intervalSec: 75, count: 9 });
  assert.equal(interval.warnings.length, 1);
  assert.match(interval.warnings[0]!, /interval 75s is not below the conntrack CLOSE_WAIT timeout 60s/);
  const idle = planGuard(cfg({ keepalive: { halfClosed: '60:10:3' } }), 60);
  assert.match(idle.warnings.join('\n'), /idle 60s is not below/);
  assert.deepEqual(planGuard(cfg({ keepalive: { halfClosed: '59:59:3' } }), 60).warnings, []);
});

test('plan: off keeps nothing alive and says what leaks until when; established and user timeout are reported', () => {
  const off = planGuard(cfg({ keepalive: { halfClosed: 'off' } }), 60);
  assert.equal(off.halfClosed, null);
  assert.match(off.warnings[0]!, /off \(Envoy-like\).*more than 60s.*until the idle timeout \(1h\)/);
  assert.match(planGuard(cfg({ keepalive: { halfClosed: 'off' }, timeouts: { idle: '0' } }), 60).warnings[0]!, /forever/);
  assert.equal(planGuard(cfg({ keepalive: { halfClosed: 'off' } }), null).closeWaitSec, null);
  const est = planGuard(cfg({ keepalive: { established: '300:60:5', userTimeout: '30s' } }), 60);
  assert.deepEqual(est.established, { idleSec: 300, intervalSec: 60, count: 5 });
  assert.equal(est.userTimeoutMs, 30_000);
});

test('the proxy logs at start what the guard decided and why, and warns on a keepalive that cannot work', async (t) => {
  const up = await startServer(() => {});
  t.after(() => up.close());
  const a = captureLogger();
  const px = await startRouteProxy(up.port, {}, { logger: a.logger, guard: { readCloseWait: () => 6 } });
  t.after(() => px.close());
  const info = a.lines().find((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('conntrack guard'));
  assert.ok(info, 'start-up line');
  assert.match(info.msg as string, /keepalive 2:2:3 .*nf_conntrack_tcp_timeout_close_wait = 6s/);
  assert.deepEqual((info.guard as Record<string, unknown>).halfClosed, '2:2:3');
  assert.equal(px.proxy.guard.status().closeWaitSec, 6);

  const b = captureLogger();
  const px2 = await startRouteProxy(up.port, { keepalive: { halfClosed: '5:90:3' } }, { logger: b.logger, guard: { readCloseWait: () => 60 } });
  t.after(() => px2.close());
  const warn = b.lines().find((l) => l.level === 40);
  assert.ok(warn, 'a warning');
  assert.match(warn.msg as string, /interval 90s is not below the conntrack CLOSE_WAIT timeout 60s/);
  assert.deepEqual(px2.proxy.guard.status().warnings, [warn.msg]);

  const c = captureLogger();
  const px3 = await startRouteProxy(up.port, {}, { logger: c.logger, guard: { readCloseWait: () => null } });
  t.after(() => px3.close());
  assert.ok(c.lines().some((l) => /is absent \(conntrack not loaded here\), so the kernel default 60s is assumed/.test(String(l.msg))));
  assert.equal(px3.proxy.guard.status().source, 'default');
});

test('server FIN first: keepalive goes on BOTH sockets, with the values read back from the kernel', async (t) => {
  let upstreamSide: net.Socket | null = null;
  const up = await startServer((s) => {
    upstreamSide = s;
    s.resume();
    s.end('bye');
  });
  const px = await startRouteProxy(up.port, {}, { guard: { readCloseWait: () => 6 } });
  const c = await connect(px.port);
  t.after(async () => {
    c.destroy();
    await px.close();
    await up.close();
  });
  const seen = observe(c);
  await waitFor(() => px.proxy.registry.size === 1 && onlyConn(px).s2c.state === 'fin-forwarded', 2000, 'server FIN forwarded');
  const conn = onlyConn(px);
  // The splice relay's worker sets it 100 ms after the first FIN, and says so.
  await waitFor(() => conn.keepalive !== null, 2000, 'keepalive on');
  assert.equal(conn.keepalive, '2:2:3');
  for (const fd of socketFds(conn)) {
    assert.deepEqual(getKeepalive(fd), { enabled: true, idleSec: 2, intervalSec: 2, count: 3 });
  }
  // The half-closed connection still carries the client's late message, then ends with both FINs.
  c.end('late');
  assert.equal((await seen).data.toString(), 'bye');
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'both-fin');
  assert.equal(entry!.keepalive, '2:2:3');
  assert.ok(upstreamSide);
});

test('client FIN first is guarded too; --keepalive off leaves both sockets without keepalive', async (t) => {
  const up = await startServer((s) => s.resume());
  t.after(() => up.close());
  for (const [mode, expected] of [['auto', true], ['off', false]] as const) {
    const px = await startRouteProxy(up.port, { keepalive: { halfClosed: mode } }, { guard: { readCloseWait: () => 9 } });
    const c = await connect(px.port);
    c.on('error', () => {});
    t.after(async () => {
      c.destroy();
      await px.close();
    });
    c.end();
    await waitFor(() => px.proxy.registry.size === 1 && onlyConn(px).c2s.state === 'fin-forwarded', 2000, 'client FIN forwarded');
    const conn = onlyConn(px);
    // Keepalive follows the first FIN by 100 ms (splice relay): long enough to see it, or its absence.
    if (expected) await waitFor(() => conn.keepalive !== null, 2000, 'keepalive on');
    else await sleep(300);
    for (const fd of socketFds(conn)) assert.equal(getKeepalive(fd).enabled, expected, `keepalive ${mode}`);
    assert.equal(conn.keepalive, expected ? '3:3:3' : null);
  }
});

test('established keepalive and TCP_USER_TIMEOUT are set at connect when configured', async (t) => {
  const up = await startServer((s) => s.resume());
  const px = await startRouteProxy(up.port, { keepalive: { established: '40:10:4', userTimeout: '15s' } }, { guard: { readCloseWait: () => 60 } });
  const c = await connect(px.port);
  t.after(async () => {
    c.destroy();
    await px.close();
    await up.close();
  });
  await waitFor(() => px.proxy.registry.size === 1 && onlyConn(px).connectedAt !== 0 && onlyConn(px).keepalive !== null, 2000, 'connected');
  const conn = onlyConn(px);
  assert.equal(conn.keepalive, '40:10:4');
  for (const fd of socketFds(conn)) {
    assert.deepEqual(getKeepalive(fd), { enabled: true, idleSec: 40, intervalSec: 10, count: 4 });
    assert.equal(getUserTimeout(fd), 15_000);
  }
});

test('a changed CLOSE_WAIT timeout is picked up and applied to connections already half-closed', async (t) => {
  const up = await startServer((s) => s.end());
  let cw: number | null = 30;
  const a = captureLogger();
  const px = await startRouteProxy(up.port, {}, { logger: a.logger, guard: { readCloseWait: () => cw } });
  const c = await connect(px.port);
  c.on('error', () => {});
  t.after(async () => {
    c.destroy();
    await px.close();
    await up.close();
  });
  await waitFor(() => px.proxy.registry.size === 1 && onlyConn(px).keepalive === '10:10:3', 2000, 'guarded');
  cw = 3;
  px.proxy.guard.recheck();
  assert.deepEqual(px.proxy.guard.status().halfClosed, { idleSec: 1, intervalSec: 1, count: 3 });
  const conn = onlyConn(px);
  await waitFor(() => conn.keepalive === '1:1:3', 2000, 'the new keepalive reported');
  // The splice relay's worker applies it on its own turn: wait for the kernel to hold it.
  await waitFor(() => getKeepalive(socketFds(conn)[1]).idleSec === 1, 2000, 'new keepalive applied');
  assert.deepEqual(getKeepalive(socketFds(conn)[1]), { enabled: true, idleSec: 1, intervalSec: 1, count: 3 });
  assert.ok(a.lines().some((l) => l.msg === 'net.netfilter.nf_conntrack_tcp_timeout_close_wait changed from 30 to 3'));
});

// The gap: after the client's FIN the proxy's downstream socket is past EOF and libuv no longer
// polls it, so the client's RST lands on a socket nobody watches. The upstream server socket has
// read the forwarded FIN too, so it cannot see the proxy's RST through Node either: the tests ask
// its kernel (TCP_INFO state CLOSE, and the reset kept as SO_ERROR).
async function resetAfterFin(
  t: TestContext,
  mode: 'auto' | 'off',
  closeWaitSec: number,
  waitMs: number,
  relay: 'splice' | 'copy' = 'copy',
): Promise<{ px: TestProxy; upstream: net.Socket }> {
  let upstream: net.Socket | null = null;
  const up = await startServer((s) => {
    upstream = s;
  });
  const px = await startRouteProxy(up.port, { keepalive: { halfClosed: mode }, relay }, { guard: { readCloseWait: () => closeWaitSec, socketPollMs: 100 } });
  const c = await connect(px.port);
  c.on('error', () => {});
  t.after(async () => {
    c.destroy();
    await px.close();
    await up.close();
  });
  c.end();
  await waitFor(() => px.proxy.registry.size === 1 && onlyConn(px).c2s.state === 'fin-forwarded' && upstream !== null, 2000, 'client FIN forwarded');
  await sleep(waitMs);
  c.resetAndDestroy();
  return { px, upstream: upstream! };
}

/** `p`, or a failure naming `what` after `ms` (a missed reset must fail the test, not hang it). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Waits until the kernel has closed `s` and returns the error it kept (EPIPE for an RST in CLOSE-WAIT). */
async function kernelReset(s: net.Socket): Promise<string | null> {
  const fd = socketFd(s);
  await waitFor(() => getTcpState(fd) === TCP_STATE_CLOSE, 5000, 'the upstream socket to be reset');
  return takeSocketError(fd);
}

test('gap (copy relay): with --keepalive off an RST on a socket past EOF goes unnoticed; the guard finds it and resets upstream', async (t) => {
  // Without the guard: a second later the proxy still holds the connection and the upstream has heard nothing.
  const off = await resetAfterFin(t, 'off', 30, 0);
  await sleep(1000);
  assert.equal(off.px.proxy.registry.size, 1, 'the proxy did not notice the reset');
  assert.equal(off.px.log.length, 0);
  assert.notEqual(getTcpState(socketFd(off.upstream)), TCP_STATE_CLOSE, 'the upstream was not reset');
  off.upstream.write('x'); // only a write from upstream makes the proxy notice (EPIPE on the dead socket)
  const [offEntry] = await within(off.px.closed(1), 5000, 'the proxy to notice the reset on write');
  assert.equal(offEntry!.reason, 'downstream-reset');

  // With the guard: the TCP_INFO poll sees the socket in CLOSE with an error and resets the upstream.
  // CLOSE_WAIT 30 s -> keepalive idle 10 s: an RST at once is the client's doing, not a probe's answer.
  const on = await resetAfterFin(t, 'auto', 30, 0);
  const [entry] = await within(on.px.closed(1), 5000, 'the guard to end the connection');
  assert.equal(entry!.reason, 'downstream-reset');
  assert.match(String(entry!.error), /found by the guard/);
  assert.match((await kernelReset(on.upstream)) ?? 'none', /^(EPIPE|ECONNRESET)$/, 'the upstream got an RST');
});

// The splice relay's worker keeps every socket of a connection in its epoll set until the
// connection ends, so an error on a socket past EOF is reported at once (EPOLLERR), guard or not.
test('splice relay: an RST on a socket past EOF is seen at once, even with --keepalive off, and resets upstream', async (t) => {
  const r = await resetAfterFin(t, 'off', 30, 0, 'splice');
  const [entry] = await within(r.px.closed(1), 2000, 'the proxy to end the connection');
  assert.equal(entry!.reason, 'downstream-reset');
  assert.match(String(entry!.error), /^downstream: (ECONNRESET|EPIPE) \(while nothing was reading it\)$/);
  assert.match((await kernelReset(r.upstream)) ?? 'none', /^(EPIPE|ECONNRESET)$/, 'the upstream got an RST');
});

for (const relay of ['splice', 'copy'] as const) {
test(`a reset after the keepalive idle time on a guarded half-closed connection ends as keepalive-dead (${relay} relay)`, async (t) => {
  // CLOSE_WAIT 3 s -> keepalive 1:1:3: 1.2 s of silence means the kernel is probing, so an RST
  // now is the answer to a probe (on a real pod: the conntrack entry is gone).
  const r = await resetAfterFin(t, 'auto', 3, 1200, relay);
  const [entry] = await within(r.px.closed(1), 5000, 'the guard to end the connection');
  assert.equal(entry!.reason, 'keepalive-dead');
  assert.match((await kernelReset(r.upstream)) ?? 'none', /^(EPIPE|ECONNRESET)$/, 'the upstream got an RST');
});
}
