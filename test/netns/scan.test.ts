// `halfclose scan` against a real leak: a pod namespace with a REDIRECT rule and a short conntrack
// CLOSE_WAIT timeout. An Envoy-like sidecar (a minimal node proxy: half-close propagated, no
// keepalive) is left with FIN-WAIT-2 + CLOSE-WAIT once the entry expires and the app's late FIN is
// lost: scan must report exactly those two sockets and exit 1. With halfclose proxy and its guard,
// the same run finishes cleanly and scan exits 0.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hasCommand } from '../../src/kernel/run.js';
import { installRedirect, type PodTopology } from '../../src/kernel/topology.js';
import type { ScanReport } from '../../src/scan/analyze.js';
import { BIN, nsNode, PROXY_UID, startNsProxy, topology, watch } from '../helpers/netns.js';

const CLOSE_WAIT_SEC = 3;

/** The service: greets, closes its side first (FIN), and reports what the app sends afterwards. */
const SERVICE = `
import net from 'node:net';
net.createServer({ allowHalfOpen: true }, (s) => {
  let got = '';
  s.on('data', (d) => (got += d));
  s.on('end', () => console.log(JSON.stringify({ ev: 'eof', got })));
  s.on('error', (e) => console.log(JSON.stringify({ ev: 'error', code: e.code })));
  s.end('hello');
}).listen(7777, '10.77.0.2', () => console.log('listening'));`;

/**
 * The leaking sidecar, as Envoy's tcp_proxy behaves: each FIN is forwarded as a half-close, no
 * keepalive, no half-close timeout. It runs as the proxy uid so its upstream is not redirected, and
 * connects to the fixed service (a plain node program cannot read SO_ORIGINAL_DST).
 */
const ENVOY_LIKE = `
import net from 'node:net';
net.createServer({ allowHalfOpen: true }, (down) => {
  const up = net.connect({ host: '10.77.0.2', port: 7777, allowHalfOpen: true });
  down.pipe(up);
  up.pipe(down);
  down.on('error', () => up.destroy());
  up.on('error', () => down.destroy());
}).listen(15001, '127.0.0.1', () => console.log('listening'));`;

/** The app: connects, reads the service's FIN, keeps its own side open until SIGUSR2, then closes with a bare FIN (the packet conntrack cannot pick up again). */
const APP = `
import net from 'node:net';
const s = net.connect({ host: '10.77.0.2', port: 7777, allowHalfOpen: true });
s.on('connect', () => console.log(JSON.stringify({ ev: 'connected', local: s.localAddress + ':' + s.localPort })));
s.on('data', () => {});
s.on('end', () => console.log(JSON.stringify({ ev: 'eof' })));
s.on('error', (e) => console.log(JSON.stringify({ ev: 'error', code: e.code })));
process.on('SIGUSR2', () => s.end());
setInterval(() => {}, 1000);`;

interface ScanRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

function scan(args: string[]): Promise<ScanRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'scan', ...args], { timeout: 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const status = err ? ((err as { code?: unknown }).code as number | null) : 0;
      resolve({ status: typeof status === 'number' ? status : null, stdout, stderr });
    });
  });
}

