// How scan reports are shown: a table readable at a glance, JSON for tools, and a Prometheus text
// exposition for node_exporter's textfile collector (through prom-client, not by hand).

import { Gauge, Registry } from 'prom-client';
import { showAge, type Finding, type ScanReport, type SocketView } from './analyze.js';

export const FORMATS = ['table', 'json', 'prometheus'] as const;
export type Format = (typeof FORMATS)[number];

const n = (count: number, word: string): string => `${count} ${word}${count === 1 ? '' : 's'}`;

function proc(s: SocketView): string {
  return s.process ? `${s.process.name} pid ${s.process.pid} fd ${s.process.fd}` : 'owner unknown';
}

function sockLine(s: SocketView): string {
  const parts = [s.state.padEnd(10), `${s.local} -> ${s.peer}`.padEnd(44), proc(s).padEnd(24), `idle ${showAge(s.idleMs)}`];
  if (s.timer) parts.push(`timer ${s.timer}`);
  return parts.join('  ').trimEnd();
}

function findingBlock(f: Finding): string[] {
  const out = [`  ${sockLine(f.downstream)}`];
  if (f.upstream) out.push(`  ${sockLine(f.upstream)}`);
  out.push(`    why: ${f.explanation}`);
  out.push(`    partner: ${f.pairingNote}`);
  if (f.conntrack) out.push(`    conntrack: ${f.conntrack.state ?? '-'}, expires in ${f.conntrack.timeoutSec}s, original destination ${f.conntrack.originalDst}`);
  if (f.app.socket) out.push(`    app socket: ${f.app.socket.state} ${f.app.socket.local} -> ${f.app.socket.peer} (${proc(f.app.socket)})`);
  return out;
}

/** The verdict line every table ends with. */
export function verdictLine(r: ScanReport): string {
  const s = r.summary;
  if (s.leakedConnections > 0) {
    return `LEAK: ${n(s.leakedSockets, 'leaked socket')} in ${n(s.leakedConnections, 'connection')}, ${s.atRiskConnections} at risk`;
  }
  if (s.atRiskConnections > 0) return `AT RISK: no leak yet, ${n(s.atRiskConnections, 'half-closed connection')} will leak if the app closes late`;
  return `CLEAN: no leaked half-closed connection${s.halfClosedHealthy ? ` (${s.halfClosedHealthy} half-closed, healthy)` : ''}`;
}

export function formatTable(r: ScanReport): string {
  const out: string[] = [`halfclose scan: ${r.where}`];
  const procs = r.sidecar.processes.map((p) => `${p.name} pid ${p.pid}`).join(', ');
  out.push(`sidecar: ${r.sidecar.listeners.length ? `listening on ${r.sidecar.listeners.join(', ')}` : `no listener on ${r.proxyPorts.join(', ')}`}${procs ? ` (${procs})` : ''}`);
  const cw = r.context.closeWaitTimeoutSec;
  out.push(
    `conntrack: ${r.context.conntrack === 'read' ? `${r.context.conntrackEntries} entries` : 'not available'}` +
      (cw !== null ? `; CLOSE_WAIT timeout ${cw}s (an idle half-closed connection loses its entry after that)` : ''),
  );
  const leaked = r.findings.filter((f) => f.verdict === 'leaked');
  const risk = r.findings.filter((f) => f.verdict === 'at-risk');
  if (leaked.length) {
    out.push('', `LEAKED (${n(r.summary.leakedSockets, 'socket')}, ${n(leaked.length, 'connection')}): these will never finish`);
    for (const f of leaked) out.push(...findingBlock(f));
  }
  if (risk.length) {
    out.push('', `AT RISK (${n(risk.length, 'connection')}): half-closed, conntrack entry about to expire`);
    for (const f of risk) out.push(...findingBlock(f));
  }
  if (r.portHazards.length) {
    out.push('', 'PORT HAZARD: app ports a new connection must not reuse');
    for (const h of r.portHazards) out.push(`  ${h.app.padEnd(24)} ${h.explanation}`);
  }
  const counters = Object.entries(r.context.counters);
  if (counters.length) {
    out.push('', `counters: ${counters.map(([k, v]) => `${k} ${v}`).join(', ')} (challenge ACKs: SYNs from reused ports that hit a stale socket)`);
  }
  if (r.notes.length) {
    out.push('', 'notes:');
    for (const n of r.notes) out.push(`  - ${n}`);
  }
  out.push('', verdictLine(r));
  return out.join('\n') + '\n';
}

