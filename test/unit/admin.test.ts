// The admin API against a running proxy on loopback: metrics follow real connections through
// open, half-closed and each close reason; /connections shows per-direction states; /drain stops
// accepting; the error statuses; and the CLI wiring (busy port, POST /drain ends the process).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeConfig, resolveConfig, type FileConfig } from '../../src/config/schema.js';
import { Proxy } from '../../src/proxy/proxy.js';
import { CLOSE_REASONS } from '../../src/proxy/registry.js';
import { silentLogger } from '../../src/log.js';
import { ProxyMetrics } from '../../src/admin/metrics.js';
import { startAdminServer, type AdminServer } from '../../src/admin/server.js';
import { HalfcloseError } from '../../src/errors.js';
import { connect, connectAndObserve, observe, startProxy, startRouteProxy, startServer, waitFor, type TestProxy } from '../helpers/proxy.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition (what a scraper reads) into samples. */
function parseExposition(textBody: string): Sample[] {
  const out: Sample[] = [];
  for (const line of textBody.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    assert.ok(m, `unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

interface Stack {
  px: TestProxy;
  admin: AdminServer;
  url: string;
  /** One sample's value; undefined when the series does not exist. */
  metric(name: string, labels?: Record<string, string>): Promise<number | undefined>;
  close(): Promise<void>;
}

async function startStack(upstreamPort: number, overrides: FileConfig = {}): Promise<Stack> {
  // A fixed CLOSE_WAIT value so the guard's gauges do not depend on this machine's conntrack.
  const px = await startRouteProxy(upstreamPort, overrides, { guard: { readCloseWait: () => 60 } });
  const admin = await startAdminServer(px.proxy, { address: { host: '127.0.0.1', port: 0, family: 4 }, logger: silentLogger() });
  return {
    px,
    admin,
    url: admin.url,
    async metric(name, labels = {}) {
      const res = await fetch(`${admin.url}metrics`);
      assert.equal(res.status, 200);
      const samples = parseExposition(await res.text());
      const s = samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
      return s?.value;
    },
    async close() {
      await admin.close();
      await px.close();
    },
  };
}

async function getJSON(url: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url);
  return { status: res.status, body: res.status === 200 ? await res.json() : await res.text() };
}

/** A raw request, for headers fetch will not let us set (Host) and to read exact status lines. */
function request(url: string, opts: { method?: string; headers?: Record<string, string>; localAddress?: string } = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, localAddress: opts.localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const L = { listener: 'test' };

async function readyOf(adminUrl: string): Promise<[number, string]> {
  const r = await request(`${adminUrl}ready`);
  return [r.status, r.body];
}

test('metrics and /connections follow a connection: open, half-closed by the server, both-fin', async () => {
  let upSock: net.Socket | null = null;
  const up = await startServer((s) => {
    upSock = s;
    s.on('data', () => {});
  });
  const st = await startStack(up.port);
  try {
    assert.equal(await st.metric('halfclose_connections_accepted_total', L), 0);
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'both-fin' }), 0);
    assert.equal(await st.metric('halfclose_connections_active', { ...L, state: 'open' }), 0);

    const c = await connect(st.px.port);
    const clientSaw = observe(c);
    c.write('ping'); // 4 bytes client -> server
    await waitFor(() => upSock !== null, 2000, 'upstream accept');
    upSock!.write('pong!'); // 5 bytes server -> client
    // Bytes are read from shared counters at once; the connect reaches the books with the
    // worker's next batch of records (every 20 ms), which can come after the accept's.
    await waitFor(
      async () => (await st.metric('halfclose_bytes_total', { ...L, direction: 'server-to-client' })) === 5 && (await st.metric('halfclose_connections_active', { ...L, state: 'open' })) === 1,
      2000,
      's2c bytes counted, the connect in the books',
    );
    assert.equal(await st.metric('halfclose_bytes_total', { ...L, direction: 'client-to-server' }), 4);
    assert.equal(await st.metric('halfclose_connections_accepted_total', L), 1);
    assert.equal(await st.metric('halfclose_connections_active', { ...L, state: 'open' }), 1);
    assert.equal(await st.metric('halfclose_relay_connections', { ...L, relay: 'splice' }), 1, 'the default relay carries it');
    assert.equal(await st.metric('halfclose_relay_connections', { ...L, relay: 'copy' }), 0);
    assert.equal(await st.metric('halfclose_upstream_connect_seconds_count', L), 1);

    // The server half-closes: its FIN is forwarded, the client -> server direction stays open.
    upSock!.end();
    await waitFor(async () => (await st.metric('halfclose_connections_active', { ...L, state: 'half-closed-server' })) === 1, 2000, 'half-closed-server gauge');
    assert.equal(await st.metric('halfclose_connections_active', { ...L, state: 'open' }), 0);
    // The guard's keepalive is on for the half-closed connection and shows in the gauges.
    assert.equal(await st.metric('halfclose_guard_conntrack_close_wait_seconds', { source: 'sysctl' }), 60);
    assert.equal(await st.metric('halfclose_guard_keepalive_idle_seconds', { phase: 'half-closed' }), 20);
    assert.equal(await st.metric('halfclose_guard_keepalive_probes', { phase: 'half-closed' }), 3);
    assert.equal(await st.metric('halfclose_guard_keepalive_idle_seconds', { phase: 'established' }), undefined, 'established keepalive is off: no series');

    // The splice relay's worker turns it on 100 ms after the first FIN and reports it.
    await waitFor(async () => (await getJSON(`${st.url}connections?state=half-closed`)).body.connections?.[0]?.keepalive !== null, 2000, 'keepalive reported');
    const hc = await getJSON(`${st.url}connections?state=half-closed`);
    assert.equal(hc.status, 200);
    assert.equal(hc.body.count, 1);
    const conn = hc.body.connections[0];
    assert.equal(conn.state, 'half-closed-server');
    assert.equal(conn.listener, 'test');
    assert.equal(conn.clientToServer.state, 'open');
    assert.equal(conn.clientToServer.bytes, 4);
    assert.equal(conn.clientToServer.finReceivedAt, null);
    assert.equal(conn.serverToClient.state, 'fin-forwarded');
    assert.equal(conn.serverToClient.bytes, 5);
    assert.ok(conn.serverToClient.finReceivedAt && conn.serverToClient.finForwardedAt, 'FIN transition times are set');
    assert.equal(conn.halfClosedAt, conn.serverToClient.finReceivedAt);
    assert.equal(conn.client.port, c.localPort, 'client address is the test socket');
    assert.equal(conn.target.port, up.port);
    assert.equal(conn.upstreamLocal.port, upSock!.remotePort, 'upstream local address is what the server sees');
    assert.ok(conn.ageMs >= conn.halfClosedMs && conn.halfClosedMs >= 0);
    assert.equal(conn.keepalive, '20:20:3');
    assert.equal((await getJSON(`${st.url}connections?state=half-closed-server`)).body.count, 1);
    assert.equal((await getJSON(`${st.url}connections?state=open`)).body.count, 0);
    assert.equal((await getJSON(`${st.url}connections?state=open,half-closed-server`)).body.count, 1);
    assert.equal((await getJSON(`${st.url}connections`)).body.count, 1);
    const bad = await getJSON(`${st.url}connections?state=halfclosed`);
    assert.equal(bad.status, 400);
    assert.match(bad.body, /unknown state "halfclosed"; expected one of: half-closed, /);

    // The client's late message still goes through, then its FIN: both-fin.
    c.end('late');
    await st.px.closed(1);
    assert.equal((await clientSaw).data.toString(), 'pong!');
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'both-fin' }), 1);
    for (const state of ['connecting', 'open', 'half-closed-client', 'half-closed-server', 'closing']) {
      assert.equal(await st.metric('halfclose_connections_active', { ...L, state }), 0, `active ${state}`);
    }
    // Bytes of the closed connection are kept: 4 + 4 up, 5 down.
    assert.equal(await st.metric('halfclose_bytes_total', { ...L, direction: 'client-to-server' }), 8);
    assert.equal(await st.metric('halfclose_bytes_total', { ...L, direction: 'server-to-client' }), 5);
    assert.equal(await st.metric('halfclose_half_close_duration_seconds_count', L), 1);
    assert.equal((await getJSON(`${st.url}connections`)).body.count, 0);
    const stats = (await getJSON(`${st.url}stats`)).body;
    assert.equal(stats.closedByReason['both-fin'], 1);
    assert.equal(stats.acceptedByListener.test, 1);
    assert.equal(stats.halfCloseDurations.count, 1);
    assert.equal(stats.guard.closeWaitSec, 60);
  } finally {
    await st.close();
    await up.close();
  }
});

test('halfclose_relay_connections counts a connection of relay: copy under copy', async () => {
  const up = await startServer((s) => {
    s.on('error', () => {}); // the stack's close() may reset it before the client's FIN got through
    s.pipe(s);
  });
  const st = await startStack(up.port, { relay: 'copy' });
  try {
    const c = await connect(st.px.port);
    c.on('error', () => {}); // reset by close() if an assertion fails: let the assertion be the report
    c.write('x');
    await new Promise((r) => c.once('data', r));
    assert.equal(await st.metric('halfclose_relay_connections', { ...L, relay: 'copy' }), 1);
    assert.equal(await st.metric('halfclose_relay_connections', { ...L, relay: 'splice' }), 0);
    c.destroy();
  } finally {
    await st.close();
    await up.close();
  }
});

test('/connections shows a connection half-closed by the client with its per-direction states', async () => {
  let upSock: net.Socket | null = null;
  const up = await startServer((s) => {
    upSock = s;
    s.on('data', () => {});
  });
  const st = await startStack(up.port);
  try {
    const c = await connect(st.px.port);
    c.on('data', () => {});
    c.end('bye');
    await waitFor(async () => (await getJSON(`${st.url}connections?state=half-closed-client`)).body.count === 1, 2000, 'half-closed-client');
    const conn = (await getJSON(`${st.url}connections?state=half-closed`)).body.connections[0];
    assert.equal(conn.clientToServer.state, 'fin-forwarded');
    assert.equal(conn.serverToClient.state, 'open');
    assert.equal(await st.metric('halfclose_connections_active', { ...L, state: 'half-closed-client' }), 1);
    upSock!.end('ok');
    await st.px.closed(1);
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'both-fin' }), 1);
  } finally {
    await st.close();
    await up.close();
  }
});

test('closes are counted by reason: downstream-reset, upstream-reset, connect-refused', async () => {
  const ups: net.Socket[] = [];
  const up = await startServer((s) => {
    ups.push(s);
    s.on('data', () => {});
    s.on('error', () => {});
  });
  const st = await startStack(up.port);
  try {
    // The client resets.
    const a = await connect(st.px.port);
    a.write('x');
    await waitFor(() => ups.length === 1, 2000, 'first upstream');
    await waitFor(async () => (await st.metric('halfclose_bytes_total', { ...L, direction: 'client-to-server' })) === 1, 2000, 'byte relayed');
    a.resetAndDestroy();
    await st.px.closed(1);
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'downstream-reset' }), 1);

    // The server resets; the client sees a reset too.
    const b = await connect(st.px.port);
    const bSaw = observe(b);
    await waitFor(() => ups.length === 2, 2000, 'second upstream');
    ups[1]!.resetAndDestroy();
    assert.equal((await bSaw).end, 'reset');
    await st.px.closed(2);
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'upstream-reset' }), 1);
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason: 'both-fin' }), 0);
    assert.equal(await st.metric('halfclose_connections_accepted_total', L), 2);
    assert.equal(await st.metric('halfclose_half_close_duration_seconds_count', L), 0, 'never half-closed');
  } finally {
    await st.close();
    await up.close();
  }

  // Nothing listens upstream: the connect is refused and the client reset.
  const gone = await startServer(() => {});
  const port = gone.port;
  await gone.close();
  const st2 = await startStack(port);
  try {
    assert.equal((await connectAndObserve(st2.px.port)).end, 'reset');
    await st2.px.closed(1);
    assert.equal(await st2.metric('halfclose_connections_closed_total', { ...L, reason: 'connect-refused' }), 1);
    assert.equal(await st2.metric('halfclose_connections_accepted_total', L), 1);
    assert.equal(await st2.metric('halfclose_upstream_connect_seconds_count', L), 0, 'only successful connects are timed');
    assert.equal(await st2.metric('halfclose_connections_active', { ...L, state: 'connecting' }), 0);
  } finally {
    await st2.close();
  }
});

test('timer, drain and original-destination closes are counted by their reason', async () => {
  const ups: net.Socket[] = [];
  const up = await startServer((s) => {
    ups.push(s);
    s.on('data', () => {});
    s.on('error', () => {});
  });
  const stacks: Stack[] = [];
  const clients: net.Socket[] = [];
  /** Opens one client through a proxy with `overrides`, waits for its upstream, returns both. */
  const open = async (overrides: FileConfig): Promise<{ st: Stack; c: net.Socket; u: net.Socket }> => {
    const st = await startStack(up.port, overrides);
    stacks.push(st);
    const before = ups.length;
    const c = await connect(st.px.port);
    c.on('data', () => {});
    c.on('error', () => {});
    clients.push(c);
    await waitFor(() => ups.length > before, 5000, 'upstream accept');
    return { st, c, u: ups[ups.length - 1]! };
  };
  const closedBy = async (st: Stack, reason: string): Promise<void> => {
    const [entry] = await st.px.closed(1);
    assert.equal(entry!.reason, reason, 'the access log has the reason');
    assert.equal(await st.metric('halfclose_connections_closed_total', { ...L, reason }), 1, `closed_total{reason="${reason}"}`);
    const total = parseExposition(await fetch(`${st.url}metrics`).then((r) => r.text()))
      .filter((x) => x.name === 'halfclose_connections_closed_total')
      .reduce((a, x) => a + x.value, 0);
    assert.equal(total, 1, 'counted once, under one reason');
  };
  try {
    // Nothing moves for the idle timeout.
    const idle = await open({ timeouts: { idle: '300ms' } });
    await closedBy(idle.st, 'idle-timeout');

    // The server half-closes and nothing else happens for the half-close timeout.
    const hc = await open({ timeouts: { halfClose: '300ms' } });
    hc.u.end();
    await waitFor(async () => (await hc.st.metric('halfclose_connections_active', { ...L, state: 'half-closed-server' })) === 1, 5000, 'half-closed');
    await closedBy(hc.st, 'half-close-timeout');
    assert.equal(await hc.st.metric('halfclose_half_close_duration_seconds_count', L), 1);

    // Older than the max duration, though not idle for long.
    const old = await open({ timeouts: { maxDuration: '400ms' } });
    const ticker = setInterval(() => old.c.write('.'), 50);
    try {
      await closedBy(old.st, 'max-duration');
    } finally {
      clearInterval(ticker);
    }

    // Still open when the drain timeout runs out.
    const dr = await open({ timeouts: { drain: '200ms' } });
    const drain = await request(`${dr.st.url}drain`, { method: 'POST' });
    assert.equal(drain.status, 202);
    await closedBy(dr.st, 'drain');
  } finally {
    for (const c of clients) c.destroy();
    for (const u of ups) u.destroy();
    for (const st of stacks) await st.close();
    await up.close();
  }

  // An original-destination listener reached directly, not through a REDIRECT: with conntrack
  // loaded the "original" destination is the listener itself (loop-refused), without it there is
  // none (no-original-dst). Either way the client is reset and the metric has the logged reason.
  const px = await startProxy(resolveConfig({ listeners: [{ kind: 'outbound', name: 'test', listen: '127.0.0.1:0' }], admin: { address: 'off' } }, 'test'), { guard: { readCloseWait: () => 60 } });
  const admin = await startAdminServer(px.proxy, { address: { host: '127.0.0.1', port: 0, family: 4 }, logger: silentLogger() });
  try {
    // The reset can beat the 'connect' event, so observe from the start.
    const c = net.connect({ port: px.port, host: '127.0.0.1' });
    assert.equal((await observe(c)).end, 'reset');
    const [entry] = await px.closed(1);
    assert.ok(entry!.reason === 'loop-refused' || entry!.reason === 'no-original-dst', entry!.reason);
    const m = await fetch(`${admin.url}metrics`).then((r) => r.text());
    assert.match(m, new RegExp(`^halfclose_connections_closed_total\\{listener="test",reason="${entry!.reason}"\\} 1$`, 'm'));
    assert.match(m, /^halfclose_connections_accepted_total\{listener="test"\} 1$/m);
  } finally {
    await admin.close();
    await px.close();
  }
});

test('/ready is false until every configured listener is bound, true once they are, false again when draining', async () => {
  const up = await startServer((s) => s.end());
  const busy = await startServer(() => {});
  const routes = (second: string): FileConfig => ({
    listeners: [
      { kind: 'route', name: 'a', listen: '127.0.0.1:0', upstream: `127.0.0.1:${up.port}` },
      { kind: 'route', name: 'b', listen: second, upstream: `127.0.0.1:${up.port}` },
    ],
    admin: { address: 'off' },
  });
  // The admin server is up before the listeners, as in the CLI.
  const proxy = new Proxy(resolveConfig(routes('127.0.0.1:0'), 'test'), { logger: silentLogger(), accessLog: { write() {}, flush() {} }, guard: { readCloseWait: () => 60 } });
  const admin = await startAdminServer(proxy, { address: { host: '127.0.0.1', port: 0, family: 4 }, logger: silentLogger() });
  // One listener binds, the second's port is taken: start fails and the proxy never becomes ready.
  const half = new Proxy(resolveConfig(routes(`127.0.0.1:${busy.port}`), 'test'), { logger: silentLogger(), accessLog: { write() {}, flush() {} }, guard: { readCloseWait: () => 60 } });
  const halfAdmin = await startAdminServer(half, { address: { host: '127.0.0.1', port: 0, family: 4 }, logger: silentLogger() });
  try {
    assert.deepEqual(await readyOf(admin.url), [503, 'false\n'], 'not started');
    assert.equal((await request(`${admin.url}healthz`)).status, 200, 'alive while not ready');
    await proxy.start();
    assert.deepEqual(await readyOf(admin.url), [200, 'true\n'], 'both listeners bound');
    await assert.rejects(half.start(), (err: unknown) => err instanceof HalfcloseError && err.code === 'HC_ERR_LISTEN');
    assert.equal((await request(`${halfAdmin.url}ready`)).status, 503, 'a listener failed to bind');
    const drained = proxy.drain();
    assert.equal((await request(`${admin.url}ready`)).status, 503, 'draining');
    await drained;
    assert.equal((await request(`${admin.url}ready`)).status, 503, 'drained');
  } finally {
    await admin.close();
    await halfAdmin.close();
    await proxy.close();
    await half.close();
    await busy.close();
    await up.close();
  }
});

test('POST /drain stops accepting, /ready turns 503, live connections keep flowing', async () => {
  const up = await startServer((s) => {
    s.on('data', (d) => s.write(d)); // echo
    s.on('end', () => s.end());
  });
  const st = await startStack(up.port);
  try {
    const live = await connect(st.px.port);
    const ready = await request(`${st.url}ready`);
    assert.deepEqual([ready.status, ready.body], [200, 'true\n']);
    assert.equal(await st.metric('halfclose_draining'), 0);

    const drain = await request(`${st.url}drain`, { method: 'POST' });
    assert.equal(drain.status, 202);
    assert.match(drain.body, /^draining: no new connections; 1 connections left/);
    assert.ok(st.px.proxy.isDraining);
    const notReady = await request(`${st.url}ready`);
    assert.deepEqual([notReady.status, notReady.body], [503, 'false\n']);
    assert.equal(await st.metric('halfclose_draining'), 1);
    assert.equal((await request(`${st.url}healthz`)).status, 200, 'still alive while draining');

    // New connections are refused by the kernel: the listener is closed.
    await assert.rejects(connect(st.px.port), (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED');
    // The live one still relays both ways, then ends normally.
    const liveSaw = observe(live);
    live.end('still here');
    assert.equal((await liveSaw).data.toString(), 'still here');
    await st.px.closed(1);
    assert.equal(st.px.log[0]!.reason, 'both-fin');
    const again = await request(`${st.url}drain`, { method: 'POST' });
    assert.deepEqual([again.status, again.body], [200, 'already draining; 0 connections left\n']);
  } finally {
    await st.close();
    await up.close();
  }
});

test('POST /drain is refused cross-origin and from a non-loopback peer; a foreign Host is refused', async () => {
  const up = await startServer(() => {});
  const st = await startStack(up.port);
  try {
    const xo = await request(`${st.url}drain`, { method: 'POST', headers: { Origin: 'http://evil.example' } });
    assert.equal(xo.status, 403);
    assert.match(xo.body, /another origin/);
    const rebind = await request(`${st.url}connections`, { headers: { Host: 'evil.example:15000' } });
    assert.equal(rebind.status, 403);
    assert.match(rebind.body, /not a loopback name/);
    const sameOrigin = await request(`${st.url}healthz`, { headers: { Host: `localhost:${st.admin.address.port}` } });
    assert.equal(sameOrigin.status, 200);
    assert.equal(st.px.proxy.isDraining, false);
  } finally {
    await st.close();
    await up.close();
  }
});

test('POST /drain from a non-loopback peer gets 403', async (t) => {
  // The peer must really be non-loopback: use one of this host's own addresses (traffic stays local).
  const local = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal);
  if (!local) {
    t.skip('this host has no non-loopback IPv4 address to connect from');
    return;
  }
  const up = await startServer(() => {});
  const px = await startRouteProxy(up.port);
  const admin = await startAdminServer(px.proxy, { address: { host: local.address, port: 0, family: 4 }, logger: silentLogger() });
  try {
    const r = await request(`${admin.url}drain`, { method: 'POST', localAddress: local.address });
    assert.equal(r.status, 403);
    assert.equal(r.body, `POST /drain is only accepted from loopback, not from ${local.address}\n`);
    assert.equal(px.proxy.isDraining, false);
    assert.equal((await request(`${admin.url}healthz`, { localAddress: local.address })).status, 200, 'reads are allowed');
  } finally {
    await admin.close();
    await px.close();
    await up.close();
  }
});

test('unknown paths 404, wrong methods 405 with Allow; /config, /healthz, HEAD', async () => {
  const up = await startServer(() => {});
  const st = await startStack(up.port);
  try {
    const nf = await request(`${st.url}nope`);
    assert.equal(nf.status, 404);
    assert.match(nf.headers['content-type']!, /^text\/plain/);
    assert.equal(nf.body, 'not found: /nope; try GET / or see docs/admin.md\n');
    const m1 = await request(`${st.url}metrics`, { method: 'POST' });
    assert.deepEqual([m1.status, m1.headers.allow], [405, 'GET, HEAD']);
    assert.equal(m1.body, 'method POST not allowed on /metrics; allowed: GET, HEAD\n');
    const m2 = await request(`${st.url}drain`);
    assert.deepEqual([m2.status, m2.headers.allow], [405, 'POST']);
    const m3 = await request(`${st.url}connections`, { method: 'DELETE' });
    assert.deepEqual([m3.status, m3.headers.allow], [405, 'GET, HEAD']);
    const head = await request(`${st.url}metrics`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    assert.match(head.headers['content-type']!, /^text\/plain; version=0\.0\.4/);

    const cfg = await getJSON(`${st.url}config`);
    assert.deepEqual(cfg.body, JSON.parse(JSON.stringify(describeConfig(st.px.config))), '/config is what --print-config prints');
    assert.equal((await request(`${st.url}healthz`)).body, 'ok\n');
    const page = await request(st.url);
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type']!, /^text\/html/);
    assert.match(page.body, /<title>halfclose admin<\/title>/);
    assert.doesNotMatch(page.body, /<script[^>]+src=|<link[^>]+href=/, 'self-contained: no external scripts or styles');
    // Default process metrics are in the same registry.
    assert.ok((await st.metric('process_cpu_user_seconds_total')) !== undefined);
  } finally {
    await st.close();
    await up.close();
  }
});

test('a busy admin port is HC_ERR_LISTEN naming the address', async () => {
  const busy = await startServer(() => {});
  const px = await startRouteProxy(busy.port);
  try {
    await assert.rejects(
      startAdminServer(px.proxy, { address: { host: '127.0.0.1', port: busy.port, family: 4 }, logger: silentLogger() }),
      (err: unknown) =>
        err instanceof HalfcloseError && err.code === 'HC_ERR_LISTEN' && err.message === `admin server cannot listen on 127.0.0.1:${busy.port}: address already in use (choose another with --admin HOST:PORT, or --admin off)`,
    );
  } finally {
    await px.close();
    await busy.close();
  }
});

// The CLI, run as a child process: from dist/ (compiled) or through tsx (npx tsx --test).
const here = fileURLToPath(import.meta.url);
const fromSource = here.endsWith('.ts');
const mainPath = fileURLToPath(new URL(`../../src/cli/main.${fromSource ? 'ts' : 'js'}`, import.meta.url));
const repoRoot = fileURLToPath(new URL(fromSource ? '../../' : '../../../', import.meta.url));

function runCli(args: string[]) {
  const child = spawn(process.execPath, [...(fromSource ? ['--import', 'tsx'] : []), mainPath, 'proxy', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  return { child, exited, stderr: () => stderr };
}

test('CLI: a busy --admin port is one line and exit status 2', async () => {
  const busy = await startServer(() => {});
  try {
    const cli = runCli(['--route', '127.0.0.1:0=127.0.0.1:9', '--admin', `127.0.0.1:${busy.port}`, '--access-log', 'off']);
    assert.equal(await cli.exited, 2);
    assert.equal(cli.stderr(), `halfclose: admin server cannot listen on 127.0.0.1:${busy.port}: address already in use (choose another with --admin HOST:PORT, or --admin off)\n`);
  } finally {
    await busy.close();
  }
});

test('CLI: --admin serves /metrics and /ready; POST /drain drains and the process exits 0', async () => {
  const up = await startServer((s) => s.end());
  const cli = runCli(['--route', `127.0.0.1:0=127.0.0.1:${up.port}`, '--admin', '127.0.0.1:0', '--access-log', 'off']);
  try {
    await waitFor(() => /"msg":"listening"/.test(cli.stderr()), 10000, 'the listening log line');
    const line = JSON.parse(cli.stderr().split('\n').find((l) => l.includes('"msg":"listening"'))!);
    assert.match(line.admin, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const port = Number(/:(\d+)$/.exec(line.listeners[0].address)![1]);
    const c = await connect(port);
    await observe(c).then(() => c.end());
    await waitFor(async () => (await fetch(`${line.admin}metrics`).then((r) => r.text())).includes('halfclose_connections_closed_total{listener="route-0",reason="both-fin"} 1'), 5000, 'both-fin counted by the CLI proxy');
    const metrics = await fetch(`${line.admin}metrics`).then((r) => r.text());
    assert.match(metrics, /^halfclose_guard_info\{mode="auto",source="(sysctl|default)"\} 1$/m);
    assert.equal((await request(`${line.admin}ready`)).status, 200);
    assert.equal((await request(`${line.admin}drain`, { method: 'POST' })).status, 202);
    assert.equal(await cli.exited, 0);
    assert.match(cli.stderr(), /"msg":"POST \/drain: draining"/);
    assert.match(cli.stderr(), /"msg":"drained; exiting"/);
  } finally {
    cli.child.kill('SIGKILL');
    await up.close();
  }
});

test('docs/metrics.md documents every halfclose_* metric and every close reason', async () => {
  const doc = readFileSync(`${repoRoot}docs/metrics.md`, 'utf8');
  const up = await startServer(() => {});
  const px = await startRouteProxy(up.port);
  try {
    const names = (await new ProxyMetrics(px.proxy, { processMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name);
    assert.ok(names.length >= 10, `metrics found: ${names.join(', ')}`);
    for (const name of names) assert.match(doc, new RegExp(`^\\| \`${name}\` \\| (counter|gauge|histogram) \\|`, 'm'), `${name} has a row (name, type, meaning) in docs/metrics.md`);
    for (const reason of CLOSE_REASONS) assert.match(doc, new RegExp(`^\\| \`${reason}\` \\|`, 'm'), `close reason ${reason} is in docs/metrics.md`);
  } finally {
    await px.close();
    await up.close();
  }
});