async function scanJson(args: string[]): Promise<{ status: number | null; report: ScanReport; raw: ScanRun }> {
  const raw = await scan([...args, '--json']);
  assert.ok(raw.status === 0 || raw.status === 1, `scan ${args.join(' ')} exited ${raw.status}: ${raw.stderr}`);
  return { status: raw.status, report: JSON.parse(raw.stdout) as ScanReport, raw };
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** HAProxy in tcp mode with an hour of client/server timeout, as commonly deployed: it leaks like Envoy (DESIGN.md §1). */
const HAPROXY_CFG = `global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend outbound
  bind 127.0.0.1:15001
  default_backend service
backend service
  server s1 10.77.0.2:7777
`;

/** nginx stream with proxy_half_close on and the default 10 min proxy_timeout (DESIGN.md §1). */
const nginxCfg = (dir: string): string => `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
stream {
  server {
    listen 127.0.0.1:15001;
    proxy_pass 10.77.0.2:7777;
    proxy_half_close on;
  }
}
`;

type Sidecar = { kind: 'envoy-like' } | { kind: 'haproxy' } | { kind: 'nginx' } | { kind: 'halfclose'; keepalive: string };

/** Builds the pod, starts service, sidecar and app, and waits until the app has read the service's FIN. */
async function halfClosedRun(t: TestContext, sidecar: Sidecar): Promise<{ topo: PodTopology; proxyPid: number; app: ReturnType<typeof nsNode>; appLocal: string; service: ReturnType<typeof nsNode>; stopProxy(): Promise<void> }> {
  const topo = await topology(t, { prefix: 'hcscan', closeWaitSec: CLOSE_WAIT_SEC });
  await installRedirect(topo, 15001, PROXY_UID);
  const service = nsNode(topo, topo.svc, SERVICE);
  await service.waitLine(/^listening/);
  let child: ChildProcess;
  if (sidecar.kind === 'halfclose') {
    const proxy = await startNsProxy(topo, ['--outbound', '127.0.0.1:15001', '--keepalive', sidecar.keepalive]);
    child = proxy.child;
  } else if (sidecar.kind === 'haproxy' || sidecar.kind === 'nginx') {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'hc-scan-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const cfg = path.join(dir, `${sidecar.kind}.cfg`);
    writeFileSync(cfg, sidecar.kind === 'haproxy' ? HAPROXY_CFG : nginxCfg(dir));
    // The proxy runs as the sidecar uid and writes its pid file and log here.
    chownSync(dir, PROXY_UID, PROXY_UID);
    chmodSync(dir, 0o755);
    child =
      sidecar.kind === 'haproxy'
        ? topo.spawn(topo.pod, 'haproxy', ['-db', '-f', cfg], { uid: PROXY_UID })
        : topo.spawn(topo.pod, 'nginx', ['-c', cfg, '-e', path.join(dir, 'error.log')], { uid: PROXY_UID });
    await waitFor(`${sidecar.kind} to listen on 15001`, 15_000, async () => ((await topo.exec(topo.pod, 'ss', ['-Htln', 'sport = :15001'])).includes('15001') ? true : null));
  } else {
    child = topo.spawn(topo.pod, process.execPath, ['--input-type=module', '-e', ENVOY_LIKE], { uid: PROXY_UID });
    await watch(child).waitLine(/^listening/);
  }
  t.after(() => {
    child.kill('SIGKILL');
  });
  const app = nsNode(topo, topo.pod, APP);
  const connected = JSON.parse(await app.waitLine(/"ev":"connected"/)) as { local: string };
  await app.waitLine(/"ev":"eof"/);
  return {
    topo,
    proxyPid: child.pid!,
    app,
    appLocal: connected.local,
    service,
    async stopProxy() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await once(child, 'exit');
    },
  };
}

test('an Envoy-like sidecar leaks; scan --netns reports exactly its two sockets and exits 1', async (t) => {
  const run = await halfClosedRun(t, { kind: 'envoy-like' });
  const { topo } = run;
  // Half-closed, entry still alive: at risk at most, never leaked yet (unless the 3 s already passed).
  const early = await scanJson(['--netns', topo.pod]);
  assert.ok(early.report.findings.every((f) => f.downstream.peer === run.appLocal));

  // --watch, started while the connection is still only half-closed, must print the change.
  const watcher = spawn(process.execPath, [BIN, 'scan', '--netns', topo.pod, '--watch', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    watcher.kill('SIGKILL');
  });
  const watched = watch(watcher);
  await watched.waitLine(/^halfclose scan: netns /, 20_000);

  // The entry expires after CLOSE_WAIT_SEC; then the app closes, and its bare FIN goes nowhere.
  const leaked = await waitFor('the conntrack entry to expire and scan to report a leak', 30_000, async () => {
    const s = await scanJson(['--netns', topo.pod]);
    return s.report.summary.leakedConnections > 0 ? s : null;
  });
  run.app.child.kill('SIGUSR2');
  const change = await watched.waitLine(/Z (\+ leaked|~ at-risk -> leaked) netns \S+: 127\.0\.0\.1:15001 -> \S+ \(conntrack-entry-gone\)$/, 20_000);
  assert.ok(change.includes(run.appLocal), change);
  watcher.kill('SIGINT');
  const [watchExit] = (await once(watcher, 'exit')) as [number | null];
  assert.equal(watchExit, 1, watched.out());

  const table = await scan(['--netns', topo.pod]);
  t.diagnostic(`scan --netns output:\n${table.stdout}`);
  assert.equal(table.status, 1, table.stderr);
  const { status, report } = await scanJson(['--netns', topo.pod]);
  assert.equal(status, 1);
  assert.equal(leaked.report.findings[0]!.reason, 'conntrack-entry-gone');
  assert.equal(report.findings.length, 1, JSON.stringify(report.findings, null, 1));
  const f = report.findings[0]!;
  assert.equal(f.verdict, 'leaked');
  assert.equal(f.reason, 'conntrack-entry-gone');
  assert.equal(f.downstream.state, 'FIN-WAIT-2');
  assert.equal(f.downstream.local, '127.0.0.1:15001');
  assert.equal(f.downstream.peer, run.appLocal);
  assert.equal(f.downstream.process?.pid, run.proxyPid);
  assert.equal(f.upstream?.state, 'CLOSE-WAIT');
  assert.equal(f.upstream?.peer, `${topo.svcIp}:7777`);
  assert.equal(f.upstream?.process?.pid, run.proxyPid);
  assert.deepEqual(report.summary, { leakedSockets: 2, leakedConnections: 1, atRiskConnections: 0, halfClosedHealthy: 0, unjudged: 0 });
  assert.deepEqual(report.portHazards.map((h) => h.app), [run.appLocal]);
  assert.equal(report.context.closeWaitTimeoutSec, CLOSE_WAIT_SEC);
  // The app's FIN never reached the service through the sidecar: that is the leak.
  assert.doesNotMatch(run.service.out(), /"ev":"eof"/);

  // --pid of the sidecar sees the same namespace; --all-netns finds the pod among the others.
  const byPid = await scanJson(['--pid', String(run.proxyPid)]);
  assert.equal(byPid.status, 1);
  assert.equal(byPid.report.findings[0]?.downstream.peer, run.appLocal);
  const all = await scan(['--all-netns', '--json']);
  assert.equal(all.status, 1, all.stderr);
  const namespaces = (JSON.parse(all.stdout) as { namespaces: ScanReport[] }).namespaces;
  const pod = namespaces.find((r) => r.where.startsWith(`netns ${topo.pod}`));
  const svc = namespaces.find((r) => r.where.startsWith(`netns ${topo.svc}`));
  assert.equal(pod?.summary.leakedSockets, 2, namespaces.map((r) => r.where).join('\n'));
  assert.equal(svc?.summary.leakedConnections, 0);

  // Once the sidecar is gone its sockets are orphans the kernel reaps: nothing leaked, exit 0.
  await run.stopProxy();
  const after = await scan(['--netns', topo.pod]);
  assert.equal(after.status, 0, after.stdout + after.stderr);
  assert.match(after.stdout, /^CLEAN/m);
});

