// The conntrack guard in a real pod: app and sidecar in one namespace with a REDIRECT rule that
// excludes the proxy's uid, the service in another, and the pod's conntrack CLOSE_WAIT timeout
// lowered to 2 s so that "several CLOSE_WAIT timeouts" fit in a test. Without the guard the app's
// late bare FIN is lost and the proxy keeps FIN-WAIT-2 + CLOSE-WAIT; with it nothing leaks, late
// data still flows, a flushed entry is reclaimed, and a long legitimate half-close is not cut.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { installRedirect, type PodTopology } from '../../src/kernel/topology.js';
import { run } from '../../src/kernel/run.js';
import { BIN, nsNode, PROXY_UID, startNsProxy, topology } from '../helpers/netns.js';

const CLOSE_WAIT_SEC = 2;
/** What the guard's `auto` mode derives from 2 s: idle 1 s, interval 1 s, 3 probes. */
const GUARD = { idleSec: 1, intervalSec: 1, count: 3 };
/** How long the app stays half-closed before acting: 3.5 CLOSE_WAIT timeouts. */
const LATE_MS = 7000;

// Port 7777: the service closes first (FIN at once), reads what comes, reports the app's FIN.
// Port 7778: the service waits for the app's FIN, stays silent LATE_MS, then sends and closes.
const SERVICE = `
import net from 'node:net';
const late = Number(process.argv.at(-1));
net.createServer({ allowHalfOpen: true }, (s) => {
  let data = '';
  s.on('data', (d) => (data += d));
  s.on('error', (e) => console.log(JSON.stringify({ ev: 'svc-error', code: e.code })));
  s.on('end', () => console.log(JSON.stringify({ ev: 'svc-end', data })));
  s.end();
}).listen(7777, '10.77.0.2');
net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', () => {});
  s.on('end', () => setTimeout(() => s.end('resumed after ' + late + 'ms'), late));
}).listen(7778, '10.77.0.2', () => console.log('listening'));
`;

// mode fin:  wait for the service's FIN, stay half-closed LATE_MS, then a bare FIN.
// mode msg:  the same, but a message goes before the FIN.
// mode wait: FIN at once, then read whatever the service sends later.
const APP = `
import net from 'node:net';
const [mode, late] = process.argv.slice(-2);
const say = (o) => console.log(JSON.stringify(o));
const s = net.connect({ host: '10.77.0.2', port: mode === 'wait' ? 7778 : 7777, allowHalfOpen: true }, () => {
  say({ ev: 'connected', local: s.localPort });
  if (mode === 'wait') s.end();
});
let data = '';
s.on('data', (d) => (data += d));
s.on('end', () => {
  say({ ev: 'eof', data });
  if (mode !== 'wait') setTimeout(() => { mode === 'msg' ? s.end('late message') : s.end(); say({ ev: 'fin-sent' }); }, Number(late));
});
s.on('error', (e) => say({ ev: 'error', code: e.code }));
s.on('close', () => say({ ev: 'closed' }));
`;

