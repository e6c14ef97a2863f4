// The lab against the real kernel: the cells that carry the story of DESIGN.md §1 (who leaks in
// seed, who loses the late message, halfclose in every scenario, nobody leaks in control), the
// report rendered in headless Chromium with one diagram per step, and nothing left behind — after
// a normal run and after one interrupted with SIGINT.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { listNetns } from '../../src/kernel/netns.js';
import { run } from '../../src/kernel/run.js';
import { LAB_NETNS_PREFIX, runLab, type LabResult } from '../../src/lab/lab.js';
import { renderReport } from '../../src/lab/report.js';
import { SCENARIO_NAMES, type CellResult } from '../../src/lab/scenarios.js';
import { SIDECARS } from '../../src/lab/sidecars.js';
import { ROOT } from '../helpers/netns.js';

// halfclose (and the Envoy-like halfclose) run as uid 1337 from this checkout; a checkout that uid
// cannot read (a clone under /root) leaves only the Debian peers to test.
const OWN = SIDECARS.halfclose.missing();
const PEERS = (['envoy-like', 'haproxy', 'haproxy-fin', 'nginx', 'socat'] as const).filter((p) => OWN === null || p !== 'envoy-like');

function cell(r: LabResult, scenario: string, sidecar: string): CellResult {
  const c = r.cells.find((x) => x.scenario === scenario && x.sidecar === sidecar);
  assert.ok(c, `no cell ${scenario}/${sidecar}`);
  assert.notEqual(c.outcome, 'skipped', `${scenario}/${sidecar} was skipped: ${c.verdict} (make setup installs the peers)`);
  assert.notEqual(c.outcome, 'error', `${scenario}/${sidecar}: ${c.verdict}`);
  return c;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Every pid the kernel showed holding a socket in any snapshot of the run. */
function pidsSeen(r: LabResult): Set<number> {
  const pids = new Set<number>();
  for (const c of r.cells) {
    for (const st of c.steps) {
      for (const m of `${st.snapshot.raw.podSs}\n${st.snapshot.raw.svcSs}`.matchAll(/pid=(\d+)/g)) pids.add(Number(m[1]));
    }
  }
  return pids;
}

// Each test gives the lab a TMPDIR of its own, so the work directories it checks are this run's
// alone (another lab on the machine may be creating its own at the same time).
const privateTmp = (t: { after(fn: () => void): void }): string => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hc-lab-test-'));
  chmodSync(dir, 0o755); // the sidecars (uid 1337) read their configs below it
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};
const labDirs = (tmp: string): string[] => readdirSync(tmp).filter((d) => d.startsWith('halfclose-lab-'));

