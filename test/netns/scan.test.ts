// `halfclose scan` against the leaks the lab leaves behind. One `runLab` call with `keep` runs the
// seed scenario (the service closes first, the app idles past the pod's 3 s conntrack CLOSE_WAIT
// timeout, then closes with a bare FIN that can no longer be un-NATed) against the lab's own
// sidecars, each in its own topology, and leaves them up: the Envoy-like sidecar (`halfclose proxy
// --keepalive off --idle-timeout 1h` as uid 1337), HAProxy and nginx with the lab's configs, and
// halfclose with its guard. scan must report exactly the two sockets each leaker holds and exit 1,
// exit 0 once the sidecar is gone, and find nothing where halfclose ran.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import type { PodTopology } from '../../src/kernel/topology.js';
import { runLab, type KeptTopology } from '../../src/lab/lab.js';
import type { CellResult } from '../../src/lab/scenarios.js';
import { pidsOfUid, SERVICE_PORT, SIDECAR_PORT, SIDECAR_UID, SIDECARS, type SidecarName } from '../../src/lab/sidecars.js';
import type { ScanReport } from '../../src/scan/analyze.js';
import { BIN, watch } from '../helpers/netns.js';

const CLOSE_WAIT_SEC = 3;

/** The sidecars that leak in seed (DESIGN.md §1), and halfclose, which must not. */
const LEAKERS = ['envoy-like', 'haproxy', 'nginx'] as const satisfies readonly SidecarName[];
const RUN: SidecarName[] = [...LEAKERS, 'halfclose'];
/** What the lab reports when it cannot run a sidecar here (binary missing, checkout unreadable by uid 1337). */
const missing = (name: SidecarName): string | false => SIDECARS[name].missing() ?? false;

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

async function scanJson(args: string[]): Promise<{ status: number | null; report: ScanReport }> {
  const raw = await scan([...args, '--json']);
  assert.ok(raw.status === 0 || raw.status === 1, `scan ${args.join(' ')} exited ${raw.status}: ${raw.stderr}`);
  return { status: raw.status, report: JSON.parse(raw.stdout) as ScanReport };
}

/** `scan --watch 1` on a pod namespace, started before the lab opens any connection there. */
function startWatch(t: TestContext, pod: string): ReturnType<typeof watch> & { stop(): Promise<number | null> } {
  const child = spawn(process.execPath, [BIN, 'scan', '--netns', pod, '--watch', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    child.kill('SIGKILL');
  });
  const w = watch(child);
  return {
    ...w,
    async stop() {
      await w.waitLine(/^halfclose scan: netns /, 20_000);
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGINT');
      const [code] = (await once(child, 'exit')) as [number | null];
      return code;
    },
  };
}

/** The seed connection as the lab's first snapshot saw it: the app's address and the sidecar's upstream socket. */
function seedConnection(cell: CellResult): { app: string; upstream: string } {
  const snap = cell.steps[0]?.snapshot;
  assert.ok(snap?.app && snap.sidecarUp, `the lab saw no connection: ${cell.facts.join('\n')}`);
  return { app: snap.app.local, upstream: snap.sidecarUp.local };
}

