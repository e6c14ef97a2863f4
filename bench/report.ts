// The benchmark's result shape and its Markdown table: each figure with its ratio to HAProxy, and
// whether halfclose meets the targets of the issue (throughput, connection rate, p99, memory).

export interface Metric {
  /** Median of `runs` (NaN when there was no run). */
  median: number;
  runs: number[];
}

export interface ContenderResult {
  name: string;
  describe: string;
  /** Why it did not run (missing program), or null. */
  skipped: string | null;
  metrics: Record<string, Metric>;
  /** 'rss' (one process) or 'pss-tree' (socat: the listener and its forks). */
  memoryKind?: 'rss' | 'pss-tree';
  errors: string[];
}

export interface BenchResults {
  date: string;
  quick: boolean;
  durationSeconds: number;
  machine: {
    nproc: number;
    cpu: string;
    kernel: string;
    node: string;
    loadBefore: number[];
    loadAfter: number[];
    /** The CPU every proxy process was pinned to (taskset), or null when not pinned. */
    proxyCpu: number | null;
    versions: Record<string, string | null>;
  };
  params: {
    reps: number;
    iperfSeconds: number;
    latencyCount: number;
    connMaxMs: number;
    connSlices: number;
    connConcurrency: number;
    idleConnections: number;
  };
  contenders: ContenderResult[];
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

interface Row {
  key: string;
  label: (r: BenchResults) => string;
  digits: number;
  /** Latency rows show what a proxy adds to the direct round trip; direct shows the round trip. */
  added?: boolean;
}

const ROWS: Row[] = [
  { key: 'throughput1', label: () => 'Throughput, 1 stream (Gbit/s)', digits: 2 },
  { key: 'throughput8', label: () => 'Throughput, 8 streams (Gbit/s)', digits: 2 },
  { key: 'rtt1p50', label: () => 'Added latency, 1 B round trip, p50 (µs)', digits: 1, added: true },
  { key: 'rtt1p99', label: () => 'Added latency, 1 B round trip, p99 (µs)', digits: 1, added: true },
  { key: 'rtt1kp50', label: () => 'Added latency, 1 KiB round trip, p50 (µs)', digits: 1, added: true },
  { key: 'rtt1kp99', label: () => 'Added latency, 1 KiB round trip, p99 (µs)', digits: 1, added: true },
  { key: 'connRate', label: (r) => `Connection rate, ${r.params.connConcurrency} at a time (conn/s)`, digits: 0 },
  { key: 'memTotal', label: (r) => `Memory holding ${r.params.idleConnections.toLocaleString('en')} idle connections (MiB)`, digits: 1 },
  { key: 'memPerConn', label: () => 'Memory per idle connection (KiB)', digits: 2 },
];

function value(r: BenchResults, name: string, key: string, added: boolean): number {
  const c = r.contenders.find((x) => x.name === name);
  const v = c?.metrics[key]?.median ?? NaN;
  if (!added || name === 'direct') return v;
  return v - (r.contenders.find((x) => x.name === 'direct')?.metrics[key]?.median ?? NaN);
}

function fmt(v: number, digits: number): string {
  if (!Number.isFinite(v)) return '–';
  return v.toLocaleString('en', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function cell(r: BenchResults, row: Row, name: string): string {
  const c = r.contenders.find((x) => x.name === name)!;
  if (c.skipped) return 'skipped';
  const v = value(r, name, row.key, row.added === true);
  if (!Number.isFinite(v)) return row.key.startsWith('mem') && name === 'direct' ? '' : '–';
  if (name === 'direct') return row.added ? `${fmt(v, row.digits)} (round trip)` : fmt(v, row.digits);
  const sign = row.added && v >= 0 ? '+' : '';
  // Latency ratios compare whole round trips: added latencies of a few µs sit in the noise, and a
  // ratio of two of them (or of a negative one) says nothing.
  const a = value(r, name, row.key, false);
  const h = value(r, 'haproxy', row.key, false);
  const ratio = name !== 'haproxy' && Number.isFinite(h) && h > 0 && a > 0 ? ` (${(a / h).toFixed(2)}×)` : '';
  return `${sign}${fmt(v, row.digits)}${ratio}`;
}

/** The targets for halfclose against HAProxy, each with the two figures. */
export function targets(r: BenchResults): { what: string; met: boolean | null; detail: string }[] {
  const hc = (k: string, added = false): number => value(r, 'halfclose', k, added);
  const hp = (k: string, added = false): number => value(r, 'haproxy', k, added);
  const out: { what: string; met: boolean | null; detail: string }[] = [];
  const check = (what: string, a: number, b: number, ok: (a: number, b: number) => boolean, digits: number): void => {
    const known = Number.isFinite(a) && Number.isFinite(b);
    out.push({ what, met: known ? ok(a, b) : null, detail: `halfclose ${fmt(a, digits)}, HAProxy ${fmt(b, digits)}` });
  };
  check('throughput, 1 stream ≥ HAProxy', hc('throughput1'), hp('throughput1'), (a, b) => a >= b, 2);
  check('throughput, 8 streams ≥ HAProxy', hc('throughput8'), hp('throughput8'), (a, b) => a >= b, 2);
  check('connection rate ≥ HAProxy', hc('connRate'), hp('connRate'), (a, b) => a >= b, 0);
  check('added p99, 1 B ≤ HAProxy', hc('rtt1p99', true), hp('rtt1p99', true), (a, b) => a <= b, 1);
  check('added p99, 1 KiB ≤ HAProxy', hc('rtt1kp99', true), hp('rtt1kp99', true), (a, b) => a <= b, 1);
  check('memory per idle connection ≤ 2× HAProxy', hc('memPerConn'), hp('memPerConn'), (a, b) => a <= 2 * b, 2);
  return out;
}

export function renderMarkdown(r: BenchResults): string {
  const names = r.contenders.map((c) => c.name);
  const m = r.machine;
  const lines: string[] = [];
  lines.push(`# halfclose benchmark${r.quick ? ' (quick run: BENCH_QUICK=1, figures not meaningful)' : ''}`);
  lines.push('');
  lines.push(`${r.date} · ${m.nproc} CPUs (${m.cpu}) · ${m.kernel} · Node ${m.node} · load average ${m.loadBefore.join(' ')} before, ${m.loadAfter.join(' ')} after · ${r.durationSeconds} s`);
  const v = Object.entries(m.versions)
    .map(([k, x]) => `${k} ${x ?? 'missing'}`)
    .join(', ');
  lines.push('');
  const pin = m.proxyCpu === null ? 'not pinned (taskset missing or one CPU)' : `pinned with taskset to CPU ${m.proxyCpu}, threads and forks included`;
  lines.push(
    `Everything on 127.0.0.1. **Per core:** each proxy gets one core's worth of workers (HAProxy nbthread 1, nginx worker_processes 1, halfclose its event loop and its splice worker thread, socat a forked process per connection) and each proxy process is ${pin}. Clients (iperf3, the latency and connection-rate programs) and upstreams (iperf3 -s, a Node echo server) are separate processes, not pinned, sharing the machine's ${m.nproc} CPUs. ${v}.`,
  );
  lines.push('');
  lines.push(
    `Medians of ${r.params.reps} repetition(s): iperf3 ${r.params.iperfSeconds} s per run; ${r.params.latencyCount} round trips per contender in each latency run, in blocks of 500 taken in turn across the contenders; connection rate in ${r.params.connSlices} burst(s) of ${r.params.connMaxMs / r.params.connSlices / 1000} s per contender in each repetition, taken in turn across the contenders (the median is of every burst); memory with ${r.params.idleConnections} idle connections in a fresh process (halfclose, HAProxy, nginx: RSS; socat: PSS of its process tree). Ratios are to HAProxy (higher is better for throughput and rate, lower for latency and memory); added latency is the proxy's round trip minus the direct one, so it can come out slightly negative when a median lands in the noise, and its ratio is that of the whole round trips. Every run's figure is in results.json.`,
  );
  lines.push('');
  lines.push(`| | ${names.join(' | ')} |`);
  lines.push(`|---|${names.map(() => '---:').join('|')}|`);
  for (const row of ROWS) lines.push(`| ${row.label(r)} | ${names.map((n) => cell(r, row, n)).join(' | ')} |`);
  lines.push('');
  if (names.includes('halfclose') && names.includes('haproxy')) {
    lines.push('Targets (halfclose against HAProxy):');
    lines.push('');
    for (const t of targets(r)) lines.push(`- ${t.met === null ? 'not measured' : t.met ? 'met' : 'NOT met'}: ${t.what} — ${t.detail}`);
    lines.push('');
  }
  for (const c of r.contenders) {
    if (c.skipped) lines.push(`- ${c.name} skipped: ${c.skipped}`);
    for (const e of c.errors) lines.push(`- ${c.name} error: ${e}`);
  }
  lines.push('');
  lines.push('Contenders:');
  lines.push('');
  for (const c of r.contenders) lines.push(`- ${c.name}: ${c.describe}`);
  lines.push('');
  return lines.join('\n');
}