type Events = { ev: string; [k: string]: unknown }[];
const events = (text: string): Events =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Events[number]);
const closedLog = (text: string): Record<string, unknown>[] =>
  text
    .split('\n')
    .filter((l) => l.includes('"connection closed"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** The pod's TCP sockets that the proxy (uid 1337) still holds, as "STATE local peer". */
async function proxySockets(topo: PodTopology): Promise<string[]> {
  const out = await topo.exec(topo.pod, 'ss', ['-tanHe']);
  return out
    .split('\n')
    .filter((l) => l.includes(`uid:${PROXY_UID}`) && !l.startsWith('LISTEN'))
    .map((l) => l.trim().split(/\s+/).filter((_, i) => i === 0 || i === 3 || i === 4).join(' '));
}

async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function pod(t: import('node:test').TestContext, proxyArgs: string[]) {
  const topo = await topology(t, { prefix: 'hcg', closeWaitSec: CLOSE_WAIT_SEC });
  await installRedirect(topo, 15001, PROXY_UID);
  const svc = nsNode(topo, topo.svc, SERVICE, [String(LATE_MS)]);
  await svc.waitLine(/listening/);
  const proxy = await startNsProxy(topo, ['--outbound', '127.0.0.1:15001', ...proxyArgs]);
  t.after(() => proxy.stop());
  return { topo, svc, proxy };
}

test('without the guard (--keepalive off) the late bare FIN is lost: the proxy keeps FIN-WAIT-2 and CLOSE-WAIT', async (t) => {
  const { topo, svc, proxy } = await pod(t, ['--keepalive', 'off']);
  const app = nsNode(topo, topo.pod, APP, ['fin', String(LATE_MS)]);
  await app.waitLine(/"fin-sent"/, LATE_MS + 5000);
  // The FIN left un-NATed for the real service, which answered it with RST.
  await app.waitLine(/"closed"/, 5000);
  await new Promise((r) => setTimeout(r, 1000));
  const held = await proxySockets(topo);
  assert.ok(held.some((s) => /^FIN-WAIT-2 127\.0\.0\.1:15001 10\.77\.0\.1:\d+$/.test(s)), `FIN-WAIT-2 towards the app in ${JSON.stringify(held)}`);
  assert.ok(held.some((s) => /^CLOSE-WAIT 10\.77\.0\.1:\d+ 10\.77\.0\.2:7777$/.test(s)), `CLOSE-WAIT towards the service in ${JSON.stringify(held)}`);
  assert.equal(events(svc.out()).filter((e) => e.ev === 'svc-end').length, 0, 'the service never saw the FIN');
  assert.deepEqual(closedLog(proxy.output()), [], 'the proxy still counts the connection as open');
});

test('with the guard: late bare FIN and late message arrive, a long half-close resumes, nothing is left; a flushed entry is reclaimed', async (t) => {
  const { topo, svc, proxy } = await pod(t, []);
  assert.match(proxy.output(), new RegExp(`keepalive ${GUARD.idleSec}:${GUARD.intervalSec}:${GUARD.count} .*nf_conntrack_tcp_timeout_close_wait = ${CLOSE_WAIT_SEC}s`));
  const fin = nsNode(topo, topo.pod, APP, ['fin', String(LATE_MS)]);
  const msg = nsNode(topo, topo.pod, APP, ['msg', String(LATE_MS)]);
  const wait = nsNode(topo, topo.pod, APP, ['wait', '0']);
  await Promise.all([fin, msg, wait].map((a) => a.waitLine(/"closed"/, LATE_MS + 10_000)));
  // Late bare FIN and late message reached the service through the proxy (the app's socket closes
  // on the proxy's ACK, a moment before the forwarded FIN reaches the service).
  const svcEnds = (): unknown[] => events(svc.out()).filter((e) => e.ev === 'svc-end');
  await waitUntil(() => svcEnds().length >= 2, 5000, `two FINs at the service; proxy log:\n${proxy.output()}\nservice:\n${svc.out()}`).catch(async (err: Error) => {
    throw new Error(`${err.message}\nproxy sockets: ${JSON.stringify(await proxySockets(topo))}`);
  });
  const ends = events(svc.out()).filter((e) => e.ev === 'svc-end').map((e) => e.data);
  assert.deepEqual(ends.sort(), ['', 'late message']);
  for (const a of [fin, msg]) assert.deepEqual(events(a.out()).filter((e) => e.ev === 'error'), []);
  // The service spoke again after 3.5 CLOSE_WAIT timeouts of a half-closed, silent connection.
  assert.equal(events(wait.out()).find((e) => e.ev === 'eof')?.data, `resumed after ${LATE_MS}ms`);
  await waitUntil(() => closedLog(proxy.output()).length === 3, 5000, 'three closed connections');
  assert.deepEqual(closedLog(proxy.output()).map((l) => l.reason), ['both-fin', 'both-fin', 'both-fin']);
  assert.deepEqual(await proxySockets(topo), [], 'the proxy holds no socket');

  // Lost entry: flush the table while a connection is half-closed (past a CLOSE_WAIT timeout, so the
  // entry had to be refreshed to be there). The next probe reaches the app un-NATed and draws an RST.
  const lost = nsNode(topo, topo.pod, APP, ['fin', '600000']);
  await lost.waitLine(/"eof"/, 5000);
  await new Promise((r) => setTimeout(r, CLOSE_WAIT_SEC * 1000 + 500));
  assert.equal((await proxySockets(topo)).length, 2, 'half-closed: FIN-WAIT-2 + CLOSE-WAIT');
  await run('conntrack', ['-F'], { netns: topo.pod });
  const flushedAt = Date.now();
  const bound = (GUARD.idleSec + GUARD.intervalSec * GUARD.count) * 1000;
  // Generous margin for a loaded machine; the point is "seconds", not "the idle timeout (1 h)".
  await waitUntil(async () => (await proxySockets(topo)).length === 0, bound + 5000, 'both sockets reclaimed');
  const took = Date.now() - flushedAt;
  const last = closedLog(proxy.output()).at(-1)!;
  assert.equal(last.reason, 'keepalive-dead');
  t.diagnostic(`flushed entry reclaimed in ${took} ms (bound idle + interval x count = ${bound} ms)`);
});

test('doctor --netns reads the pod\'s lowered CLOSE_WAIT and judges both proxies', async (t) => {
  const topo = await topology(t, { prefix: 'hcd', closeWaitSec: CLOSE_WAIT_SEC });
  const doctor = (...args: string[]) => spawnSync(process.execPath, [BIN, 'doctor', '--netns', topo.pod, '--json', ...args], { encoding: 'utf8', timeout: 30_000 });
  const ours = doctor();
  assert.equal(ours.status, 0, ours.stderr);
  const r = JSON.parse(ours.stdout);
  assert.equal(r.netns, topo.pod);
  assert.equal(r.settings['net.netfilter.nf_conntrack_tcp_timeout_close_wait'], CLOSE_WAIT_SEC);
  assert.deepEqual(r.guard.halfClosed, GUARD);
  const envoy = doctor('--idle-timeout', '1h');
  assert.equal(envoy.status, 1, envoy.stderr);
  assert.match(JSON.parse(envoy.stdout).verdict, /CAN happen: a connection half-closed and idle for more than 2s/);
});