test('lab matrix: leaks, lost messages and clean-up as the kernel shows them', async (t) => {
  const names: string[] = [];
  const onTopology = (_: string, topo: { pod: string; svc: string }): void => void names.push(topo.pod, topo.svc);
  const tmp = privateTmp(t);
  const tmpBefore = process.env.TMPDIR;
  process.env.TMPDIR = tmp; // os.tmpdir() reads it at each call: the lab's work directories go there
  t.after(() => (tmpBefore === undefined ? delete process.env.TMPDIR : (process.env.TMPDIR = tmpBefore)));
  const iptablesBefore = (await run('iptables-save', [])).stdout.replace(/^#.*\n/gm, '');
  // halfclose in every scenario; the peers only where the story needs them. Both in parallel.
  const [hc, peers] = await Promise.all([
    runLab({ scenarios: [...SCENARIO_NAMES], sidecars: OWN === null ? ['halfclose'] : [], closeWaitSec: 3, onTopology }),
    runLab({ scenarios: ['seed', 'late-message', 'control'], sidecars: [...PEERS], closeWaitSec: 3, onTopology }),
  ]);

  await t.test('halfclose neither leaks nor loses anything, in any scenario', { skip: OWN ?? false }, () => {
    for (const sc of SCENARIO_NAMES) {
      const c = cell(hc, sc, 'halfclose');
      assert.equal(c.outcome, 'ok', `${sc}: ${c.verdict}\n${c.facts.join('\n')}`);
      assert.equal(c.leakedSockets ?? 0, 0, sc);
    }
    assert.equal(cell(hc, 'late-message', 'halfclose').messageDelivered, true);
    // The guard kept the entry alive across the idle period; in entry-lost it reclaimed the sockets.
    assert.equal(cell(hc, 'seed', 'halfclose').entryGoneAfterMs, null);
    const lost = cell(hc, 'entry-lost', 'halfclose');
    assert.ok(lost.freedAfterMs !== undefined, lost.verdict);
    // …because a keepalive probe met no socket at the app and the RST told the sidecar.
    assert.ok(lost.facts.includes("the sidecar's access log: connection closed, reason keepalive-dead"), lost.facts.join('\n'));
  });

  await t.test('the Envoy-like sidecar, default HAProxy and nginx stream leak in seed', () => {
    for (const sd of ['envoy-like', 'haproxy', 'nginx'].filter((p) => (PEERS as string[]).includes(p))) {
      const c = cell(peers, 'seed', sd);
      assert.equal(c.outcome, 'leak', `${sd}: ${c.verdict}`);
      assert.equal(c.leakedSockets, 2, `${sd}: ${c.verdict}`);
      // Because the conntrack entry expired before the app's FIN, as in the field.
      assert.equal(typeof c.entryGoneAfterMs, 'number', `${sd}: ${c.facts.join('; ')}`);
      const last = c.steps.at(-1)!.snapshot;
      assert.equal(last.sidecarDown?.state, 'FIN-WAIT-2', sd);
      assert.equal(last.sidecarUp?.state, 'CLOSE-WAIT', sd);
    }
  });

  await t.test('haproxy-fin and socat do not leak but lose the late message', () => {
    for (const sd of ['haproxy-fin', 'socat']) {
      assert.equal(cell(peers, 'seed', sd).leakedSockets, 0, sd);
      const c = cell(peers, 'late-message', sd);
      assert.equal(c.outcome, 'lost', `${sd}: ${c.verdict}`);
      assert.equal(c.messageDelivered, false, sd);
    }
  });

  await t.test('nothing leaks in control', () => {
    for (const sd of [...(OWN === null ? ['halfclose'] : []), ...PEERS]) {
      const c = cell(sd === 'halfclose' ? hc : peers, 'control', sd);
      assert.equal(c.leakedSockets ?? 0, 0, `${sd}: ${c.verdict}`);
      assert.notEqual(c.outcome, 'leak', sd);
    }
  });

  await t.test('no namespace, process, rule or work directory survives the run', async () => {
    assert.equal(names.length, 2 * ((OWN === null ? 1 : 0) + PEERS.length));
    const left = (await listNetns()).filter((n) => names.includes(n));
    assert.deepEqual(left, []);
    const pids = [...pidsSeen(hc), ...pidsSeen(peers)];
    assert.ok(pids.length > 10, 'the snapshots named the processes');
    assert.deepEqual(pids.filter(alive), []);
    assert.equal((await run('iptables-save', [])).stdout.replace(/^#.*\n/gm, ''), iptablesBefore);
    assert.deepEqual(labDirs(tmp), []);
  });

  await t.test('the report renders in Chromium with one diagram per step', async () => {
    const result: LabResult = { ...peers, sidecars: [...hc.sidecars, ...peers.sidecars], cells: [...hc.cells, ...peers.cells], scenarios: hc.scenarios };
    const dir = mkdtempSync(path.join(os.tmpdir(), 'hc-lab-report-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'report.html');
    writeFileSync(file, renderReport(result));
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
    try {
      const page = await browser.newPage();
      const requests: string[] = [];
      page.on('request', (r) => requests.push(r.url()));
      await page.goto(`file://${file}`);
      const steps = result.cells.reduce((n, c) => n + c.steps.length, 0);
      assert.ok(steps >= 30);
      assert.equal(await page.locator('svg.step-diagram').count(), steps);
      assert.equal(await page.locator('section.cell').count(), result.cells.length);
      assert.match((await page.locator('table.summary').innerText()).replace(/\s+/g, ' '), /seed .*leaked 2 sockets/);
      // A lost FIN is drawn as lost in the seed diagram of default HAProxy.
      assert.ok((await page.locator('#seed--haproxy svg .ar.lost').count()) >= 1);
      // Self-contained: the page fetched nothing but itself.
      assert.deepEqual(requests, [`file://${file}`]);
    } finally {
      await browser.close();
    }
  });
});

test('an interrupted lab (SIGINT) leaves no namespace, process or work directory', async (t) => {
  const before = new Set(await listNetns());
  const tmp = privateTmp(t);
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'lab', '--scenario', 'seed', '--proxy', 'haproxy,socat', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = once(child, 'exit');
  // Wait until both topologies exist and their sidecars listen: the middle of a scenario.
  let ours: string[] = [];
  const deadline = Date.now() + 30_000;
  for (;;) {
    ours = (await listNetns()).filter((n) => n.startsWith(`${LAB_NETNS_PREFIX}-`) && !before.has(n) && n.endsWith('-pod'));
    const listening = await Promise.all(ours.map(async (n) => (await run('ss', ['-Htln', 'sport = :15001'], { netns: n, reject: false })).stdout.trim() !== ''));
    if (ours.length === 2 && listening.every(Boolean)) break;
    assert.ok(Date.now() < deadline && child.exitCode === null, `the lab did not get going: ${stderr}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const pids: number[] = [];
  for (const n of ours) pids.push(...(await run('ip', ['netns', 'pids', n])).stdout.split(/\s+/).filter(Boolean).map(Number));
  assert.ok(pids.length >= 4, `processes in the pods: ${pids.join(' ')}`);
  child.kill('SIGINT');
  const [code, signal] = await exited;
  assert.equal(code ?? signal, 130, stderr);
  const left = (await listNetns()).filter((n) => !before.has(n) && n.startsWith(`${LAB_NETNS_PREFIX}-`));
  assert.deepEqual(left, []);
  // SIGKILL is delivered at once but a dying process takes a moment to be reaped.
  for (let i = 0; i < 50 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(pids.filter(alive), []);
  assert.deepEqual(labDirs(tmp), []);
  assert.ok(!existsSync(`/run/netns/${ours[0]}`));
});

test('--keep leaves the namespaces up with the sidecar running until Ctrl-C, then removes them', async () => {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'lab', '--scenario', 'control', '--proxy', 'socat', '--keep', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = once(child, 'exit');
  const deadline = Date.now() + 30_000;
  while (!/Ctrl-C to remove everything/.test(stderr) || !/-svc ss -tanoeip/.test(stderr)) {
    assert.ok(Date.now() < deadline && child.exitCode === null, `no --keep message: ${stderr}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const pod = /ip netns exec (\S+-pod) ss -tanoeip/.exec(stderr)![1]!;
  assert.ok(existsSync(`/run/netns/${pod}`), pod);
  assert.notEqual((await run('ss', ['-Htln', 'sport = :15001'], { netns: pod })).stdout.trim(), '', 'the sidecar still listens');
  assert.match((await run('iptables', ['-t', 'nat', '-S'], { netns: pod })).stdout, /HALFCLOSE_REDIRECT/);
  child.kill('SIGINT');
  const [code, signal] = await exited;
  assert.equal(code ?? signal, 130, stderr);
  assert.ok(!existsSync(`/run/netns/${pod}`));
  assert.ok(!existsSync(`/run/netns/${pod.replace(/-pod$/, '-svc')}`));
});
