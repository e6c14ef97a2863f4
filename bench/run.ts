// `make bench`: halfclose against HAProxy, nginx and socat (and a direct connection, the ceiling),
// all on 127.0.0.1 in one run under the same conditions. Writes bench/results.json and
// bench/RESULTS.md and prints the table. BENCH_QUICK=1 makes a seconds-long run (the smoke test).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { hasCommand, run } from '../src/kernel/run.js';
import { CONTENDERS, repoRoot, type Contender, type RunningContender, type Route } from './contenders.js';
import { freePort, Procs, proxyCpu, sleep, waitListening, workerCommand } from './procs.js';
import { renderMarkdown, median, type BenchResults, type ContenderResult, type Metric } from './report.js';

export interface BenchOptions {
  /** A seconds-long run with tiny counts (smoke test). Default: BENCH_QUICK=1 in the environment. */
  quick?: boolean;
  /** Where results.json and RESULTS.md go. Default bench/ in the repository. */
  outDir?: string;
  /** Progress lines. Default: stderr. */
  log?: (line: string) => void;
  /** Run only these contenders (names), direct always included. Default: all. */
  only?: string[];
}

interface Params {
  reps: number;
  iperfSeconds: number;
  latencyCount: number;
  latencyMaxMs: number;
  /** Each contender's connection-rate time per repetition, in `connSlices` bursts taken in turn across the contenders. */
  connMaxMs: number;
  connSlices: number;
  connConcurrency: number;
  idleConnections: number;
}

const FULL: Params = {
  reps: 5,
  iperfSeconds: 3,
  latencyCount: 5000,
  latencyMaxMs: 2000,
  connMaxMs: 2500,
  connSlices: 5,
  connConcurrency: 50,
  idleConnections: 5000,
};

const QUICK: Params = {
  reps: 1,
  iperfSeconds: 1,
  latencyCount: 300,
  latencyMaxMs: 1000,
  connMaxMs: 1000,
  connSlices: 1,
  connConcurrency: 50,
  idleConnections: 200,
};

async function version(cmd: string, args: string[], re: RegExp): Promise<string | null> {
  if (!hasCommand(cmd)) return null;
  const r = await run(cmd, args, { reject: false, timeoutMs: 5000 }).catch(() => null);
  if (!r) return null;
  const m = re.exec(r.stdout + r.stderr);
  return m ? m[1]! : null;
}

async function iperf(port: number, streams: number, seconds: number): Promise<number> {
  const args = ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J'];
  if (streams > 1) args.push('-P', String(streams));
  const r = await run('iperf3', args, { reject: false, timeoutMs: seconds * 1000 + 15_000 });
  let j: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  try {
    j = JSON.parse(r.stdout) as typeof j;
  } catch {
    throw new Error(`iperf3 -c (exit ${r.exitCode}): ${r.stderr.trim() || r.stdout.slice(0, 200)}`);
  }
  if (j.error) throw new Error(`iperf3 -c: ${j.error}`);
  const bps = j.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new Error('iperf3 -c: no sum_received in its JSON');
  return bps / 1e9;
}