for (const [kind, title] of [
  ['haproxy', 'HAProxy (tcp mode, 1 h timeouts)'],
  ['nginx', 'nginx stream (proxy_half_close on, 10 min proxy_timeout)'],
] as const) {
  test(`${title} leaks the same way; scan finds its two sockets by port, not by name`, { skip: !hasCommand(kind) && `${kind} is not installed (make setup)` }, async (t) => {
    const run = await halfClosedRun(t, { kind });
    const { topo } = run;
    const { report } = await waitFor('the conntrack entry to expire and scan to report a leak', 30_000, async () => {
      const s = await scanJson(['--netns', topo.pod]);
      return s.report.summary.leakedConnections > 0 ? s : null;
    });
    run.app.child.kill('SIGUSR2');
    const after = await scanJson(['--netns', topo.pod]);
    assert.equal(after.status, 1);
    for (const r of [report, after.report]) {
      assert.equal(r.findings.length, 1, JSON.stringify(r.findings, null, 1));
      const f = r.findings[0]!;
      assert.equal(f.verdict, 'leaked');
      assert.equal(f.downstream.peer, run.appLocal);
      assert.equal(f.downstream.process?.name, kind);
      assert.equal(f.upstream?.state, 'CLOSE-WAIT');
      assert.equal(f.upstream?.peer, `${topo.svcIp}:7777`);
      assert.equal(f.upstream?.process?.pid, f.downstream.process?.pid);
    }
    assert.doesNotMatch(run.service.out(), /"ev":"eof"/);
  });
}

test('the same run with halfclose proxy and its conntrack guard never leaks: scan exits 0 and the app\'s late FIN arrives', async (t) => {
  const run = await halfClosedRun(t, { kind: 'halfclose', keepalive: 'auto' });
  const { topo } = run;
  // Stay half-closed for well past the CLOSE_WAIT timeout.
  await new Promise((r) => setTimeout(r, (CLOSE_WAIT_SEC + 2) * 1000));
  const during = await scanJson(['--netns', topo.pod]);
  assert.equal(during.status, 0, JSON.stringify(during.report.findings, null, 1));
  assert.equal(during.report.summary.leakedConnections, 0);
  run.app.child.kill('SIGUSR2');
  await run.service.waitLine(/"ev":"eof"/, 15_000);
  const after = await scan(['--netns', topo.pod]);
  assert.equal(after.status, 0, after.stdout);
  assert.match(after.stdout, /^CLEAN/m);
});