test('the lab leaves real leaks behind; scan reports exactly those sockets', async (t) => {
  const topos = new Map<SidecarName, PodTopology>();
  const watches = new Map<SidecarName, ReturnType<typeof startWatch>>();
  const lab = await runLab({
    scenarios: ['seed'],
    sidecars: RUN,
    closeWaitSec: CLOSE_WAIT_SEC,
    keep: true,
    onTopology(name, topo) {
      topos.set(name, topo);
      t.after(() => topo.destroy());
      // Watched from before the connection opens, so the leak shows up as a change.
      if (name === 'envoy-like' || name === 'halfclose') watches.set(name, startWatch(t, topo.pod));
    },
  });
  t.after(() => {
    for (const k of lab.kept) k.remove();
  });
  const kept = (name: SidecarName): KeptTopology => {
    const k = lab.kept.find((x) => x.sidecar === name);
    assert.ok(k, `the lab did not leave ${name} up`);
    return k;
  };
  const cell = (name: SidecarName): CellResult => {
    const c = lab.cells.find((x) => x.sidecar === name)!;
    assert.notEqual(c.outcome, 'error', `${name}: ${c.verdict}\n${c.facts.join('\n')}`);
    return c;
  };
  /** Asserts the one leaked connection `name`'s pod holds and returns the finding. */
  const assertLeak = (name: SidecarName, report: ScanReport): ScanReport['findings'][number] => {
    const { pod } = kept(name);
    const topo = topos.get(name)!;
    const { app, upstream } = seedConnection(cell(name));
    assert.equal(report.where, `netns ${pod}`);
    assert.equal(report.findings.length, 1, JSON.stringify(report.findings, null, 1));
    const f = report.findings[0]!;
    assert.equal(f.verdict, 'leaked');
    assert.equal(f.reason, 'conntrack-entry-gone');
    assert.equal(f.downstream.state, 'FIN-WAIT-2');
    assert.equal(f.downstream.local, `127.0.0.1:${SIDECAR_PORT}`);
    assert.equal(f.downstream.peer, app);
    assert.equal(f.upstream?.state, 'CLOSE-WAIT');
    assert.equal(f.upstream?.local, upstream);
    assert.equal(f.upstream?.peer, `${topo.svcIp}:${SERVICE_PORT}`);
    assert.equal(f.upstream?.process?.pid, f.downstream.process?.pid);
    assert.deepEqual(report.summary, { leakedSockets: 2, leakedConnections: 1, atRiskConnections: 0, halfClosedHealthy: 0, unjudged: 0 });
    assert.deepEqual(report.portHazards.map((h) => h.app), [app]);
    assert.equal(report.context.closeWaitTimeoutSec, CLOSE_WAIT_SEC);
    return f;
  };

  await t.test('the Envoy-like sidecar leaks; scan --netns reports exactly its two sockets and exits 1; --pid and --watch agree', { skip: missing('envoy-like') }, async () => {
    const c = cell('envoy-like');
    assert.equal(c.outcome, 'leak', c.facts.join('\n'));
    assert.equal(c.leakedSockets, 2);
    const { pod } = kept('envoy-like');
    const table = await scan(['--netns', pod]);
    t.diagnostic(`scan --netns output:\n${table.stdout}`);
    assert.equal(table.status, 1, table.stderr);
    assert.match(table.stdout, /^LEAK: 2 leaked sockets in 1 connection, 0 at risk$/m);
    const { status, report } = await scanJson(['--netns', pod]);
    assert.equal(status, 1);
    const f = assertLeak('envoy-like', report);
    // The sidecar is the built halfclose, run by the lab as the sidecar uid: its only process.
    const pids = await pidsOfUid(pod, SIDECAR_UID);
    assert.deepEqual(pids, [f.downstream.process?.pid]);
    assert.equal(f.downstream.process?.name, 'node');

    const byPid = await scanJson(['--pid', String(pids[0])]);
    assert.equal(byPid.status, 1);
    assert.equal(byPid.report.findings.length, 1);
    assert.equal(byPid.report.findings[0]?.downstream.peer, f.downstream.peer);

    const w = watches.get('envoy-like')!;
    const change = await w.waitLine(/Z (\+ leaked|~ at-risk -> leaked) netns \S+: 127\.0\.0\.1:15001 -> \S+ \(conntrack-entry-gone\)$/, 20_000);
    assert.ok(change.includes(f.downstream.peer), change);
    assert.equal(await w.stop(), 1, w.out());
  });

  for (const name of ['haproxy', 'nginx'] as const) {
    await t.test(`${SIDECARS[name].summary}: leaks the same two sockets; scan finds them by port, not by name`, { skip: missing(name) }, async () => {
      const c = cell(name);
      assert.equal(c.outcome, 'leak', c.facts.join('\n'));
      const { status, report } = await scanJson(['--netns', kept(name).pod]);
      assert.equal(status, 1);
      const f = assertLeak(name, report);
      assert.equal(f.downstream.process?.name, name);
      assert.deepEqual(await pidsOfUid(kept(name).pod, SIDECAR_UID), [f.downstream.process?.pid]);
    });
  }

  await t.test('halfclose with its conntrack guard, same run: nothing leaked at any time, scan exits 0', { skip: missing('halfclose') }, async () => {
    const c = cell('halfclose');
    assert.equal(c.outcome, 'ok', c.facts.join('\n'));
    assert.equal(c.entryGoneAfterMs, null, 'the guard keeps the entry alive');
    const after = await scan(['--netns', kept('halfclose').pod]);
    assert.equal(after.status, 0, after.stdout + after.stderr);
    assert.match(after.stdout, /^CLEAN/m);
    const w = watches.get('halfclose')!;
    assert.equal(await w.stop(), 0, w.out());
    // Change lines only (the first report's CLEAN line says "no leaked …").
    assert.doesNotMatch(w.out(), /^\S+Z .*leaked/m);
  });

  await t.test('--all-netns finds the leaking namespaces among the others', async () => {
    const all = await scan(['--all-netns', '--json']);
    assert.ok(all.status === 0 || all.status === 1, `scan --all-netns exited ${all.status}: ${all.stderr}`);
    const namespaces = (JSON.parse(all.stdout) as { namespaces: ScanReport[] }).namespaces;
    const where = (ns: string): ScanReport | undefined => namespaces.find((r) => r.where.startsWith(`netns ${ns} `) || r.where === `netns ${ns}`);
    const listing = namespaces.map((r) => `${r.where}: ${r.summary.leakedSockets}`).join('\n');
    for (const k of lab.kept) {
      const leaks = (LEAKERS as readonly SidecarName[]).includes(k.sidecar);
      assert.equal(where(k.pod)?.summary.leakedSockets, leaks ? 2 : 0, `${k.sidecar}:\n${listing}`);
      assert.equal(where(k.svc)?.summary.leakedSockets, 0, `${k.sidecar}:\n${listing}`);
    }
    if (lab.kept.some((k) => k.sidecar !== 'halfclose')) assert.equal(all.status, 1, all.stderr);
  });

  await t.test('once the sidecar is gone its sockets are orphans the kernel reaps: scan exits 0', async () => {
    for (const k of lab.kept) {
      await k.stopSidecar();
      const after = await scan(['--netns', k.pod]);
      assert.equal(after.status, 0, `${k.sidecar}: ${after.stdout}${after.stderr}`);
      assert.match(after.stdout, /^CLEAN/m);
    }
  });
});