/** The `netns` label value: the namespace's name without the `netns ` prefix. */
export function netnsLabel(r: ScanReport): string {
  return r.where.replace(/^netns /, '');
}

export async function formatPrometheus(reports: ScanReport[]): Promise<string> {
  const registry = new Registry();
  const sockets = new Gauge({
    name: 'halfclose_scan_leaked_sockets',
    help: 'Sidecar sockets in a leaked half-closed connection (FIN-WAIT-2 towards the app, CLOSE-WAIT towards the upstream), by namespace, owning process and state.',
    labelNames: ['netns', 'process', 'state'],
    registers: [registry],
  });
  const conns = new Gauge({ name: 'halfclose_scan_leaked_connections', help: 'Leaked half-closed connections found by the last scan.', labelNames: ['netns'], registers: [registry] });
  const risk = new Gauge({ name: 'halfclose_scan_at_risk_connections', help: 'Half-closed connections whose conntrack entry will expire before anything refreshes it.', labelNames: ['netns'], registers: [registry] });
  const ports = new Gauge({ name: 'halfclose_scan_port_hazards', help: 'App ports held by leaked sockets; a new connection from one of them times out.', labelNames: ['netns'], registers: [registry] });
  const cw = new Gauge({ name: 'halfclose_scan_conntrack_close_wait_timeout_seconds', help: 'nf_conntrack_tcp_timeout_close_wait of the namespace.', labelNames: ['netns'], registers: [registry] });
  const counters = new Gauge({ name: 'halfclose_scan_tcp_counter', help: 'TCP counters of the namespace that relate to stale sockets (/proc/net/netstat), by name.', labelNames: ['netns', 'counter'], registers: [registry] });
  for (const r of reports) {
    const netns = netnsLabel(r);
    conns.set({ netns }, r.summary.leakedConnections);
    risk.set({ netns }, r.summary.atRiskConnections);
    ports.set({ netns }, r.portHazards.length);
    if (r.context.closeWaitTimeoutSec !== null) cw.set({ netns }, r.context.closeWaitTimeoutSec);
    for (const [counter, v] of Object.entries(r.context.counters)) counters.set({ netns, counter }, v);
    for (const f of r.findings) {
      if (f.verdict !== 'leaked') continue;
      for (const s of [f.downstream, f.upstream]) {
        if (s) sockets.inc({ netns, process: s.process?.name ?? 'unknown', state: s.state });
      }
    }
  }
  return registry.metrics();
}

export function formatJson(reports: ScanReport[], many: boolean): string {
  return JSON.stringify(many ? { namespaces: reports } : reports[0], null, 2) + '\n';
}

/** A finding's identity across rescans: its downstream socket. */
export function findingKey(f: Finding): string {
  return `${f.downstream.local}>${f.downstream.peer}`;
}

/** What changed between two scans of the same namespaces, one line per change (for --watch). */
export function formatChanges(before: ScanReport[], after: ScanReport[]): string[] {
  const index = (rs: ScanReport[]): Map<string, Finding> => {
    const m = new Map<string, Finding>();
    for (const r of rs) for (const f of r.findings) m.set(`${r.where}|${findingKey(f)}`, f);
    return m;
  };
  const a = index(before);
  const b = index(after);
  const lines: string[] = [];
  const show = (k: string, f: Finding): string => `${k.split('|')[0]}: ${f.downstream.local} -> ${f.downstream.peer}`;
  for (const [k, f] of b) {
    const old = a.get(k);
    if (!old) lines.push(`+ ${f.verdict} ${show(k, f)} (${f.reason})`);
    else if (old.verdict !== f.verdict) lines.push(`~ ${old.verdict} -> ${f.verdict} ${show(k, f)} (${f.reason})`);
  }
  for (const [k, f] of a) if (!b.has(k)) lines.push(`- gone ${show(k, f)} (was ${f.verdict})`);
  return lines;
}
