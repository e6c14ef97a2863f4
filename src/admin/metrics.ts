// Prometheus metrics for the proxy (docs/metrics.md lists each one): a ProxyObserver that counts
// accepts and closes as they happen, plus values computed from the live registry at scrape time.
// It has its own prom-client Registry so two proxies in one process (tests) never share counters.

import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { KeepaliveSettings } from '../kernel/sockopt.js';
import type { GuardStatus } from '../proxy/guard.js';
import type { Proxy, ProxyObserver } from '../proxy/proxy.js';
import { formatEndpoint } from '../util/address.js';
import { CLOSE_REASONS, type Connection, type ConnectionState } from '../proxy/registry.js';

/** How often the event-loop delay histogram samples (prom-client's eventLoopMonitoringPrecision). */
const EVENT_LOOP_SAMPLE_MS = 100;

/** The states counted by halfclose_connections_active; every live connection is in exactly one. */
export const ACTIVE_STATES = ['connecting', 'open', 'half-closed-client', 'half-closed-server', 'closing'] as const satisfies readonly ConnectionState[];
export const DIRECTIONS = ['client-to-server', 'server-to-client'] as const;

/** The guard's decision, or null for a proxy built without one (never the case for the CLI's). */
export function readGuardStatus(proxy: Proxy): GuardStatus | null {
  return (proxy.guard as Proxy['guard'] | undefined)?.status() ?? null;
}

export interface MetricsOptions {
  /** Also export prom-client's default process and Node.js metrics (process_*, nodejs_*). Default true. */
  processMetrics?: boolean;
}

/** JSON the live page polls: the same numbers /metrics exposes, summed over listeners. */
export interface Stats {
  time: string;
  startedAt: string;
  draining: boolean;
  listeners: { name: string; kind: string; address: string }[];
  acceptedByListener: Record<string, number>;
  activeByState: Record<string, number>;
  closedByReason: Record<string, number>;
  bytesByDirection: Record<string, number>;
  halfCloseDurations: { count: number; sumSeconds: number };
  guard: GuardStatus | null;
}

/**
 * One histogram's counts for one listener, kept in plain numbers: a connection's observation is a
 * few additions, where prom-client's observe() validated and hashed the labels each time (with
 * its counters' inc(), about 4.5 µs of the main thread's 16 per short connection, bench/books-cost).
 */