test('histograms: an observation on a bound counts in that bucket, one above the last bound only in +Inf, count and sum', async () => {
  const config = resolveConfig({ listeners: [{ kind: 'route', name: 'web', listen: '127.0.0.1:0', upstream: '127.0.0.1:9' }], admin: { address: 'off' } }, 'test');
  const proxy = new Proxy(config, { logger: silentLogger(), accessLog: { write() {}, flush() {} }, guard: { readCloseWait: () => 60 } });
  const m = new ProxyMetrics(proxy, { processMetrics: false });
  const listener = config.listeners[0]!;
  // Connect times of 0.5 ms (the first bound, exactly), 0.6 ms and 20 s (above the last bound, 10 s).
  for (const ms of [0.5, 0.6, 20_000]) m.connected({ listener, startedAt: 1000, connectedAt: 1000 + ms } as Parameters<ProxyMetrics['connected']>[0]);
  const samples = parseExposition(await m.exposition()).filter((s) => s.name.startsWith('halfclose_upstream_connect_seconds') && s.labels.listener === 'web');
  const bucket = (le: string) => samples.find((s) => s.name === 'halfclose_upstream_connect_seconds_bucket' && s.labels.le === le)?.value;
  assert.equal(bucket('0.0005'), 1);
  assert.equal(bucket('0.001'), 2);
  assert.equal(bucket('10'), 2);
  assert.equal(bucket('+Inf'), 3);
  assert.equal(samples.find((s) => s.name === 'halfclose_upstream_connect_seconds_count')?.value, 3);
  assert.ok(Math.abs(samples.find((s) => s.name === 'halfclose_upstream_connect_seconds_sum')!.value - 20.0011) < 1e-9);
  // The registry's reset (prom-client's resetMetrics) empties them.
  m.registry.resetMetrics();
  const after = parseExposition(await m.exposition()).filter((s) => s.name === 'halfclose_upstream_connect_seconds_count');
  assert.deepEqual(after.map((s) => s.value), [0]);
});
