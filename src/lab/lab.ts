// Runs the lab matrix: one pod/service topology per sidecar (so sidecars run side by side without
// sharing sockets, rules or conntrack), the scenarios one after another on it, each with a fresh
// sidecar and an empty conntrack table. Everything it creates is removed when it ends, fails or
// is interrupted (the topology's exit hook kills the processes and deletes the namespaces).

import { chownSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../kernel/run.js';
import { createPodTopology, type PodTopology } from '../kernel/topology.js';
import { applyInterception } from '../netfilter/apply.js';
import { interceptOptions } from '../netfilter/options.js';
import { plan } from '../netfilter/plan.js';
import { startApp, startService, type Agent } from './agents.js';
import { runScenario, SCENARIO_SUMMARIES, type Bench, type CellResult, type ScenarioName } from './scenarios.js';
import { SERVICE_PORT, SIDECAR_PORT, SIDECAR_UID, SIDECARS, startSidecar, type RunningSidecar, type SidecarName } from './sidecars.js';

/** Prefix of the lab's namespace names (`hclab-3f9a1c-pod`), so a leftover one is easy to spot. */
export const LAB_NETNS_PREFIX = 'hclab';

export interface LabOptions {
  scenarios: ScenarioName[];
  sidecars: SidecarName[];
  /** The pod namespace's nf_conntrack_tcp_timeout_close_wait, in seconds. */
  closeWaitSec: number;
  /** How many sidecars run at once (each in its own topology). Default: all. */
  parallel?: number;
  /** Called as each cell finishes. */
  onCell?: (cell: CellResult) => void;
  /** Called once per sidecar topology, when it is up (names of its namespaces). */
  onTopology?: (sidecar: SidecarName, topo: PodTopology) => void;
  /**
   * Leave each topology up after its last scenario, sidecar and endpoints still running, and
   * report it in `kept`; the process's exit hook (Ctrl-C) removes it. Default false.
   */
  keep?: boolean;
}

/** A topology left up by `keep`, to look inside. */
export interface KeptTopology {
  sidecar: SidecarName;
  pod: string;
  svc: string;
  /** Stops the sidecar alone (what it held becomes orphans the kernel reaps); the rest stays up. */
  stopSidecar(): Promise<void>;
  /** Removes what was left up (endpoints, sidecar, namespaces, work directory) without waiting for exit. Idempotent. */
  remove(): void;
}

export interface LabResult {
  startedAt: string;
  kernel: string;
  closeWaitSec: number;
  durationMs: number;
  scenarios: { name: ScenarioName; summary: string }[];
  sidecars: { name: SidecarName; summary: string; release: string; skipped?: string; commandLine?: string; config?: string }[];
  cells: CellResult[];
}

const liveDirs = new Set<string>();
process.on('exit', () => {
  for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
});

/** halfclose's access log: one JSON line per closed connection, with the reason it ended. */
function closeReasons(output: string): string[] {
  const facts: string[] = [];
  for (const line of output.split('\n')) {
    if (!line.includes('"connection closed"')) continue;
    try {
      const rec = JSON.parse(line) as { reason?: string; client?: unknown };
      if (rec.reason) facts.push(`the sidecar's access log: connection closed, reason ${rec.reason}`);
    } catch {
      /* not a log line */
    }
  }
  return facts;
}

function skippedCell(scenario: ScenarioName, sidecar: SidecarName, why: string): CellResult {
  return { scenario, sidecar, outcome: 'skipped', verdict: `skipped: ${why}`, facts: [why], steps: [], durationMs: 0 };
}

/** How each sidecar was run (command line, generated config), as the report shows it. */
type Invocation = { commandLine: string; config: string | null };

async function runSidecar(name: SidecarName, o: LabOptions, kept: KeptTopology[], invocations: Map<SidecarName, Invocation>): Promise<CellResult[]> {
  const spec = SIDECARS[name];
  const missing = spec.missing();
  if (missing !== null) return o.scenarios.map((s) => skippedCell(s, name, missing));
  const topo = await createPodTopology({ prefix: LAB_NETNS_PREFIX, closeWaitSec: o.closeWaitSec });
  const dir = mkdtempSync(path.join(os.tmpdir(), `halfclose-lab-${name}-`));
  liveDirs.add(dir);
  let app: Agent | undefined;
  let service: Agent | undefined;
  const cells: CellResult[] = [];
  let keptSidecar: RunningSidecar | undefined;
  try {
    chownSync(dir, SIDECAR_UID, SIDECAR_UID);
    // The same rules `halfclose iptables install` writes (Istio's layout), outbound capture only.
    const rules = interceptOptions({ proxyUids: [SIDECAR_UID], proxyGids: [SIDECAR_UID], outboundPort: SIDECAR_PORT, inboundPorts: [] });
    await applyInterception(plan(rules), { netns: topo.pod });
    o.onTopology?.(name, topo);
    service = await startService(topo, SERVICE_PORT);
    app = startApp(topo);
    let nextConn = 1;
    for (const scenario of o.scenarios) {
      await run('conntrack', ['-F'], { netns: topo.pod, reject: false });
      let cell: CellResult;
      try {
        const sidecar = await startSidecar(topo, spec, dir, { host: topo.svcIp, port: SERVICE_PORT });
        invocations.set(name, { commandLine: sidecar.commandLine, config: sidecar.config });
        const bench: Bench = { topo, app, service, sidecar, closeWaitSec: o.closeWaitSec, nextConn };
        cell = await runScenario(scenario, bench);
        nextConn = bench.nextConn;
        cell.facts.push(...closeReasons(sidecar.output()));
        if (o.keep && scenario === o.scenarios.at(-1) && cell.outcome !== 'error') keptSidecar = sidecar;
        else await sidecar.stop();
      } catch (err) {
        cell = { scenario, sidecar: name, outcome: 'error', verdict: `lab error: ${(err as Error).message}`, facts: [(err as Error).message], steps: [], durationMs: 0 };
      }
      cells.push(cell);
      o.onCell?.(cell);
    }
  } finally {
    const remove = (): void => {
      app?.stop();
      service?.stop();
      topo.destroy();
      rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    };
    if (keptSidecar !== undefined) kept.push({ sidecar: name, pod: topo.pod, svc: topo.svc, stopSidecar: keptSidecar.stop, remove });
    else remove();
  }
  return cells;
}

/** Runs every requested scenario against every requested sidecar and collects the cells in matrix order. */
export async function runLab(o: LabOptions): Promise<LabResult & { kept: KeptTopology[] }> {
  const started = Date.now();
  const kept: KeptTopology[] = [];
  const invocations = new Map<SidecarName, Invocation>();
  const queue = [...o.sidecars];
  const results = new Map<SidecarName, CellResult[]>();
  const worker = async (): Promise<void> => {
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) results.set(name, await runSidecar(name, o, kept, invocations));
  };
  const parallel = Math.max(1, Math.min(o.parallel ?? o.sidecars.length, o.sidecars.length));
  await Promise.all(Array.from({ length: parallel }, worker));
  const cells: CellResult[] = [];
  for (const scenario of o.scenarios) for (const sidecar of o.sidecars) cells.push(results.get(sidecar)!.find((c) => c.scenario === scenario)!);
  return {
    startedAt: new Date(started).toISOString(),
    kernel: `Linux ${os.release()}`,
    closeWaitSec: o.closeWaitSec,
    durationMs: Date.now() - started,
    scenarios: o.scenarios.map((name) => ({ name, summary: SCENARIO_SUMMARIES[name] })),
    sidecars: o.sidecars.map((name) => {
      const s = SIDECARS[name];
      const skipped = s.missing();
      const inv = invocations.get(name);
      return {
        name,
        summary: s.summary,
        release: s.release,
        ...(skipped === null ? {} : { skipped }),
        ...(inv ? { commandLine: inv.commandLine, ...(inv.config === null ? {} : { config: inv.config }) } : {}),
      };
    }),
    cells,
    kept,
  };
}