class Tally {
  /** Observations per bucket (not cumulative), by upper bound; above the last bound they count only in count and sum. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    if (i < b.length) this.counts[i]!++;
    this.sum += v;
    this.count++;
  }
}

/**
 * A histogram per listener counted in Tallies and read by prom-client's registry at scrape time:
 * it has the shape of a prom-client metric (name, help, type, get(), reset()), so the exposition
 * is prom-client's own, bucket for bucket, as a Histogram's would be.
 */
class TallyHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly tallies = new Map<string, Tally>();
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
    listeners: readonly string[],
    registry: Registry,
  ) {
    for (const l of listeners) this.of(l);
    registry.registerMetric(this as unknown as Metric);
  }
  of(listener: string): Tally {
    let t = this.tallies.get(listener);
    if (t === undefined) {
      t = new Tally(this.bounds);
      this.tallies.set(listener, t);
    }
    return t;
  }
  reset(): void {
    for (const t of this.tallies.values()) {
      t.counts.fill(0);
      t.sum = t.count = 0;
    }
  }
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] }> {
    const values = [];
    for (const [listener, t] of this.tallies) {
      let acc = 0;
      for (let i = 0; i < t.bounds.length; i++) {
        acc += t.counts[i]!;
        values.push({ labels: { le: t.bounds[i]!, listener }, value: acc, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { le: '+Inf', listener }, value: t.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { listener }, value: t.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { listener }, value: t.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/** What each connection adds to, per listener, in plain numbers; the counters read them at scrape time. */
interface ListenerSeries {
  accepted: number;
  /** Closed connections by CLOSE_REASONS index. */
  closed: Float64Array;
  connect: Tally;
  halfClose: Tally;
  /** The same object as closedBytes' entry for the listener. */
  bytes: { c2s: number; s2c: number };
}

const REASON_INDEX = new Map<string, number>(CLOSE_REASONS.map((r, i) => [r, i]));

export class ProxyMetrics implements ProxyObserver {
  readonly registry = new Registry();
  private readonly proxy: Proxy;
  private readonly startedAt = Date.now();
  /** Bytes of connections already closed, per listener and direction; live ones are added at scrape time. */
  private readonly closedBytes = new Map<string, { c2s: number; s2c: number }>();
  private readonly acceptedTotal: Counter<'listener'>;
  private readonly closedTotal: Counter<'listener' | 'reason'>;
  private readonly connectSeconds: TallyHistogram;
  private readonly halfCloseSeconds: TallyHistogram;
  private readonly active: Gauge<'listener' | 'state'>;
  private readonly bytes: Counter<'listener' | 'direction'>;

  constructor(proxy: Proxy, opts: MetricsOptions = {}) {
    this.proxy = proxy;
    const registers = [this.registry];
    const listeners = proxy.config.listeners.map((l) => l.name);
    for (const l of listeners) this.closedBytes.set(l, { c2s: 0, s2c: 0 });
    const self = this;

    // Both counted per connection in ListenerSeries, read here at scrape time.
    this.acceptedTotal = new Counter({
      name: 'halfclose_connections_accepted_total',
      help: 'Client connections accepted, per listener.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const listener of listeners) this.inc({ listener }, 0);
        for (const [listener, s] of self.children) this.inc({ listener }, s.accepted);
      },
    });
    this.closedTotal = new Counter({
      name: 'halfclose_connections_closed_total',
      help: 'Connections ended, per listener and close reason (exactly one reason per connection).',
      labelNames: ['listener', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const listener of listeners) for (const reason of CLOSE_REASONS) this.inc({ listener, reason }, 0);
        for (const [listener, s] of self.children) CLOSE_REASONS.forEach((reason, i) => this.inc({ listener, reason }, s.closed[i]!));
      },
    });
    this.active = new Gauge({
      name: 'halfclose_connections_active',
      help: 'Live connections per listener and state: connecting, open, half-closed-client (client sent FIN), half-closed-server (server sent FIN), closing (both FINs or a reset, sockets not yet closed).',
      labelNames: ['listener', 'state'],
      registers,
      // Counted from the registry at scrape time: exact, and nothing to keep in step on the hot path.
      collect() {
        this.reset();
        for (const l of listeners) for (const state of ACTIVE_STATES) this.set({ listener: l, state }, 0);
        for (const c of self.proxy.registry.all()) {
          const state = c.state;
          if (state !== 'closed') this.inc({ listener: c.listener.name, state });
        }
      },
    });
    this.bytes = new Counter({
      name: 'halfclose_bytes_total',
      help: 'Bytes relayed per listener and direction (client-to-server, server-to-client), live and closed connections.',
      labelNames: ['listener', 'direction'],
      registers,
      // The relay only bumps Direction.bytes; the counter is summed here so relaying does no extra work.
      collect() {
        this.reset();
        const sums = new Map<string, { c2s: number; s2c: number }>();
        for (const [l, b] of self.closedBytes) sums.set(l, { ...b });
        for (const c of self.proxy.registry.all()) {
          const s = sums.get(c.listener.name) ?? { c2s: 0, s2c: 0 };
          s.c2s += c.c2s.bytes;
          s.s2c += c.s2c.bytes;
          sums.set(c.listener.name, s);
        }
        for (const [listener, s] of sums) {
          this.inc({ listener, direction: 'client-to-server' }, s.c2s);
          this.inc({ listener, direction: 'server-to-client' }, s.s2c);
        }
      },
    });
    this.connectSeconds = new TallyHistogram(
      'halfclose_upstream_connect_seconds',
      'Time from accepting a client to the upstream connection being established (successful connects only).',
      [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      listeners,
      this.registry,
    );
    this.halfCloseSeconds = new TallyHistogram(
      'halfclose_half_close_duration_seconds',
      'How long closed connections stayed half-closed: from the first FIN to the close.',
      [0.001, 0.01, 0.1, 1, 10, 30, 60, 300, 900, 3600, 14400, 86400],
      listeners,
      this.registry,
    );

    new Gauge({
      name: 'halfclose_relay_connections',
      help: 'Live connected connections per listener and relay: splice (bytes moved by the worker thread with splice(2)) or copy (through the event loop).',
      labelNames: ['listener', 'relay'],
      registers,
      collect() {
        this.reset();
        for (const l of listeners) for (const relay of ['splice', 'copy']) this.set({ listener: l, relay }, 0);
        for (const c of self.proxy.registry.all()) {
          if (!c.connectedAt || c.closedAt) continue;
          this.inc({ listener: c.listener.name, relay: c.offload !== null ? 'splice' : 'copy' });
        }
      },
    });
    new Gauge({
      name: 'halfclose_draining',
      help: '1 while the proxy is draining (no new connections accepted), else 0.',
      registers,
      collect() {
        this.set(self.proxy.isDraining ? 1 : 0);
      },
    });
    new Gauge({
      name: 'halfclose_guard_keepalive_connections',
      help: 'Live connections on which the conntrack guard has turned keepalive on.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const l of listeners) this.set({ listener: l }, 0);
        for (const c of self.proxy.registry.all()) if (c.keepalive !== null) this.inc({ listener: c.listener.name });
      },
    });
    // The guard's view, read on each scrape (it re-reads the sysctl every few seconds). Each gauge
    // has a label so that a value the guard does not have (keepalive off for a phase, CLOSE_WAIT
    // unknown) has no series, rather than a 0 that reads like a setting.
    new Gauge({
      name: 'halfclose_guard_info',
      help: 'Always 1 while the conntrack guard runs; its mode (auto, fixed, off) and where the CLOSE_WAIT timeout came from are labels.',
      labelNames: ['mode', 'source'],
      registers,
      collect() {
        this.reset();
        const g = readGuardStatus(self.proxy);
        if (g) this.set({ mode: g.mode, source: g.source }, 1);
      },
    });
    new Gauge({
      name: 'halfclose_guard_conntrack_close_wait_seconds',
      help: "The conntrack CLOSE_WAIT timeout the guard read (nf_conntrack_tcp_timeout_close_wait); keepalive must stay below it.",
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        const g = readGuardStatus(self.proxy);
        if (g && g.closeWaitSec !== null) this.set({ source: g.source }, g.closeWaitSec);
      },
    });
    const kaGauge = (name: string, help: string, pick: (k: KeepaliveSettings) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['phase'],
        registers,
        collect() {
          this.reset();
          const g = readGuardStatus(self.proxy);
          if (g?.halfClosed) this.set({ phase: 'half-closed' }, pick(g.halfClosed));
          if (g?.established) this.set({ phase: 'established' }, pick(g.established));
        },
      });
    };
    kaGauge('halfclose_guard_keepalive_idle_seconds', 'TCP_KEEPIDLE the guard applies, per phase (half-closed, established); absent when keepalive is off for that phase.', (k) => k.idleSec);
    kaGauge('halfclose_guard_keepalive_interval_seconds', 'TCP_KEEPINTVL the guard applies, per phase.', (k) => k.intervalSec);
    kaGauge('halfclose_guard_keepalive_probes', 'TCP_KEEPCNT (unanswered probes before the connection is declared dead) the guard applies, per phase.', (k) => k.count);
    new Gauge({
      name: 'halfclose_guard_warnings',
      help: 'Number of warnings the guard currently reports (see GET /stats for their text).',
      labelNames: ['mode'],
      registers,
      collect() {
        this.reset();
        const g = readGuardStatus(self.proxy);
        if (g) this.set({ mode: g.mode }, g.warnings.length);
      },
    });

    // The event-loop delay histogram (nodejs_eventloop_lag_p50_seconds and the rest) samples with
    // a timer: prom-client's default of every 10 ms woke an idle proxy 100 times a second, and
    // under load each wake-up preempted the splice worker on a shared core. Every 100 ms still
    // catches any stall longer than that.
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    proxy.observe(this);
  }

  // ProxyObserver: each method is O(1) and runs once per connection or per FIN, never per chunk.

  // The series each connection touches, looked up once per listener (and reason).
  private readonly children = new Map<string, ListenerSeries>();

  private series(listener: string): ListenerSeries {
    let c = this.children.get(listener);
    if (c === undefined) {
      c = {
        accepted: 0,
        closed: new Float64Array(CLOSE_REASONS.length),
        connect: this.connectSeconds.of(listener),
        halfClose: this.halfCloseSeconds.of(listener),
        bytes: this.closedBytes.get(listener) ?? { c2s: 0, s2c: 0 },
      };
      this.closedBytes.set(listener, c.bytes);
      this.children.set(listener, c);
    }
    return c;
  }

  accepted(conn: Connection): void {
    this.series(conn.listener.name).accepted++;
  }

  connected(conn: Connection): void {
    this.series(conn.listener.name).connect.observe(Math.max(0, conn.connectedAt - conn.startedAt) / 1000);
  }

  closed(conn: Connection): void {
    const s = this.series(conn.listener.name);
    s.closed[REASON_INDEX.get(conn.reason ?? 'downstream-error')!]!++;
    s.bytes.c2s += conn.c2s.bytes;
    s.bytes.s2c += conn.s2c.bytes;
    if (conn.halfClosedAt) s.halfClose.observe(Math.max(0, conn.closedAt - conn.halfClosedAt) / 1000);
  }

  /** The Prometheus text exposition. */
  exposition(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The page's numbers, read through the same metric objects as /metrics so the two always agree. */
  async stats(): Promise<Stats> {
    const sumBy = async (m: { get(): Promise<{ values: { labels: Record<string, string | number | undefined>; value: number }[] }> }, label: string) => {
      const out: Record<string, number> = {};
      for (const v of (await m.get()).values) {
        const k = String(v.labels[label]);
        out[k] = (out[k] ?? 0) + v.value;
      }
      return out;
    };
    const hc = (await this.halfCloseSeconds.get()).values;
    return {
      time: new Date().toISOString(),
      startedAt: new Date(this.startedAt).toISOString(),
      draining: this.proxy.isDraining,
      listeners: this.proxy.listeners().map((l) => ({ name: l.name, kind: l.kind, address: formatEndpoint(l.address) })),
      acceptedByListener: await sumBy(this.acceptedTotal, 'listener'),
      activeByState: await sumBy(this.active, 'state'),
      closedByReason: await sumBy(this.closedTotal, 'reason'),
      bytesByDirection: await sumBy(this.bytes, 'direction'),
      halfCloseDurations: {
        count: hc.filter((v) => (v as { metricName?: string }).metricName === 'halfclose_half_close_duration_seconds_count').reduce((a, v) => a + v.value, 0),
        sumSeconds: hc.filter((v) => (v as { metricName?: string }).metricName === 'halfclose_half_close_duration_seconds_sum').reduce((a, v) => a + v.value, 0),
      },
      guard: readGuardStatus(this.proxy),
    };
  }
}