export async function runBench(opts: BenchOptions = {}): Promise<BenchResults> {
  const quick = opts.quick ?? process.env.BENCH_QUICK === '1';
  const p = quick ? QUICK : FULL;
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  const outDir = opts.outDir ?? join(repoRoot(), 'bench');
  const procs = new Procs();
  const tmp = mkdtempSync(join(os.tmpdir(), 'halfclose-bench-'));
  const [wcmd, wargs] = workerCommand();
  const t0 = Date.now();
  const loadBefore = os.loadavg();

  const selected = CONTENDERS.filter((c) => c.name === 'direct' || !opts.only || opts.only.includes(c.name));
  const results = new Map<string, ContenderResult>();
  const ready: Contender[] = [];
  for (const c of selected) {
    const why = c.unavailable();
    results.set(c.name, { name: c.name, describe: c.describe, skipped: why, metrics: {}, errors: [] });
    if (why) log(`bench: skipping ${c.name}: ${why}`);
    else ready.push(c);
  }
  const haveIperf = hasCommand('iperf3');
  if (!haveIperf) log('bench: skipping throughput: `iperf3` is not installed (make setup installs it)');

  const record = (c: string, metric: string, value: number): void => {
    const m = (results.get(c)!.metrics[metric] ??= { median: NaN, runs: [] } as Metric);
    m.runs.push(value);
  };
  const fail = (c: string, what: string, err: unknown): void => {
    const msg = `${what}: ${(err as Error).message}`;
    results.get(c)!.errors.push(msg);
    log(`bench: ${c}: ${msg}`);
  };

  try {
    // Upstreams: one iperf3 server and one echo port per contender, so no contender's TIME_WAIT
    // sockets or stuck test can get in another's way.
    const ports = new Map<string, { iperfUp: number; echoUp: number; iperf: number; echo: number }>();
    for (const c of ready) {
      ports.set(c.name, { iperfUp: await freePort(), echoUp: await freePort(), iperf: await freePort(), echo: await freePort() });
    }
    const echoPorts = ready.map((c) => ports.get(c.name)!.echoUp);
    const echo = procs.spawn('echo', wcmd, [...wargs, 'echo', `ports=${echoPorts.join(',')}`], { logFile: join(tmp, 'echo.log') });
    await echo.firstJson(15_000);
    if (haveIperf) {
      for (const c of ready) {
        const up = ports.get(c.name)!.iperfUp;
        const s = procs.spawn(`iperf3-s-${c.name}`, 'iperf3', ['-s', '-B', '127.0.0.1', '-p', String(up)], { logFile: join(tmp, `iperf3-${c.name}.log`) });
        await waitListening([up], s, 10_000, 'iperf3 -s');
      }
    }

    // Contenders, each routing its two ports to its two upstreams.
    const running = new Map<string, RunningContender>();
    for (const c of ready) {
      const pt = ports.get(c.name)!;
      if (c.name === 'direct') {
        pt.iperf = pt.iperfUp;
        pt.echo = pt.echoUp;
        continue;
      }
      const routes: Route[] = [{ listen: pt.echo, upstream: pt.echoUp }];
      if (haveIperf) routes.push({ listen: pt.iperf, upstream: pt.iperfUp });
      try {
        running.set(c.name, await c.start(procs, routes, tmp, 'main'));
      } catch (err) {
        fail(c.name, 'start', err);
      }
    }
    const active = ready.filter((c) => c.name === 'direct' || running.has(c.name));

    type Latency = { samples: number; p50: number; p99: number } | { error: string };
    const latency = async (ports: number[], size: number): Promise<Record<string, Latency>> => {
      const w = procs.spawn('latency', wcmd, [...wargs, 'latency', `ports=${ports.join(',')}`, `size=${size}`, `count=${p.latencyCount}`, `maxMs=${p.latencyMaxMs * ports.length}`], {
        logFile: join(tmp, 'latency.log'),
      });
      return (await w.firstJson<{ ports: Record<string, Latency> }>(p.latencyMaxMs * ports.length + 15_000)).ports;
    };
    type Rates = { rates: number[]; errors: number };
    const connrates = async (ports: number[]): Promise<Record<string, Rates>> => {
      const sliceMs = Math.round(p.connMaxMs / p.connSlices);
      const w = procs.spawn(
        'connrate',
        wcmd,
        [...wargs, 'connrates', `ports=${ports.join(',')}`, `sliceMs=${sliceMs}`, `slices=${p.connSlices}`, `concurrency=${p.connConcurrency}`],
        { logFile: join(tmp, 'connrate.log') },
      );
      return (await w.firstJson<{ ports: Record<string, Rates> }>(ports.length * (p.connMaxMs + 2000) + 15_000)).ports;
    };

    /**
     * One run taken in turn across `order` (its results keyed by each contender's echo port): each
     * contender's result goes to `take`; a missing one, one with an error or a failed run fails
     * that contender's `key`.
     */
    const inTurn = async <R extends object>(
      order: Contender[],
      key: string,
      runAll: (echoPorts: number[]) => Promise<Record<string, R | { error: string }>>,
      take: (c: Contender, r: R) => void,
    ): Promise<void> => {
      try {
        const byPort = await runAll(order.map((c) => ports.get(c.name)!.echo));
        for (const c of order) {
          const r = byPort[ports.get(c.name)!.echo];
          if (r === undefined || 'error' in r) fail(c.name, key, new Error(r === undefined ? 'no result' : r.error));
          else take(c, r);
        }
      } catch (err) {
        for (const c of order) fail(c.name, key, err);
      }
    };

    // Repetitions outermost, contenders rotated within each: drift in machine load is spread
    // over every contender instead of landing on one. Latency and connection rate go further:
    // one run takes its round trips or its bursts in turn across all contenders (workers.ts), so
    // they are measured in the same stretch of time.
    for (let rep = 0; rep < p.reps; rep++) {
      const order = active.map((_, i) => active[(i + rep) % active.length]!);
      if (haveIperf) {
        for (const c of order) {
          const pt = ports.get(c.name)!;
          log(`bench: round ${rep + 1}/${p.reps}: throughput: ${c.name}`);
          for (const [streams, key] of [
            [1, 'throughput1'],
            [8, 'throughput8'],
          ] as const) {
            try {
              record(c.name, key, await iperf(pt.iperf, streams, p.iperfSeconds));
            } catch (err) {
              fail(c.name, key, err);
            }
          }
        }
      }
      log(`bench: round ${rep + 1}/${p.reps}: latency: ${order.map((c) => c.name).join(', ')}, in turn`);
      for (const [size, key] of [
        [1, 'rtt1'],
        [1024, 'rtt1k'],
      ] as const) {
        await inTurn(order, key, (echoPorts) => latency(echoPorts, size), (c, r) => {
          record(c.name, `${key}p50`, r.p50);
          record(c.name, `${key}p99`, r.p99);
        });
      }
      log(`bench: round ${rep + 1}/${p.reps}: connection rate: ${order.map((c) => c.name).join(', ')}, in turn`);
      await inTurn(order, 'connRate', connrates, (c, r) => {
        if (r.errors > 0) log(`bench: ${c.name}: ${r.errors} connections failed during the connection-rate run`);
        for (const rate of r.rates) record(c.name, 'connRate', rate);
      });
    }
    for (const [name, r] of running) {
      await r.stop();
      running.delete(name);
    }

    // Memory: a fresh process per contender (so no earlier run's heap or buffers count), a few
    // warm-up connections, the baseline, then N idle connections held by a separate client process.
    const n = p.idleConnections;
    for (const c of active) {
      if (c.name === 'direct') continue;
      const pt = ports.get(c.name)!;
      log(`bench: memory: ${c.name} holding ${n} idle connections`);
      let r: RunningContender | null = null;
      try {
        const listen = await freePort();
        r = await c.start(procs, [{ listen, upstream: pt.echoUp }], tmp, 'mem');
        const warm = procs.spawn('warmup', wcmd, [...wargs, 'connrate', `port=${listen}`, 'count=50', 'maxMs=2000', 'concurrency=10']);
        await warm.firstJson(15_000);
        await sleep(300);
        const before = r.memoryBytes();
        const holder = procs.spawn('idle', wcmd, [...wargs, 'idle', `port=${listen}`, `count=${n}`, 'batch=100'], { logFile: join(tmp, 'idle.log') });
        const held = await holder.firstJson<{ held: number; failed: number }>(120_000);
        if (held.held !== n) throw new Error(`only ${held.held} of ${n} connections were established (${held.failed} failed)`);
        await sleep(500);
        const after = r.memoryBytes();
        record(c.name, 'memTotal', after / 2 ** 20);
        record(c.name, 'memPerConn', (after - before) / n / 1024);
        results.get(c.name)!.memoryKind = r.memoryKind;
        await holder.stop();
      } catch (err) {
        fail(c.name, 'memory', err);
      } finally {
        await r?.stop();
      }
    }
  } finally {
    await procs.stopAll();
    rmSync(tmp, { recursive: true, force: true });
  }

  for (const r of results.values()) for (const m of Object.values(r.metrics)) m.median = median(m.runs);

  const res: BenchResults = {
    date: new Date().toISOString(),
    quick,
    durationSeconds: Math.round((Date.now() - t0) / 1000),
    machine: {
      nproc: os.availableParallelism(),
      cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
      kernel: `${os.type()} ${os.release()}`,
      node: process.version,
      loadBefore: loadBefore.map((l) => Math.round(l * 100) / 100),
      loadAfter: os.loadavg().map((l) => Math.round(l * 100) / 100),
      proxyCpu: proxyCpu(),
      versions: {
        haproxy: await version('haproxy', ['-v'], /version (\S+)/),
        nginx: await version('nginx', ['-v'], /nginx\/(\S+)/),
        socat: await version('socat', ['-V'], /socat version (\S+)/),
        iperf3: await version('iperf3', ['-v'], /iperf (\S+)/),
      },
    },
    params: p,
    contenders: [...results.values()],
  };
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'results.json'), JSON.stringify(res, null, 2) + '\n');
  writeFileSync(join(outDir, 'RESULTS.md'), renderMarkdown(res));
  return res;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const only = process.env.BENCH_ONLY ? process.env.BENCH_ONLY.split(',') : undefined;
  runBench(only ? { only } : {}).then(
    (res) => {
      process.stdout.write(renderMarkdown(res));
      const failed = res.contenders.some((c) => c.errors.length > 0);
      process.exit(failed ? 1 : 0);
    },
    (err: Error) => {
      process.stderr.write(`bench: ${err.message}\n`);
      process.exit(1);
    },
  );
}
