// The scanner's judgement, a pure function of one namespace's sockets and conntrack table: which
// half-closed sidecar sockets can never finish (leaked), which will become so (at risk), and which
// app ports they poison. No I/O here, so every verdict is testable against captured fixtures.

import type { ConntrackEntry } from '../kernel/conntrack.js';
import { endpointKey, hostKey, showHostPort } from '../kernel/inet.js';
import type { ParseProblem } from '../kernel/ss.js';
import type { TcpSocket } from '../kernel/ss.js';

/** The sidecar's listener ports: Istio's outbound and inbound capture ports. */
export const DEFAULT_PROXY_PORTS = [15001, 15006] as const;

/** Two half-closed sockets whose last activity lies further apart than this are not one connection. */
export const PAIR_TOLERANCE_MS = 2000;
/** Two candidates whose distance in time differs by less than this are equally likely partners. */
export const PAIR_AMBIGUITY_MS = 100;

export interface ScanInput {
  /** Where the data comes from: `netns pod`, `pid 42`, `files ss.txt, ct.txt`. */
  where: string;
  sockets: TcpSocket[];
  /** The conntrack table; null when it could not be read (then only the app's socket can tell). */
  conntrack: ConntrackEntry[] | null;
  /** `nf_conntrack_tcp_timeout_close_wait` of the namespace, when known. */
  closeWaitTimeoutSec: number | null;
  /** /proc/net/netstat counters (TcpExtTCPChallengeACK …); empty when unknown. */
  counters: Record<string, number>;
  /** Lines the parsers skipped, with the input they came from. */
  problems: (ParseProblem & { source: string })[];
  /** Listener ports that identify the sidecar. Default 15001 and 15006. */
  proxyPorts?: readonly number[];
  /** Why the conntrack table is missing, when it is. */
  conntrackNote?: string;
}

/** A socket as a finding shows it. */
export interface SocketView {
  state: string;
  local: string;
  peer: string;
  process: { name: string; pid: number; fd: number } | null;
  /** Milliseconds since the socket last sent, received or was acked (`ss -i`); null when not captured. */
  idleMs: number | null;
  timer: string | null;
  /** Line of the ss input. */
  line: number;
}

export type Verdict = 'leaked' | 'at-risk';
export type FindingReason = 'conntrack-entry-gone' | 'app-socket-gone' | 'conntrack-expiring';
/** How the upstream partner was found: by the original destination, by owner and timing, by owner alone, or not at all. */
export type Pairing = 'original-destination' | 'owner-and-timing' | 'owner' | 'unpaired';

export interface Finding {
  verdict: Verdict;
  reason: FindingReason;
  /** One sentence in plain words. */
  explanation: string;
  /** The sidecar's socket towards the application, in FIN-WAIT-2. */
  downstream: SocketView;
  /** The sidecar's CLOSE-WAIT socket towards the upstream, when it could be paired. */
  upstream: SocketView | null;
  pairing: Pairing;
  pairingNote: string;
  /** The application's end of the connection (the downstream socket's peer). */
  app: { endpoint: string; socket: SocketView | null; inThisNamespace: boolean };
  conntrack: { state: string | null; timeoutSec: number; originalDst: string } | null;
}

export interface PortHazard {
  /** The app's `host:port` that a new connection must not reuse. */
  app: string;
  heldBy: string;
  explanation: string;
}

export interface ScanReport {
  where: string;
  proxyPorts: number[];
  sidecar: { listeners: string[]; processes: { name: string; pid: number }[] };
  findings: Finding[];
  portHazards: PortHazard[];
  summary: {
    /** Sockets (downstream plus paired upstream) in leaked findings. */
    leakedSockets: number;
    leakedConnections: number;
    atRiskConnections: number;
    /** Half-closed sidecar connections that will finish normally (conntrack entry alive and refreshed, app socket present). */
    halfClosedHealthy: number;
    /** Half-closed sidecar connections with neither a conntrack table nor the app's socket to judge by. */
    unjudged: number;
  };
  context: {
    closeWaitTimeoutSec: number | null;
    counters: Record<string, number>;
    conntrack: 'read' | 'unavailable';
    conntrackEntries: number;
  };
  /** Plain-language remarks: skipped lines, missing data, what could not be decided. */
  notes: string[];
}

const HALF_CLOSED_APP_STATES = new Set(['CLOSE-WAIT', 'ESTAB', 'LAST-ACK', 'CLOSING', 'FIN-WAIT-1', 'FIN-WAIT-2']);

function idleOf(s: TcpSocket): number | null {
  const v = [s.lastsndMs, s.lastrcvMs, s.lastackMs].filter((x): x is number => x !== undefined);
  return v.length ? Math.min(...v) : null;
}

function view(s: TcpSocket): SocketView {
  const o = s.owners[0];
  return {
    state: s.state,
    local: showHostPort(s.local),
    peer: showHostPort(s.peer),
    process: o ? { name: o.name, pid: o.pid, fd: o.fd } : null,
    idleMs: idleOf(s),
    timer: s.timer ? `${s.timer.name}${s.timer.expiresMs !== null ? ` ${Math.round(s.timer.expiresMs / 100) / 10}s` : ''}` : null,
    line: s.line,
  };
}

const key = (e: { host: string; port: number }): string => endpointKey(e.host, e.port);

/** Human duration: 850ms, 12s, 4m05s, 1h02m. */
export function showAge(ms: number | null): string {
  if (ms === null) return 'unknown';
  if (ms < 1000) return `${ms}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** The conntrack entry of a socket: the REDIRECT reply tuple (replies come from the listener), or a plain un-NATed one. */
function entryOf(sock: TcpSocket, entries: ConntrackEntry[]): ConntrackEntry | null {
  const local = key(sock.local);
  const peer = key(sock.peer);
  for (const e of entries) {
    if (e.proto !== 'tcp') continue;
    if (endpointKey(e.reply.src, e.reply.sport) === local && endpointKey(e.reply.dst, e.reply.dport) === peer) return e;
    if (endpointKey(e.orig.src, e.orig.sport) === peer && endpointKey(e.orig.dst, e.orig.dport) === local) return e;
  }
  return null;
}

/** Judges one namespace. */
export function analyze(input: ScanInput): ScanReport {
  const proxyPorts = [...(input.proxyPorts ?? DEFAULT_PROXY_PORTS)];
  const portSet = new Set(proxyPorts);
  const notes: string[] = [];
  const socks = input.sockets;
  const haveOwners = socks.some((s) => s.owners.length > 0);
  // Only connected sockets a process holds carry lastsnd/lastrcv/lastack; LISTEN and TIME-WAIT never do.
  const timed = socks.filter((s) => s.state !== 'LISTEN' && s.state !== 'TIME-WAIT');
  const haveIdle = timed.some((s) => idleOf(s) !== null);

  const listeners = socks.filter((s) => s.state === 'LISTEN' && portSet.has(s.local.port));
  const sidecarPids = new Map<number, string>();
  for (const l of listeners) for (const o of l.owners) sidecarPids.set(o.pid, o.name);
  if (listeners.length === 0) notes.push(`no listener on port ${proxyPorts.join(' or ')}: no sidecar found by its ports (use --proxy-ports)`);
  if (!haveOwners && socks.length > 0) notes.push('the ss input shows no owning processes (capture with ss -p, as root): sockets are paired without owners');
  if (!haveIdle && timed.length > 0) notes.push('the ss input has no -i detail (lastsnd/lastrcv/lastack): ages are unknown and pairing cannot use timing');
  if (input.conntrack === null) notes.push(`no conntrack table${input.conntrackNote ? ` (${input.conntrackNote})` : ''}: a connection is judged only by whether the app's socket still exists`);

  // Every local endpoint in the namespace, and every local host: the app's socket, if it lives here, is one of them.
  const byLocal = new Map<string, TcpSocket[]>();
  const localHosts = new Set<string>();
  for (const s of socks) {
    if (s.state === 'LISTEN') {
      if (s.local.host !== '*' && !/^(0\.0\.0\.0|::)$/.test(s.local.host)) localHosts.add(hostKey(s.local.host));
      continue;
    }
    const k = key(s.local);
    byLocal.set(k, [...(byLocal.get(k) ?? []), s]);
    localHosts.add(hostKey(s.local.host));
  }
  const isLoopback = (h: string): boolean => hostKey(h).startsWith('127.') || h === '::1';

  // The sidecar's downstream sockets: a proxy port on the local side, an app on the other.
  const downstream = socks.filter((s) => s.state !== 'LISTEN' && portSet.has(s.local.port));
  const appEndpoints = new Set(downstream.map((s) => key(s.peer)));
  // Upstream candidates: the sidecar's CLOSE-WAIT sockets that are not downstream and are not the app's own socket.
  const upstreamPool = socks.filter(
    (s) =>
      s.state === 'CLOSE-WAIT' &&
      !portSet.has(s.local.port) &&
      !appEndpoints.has(key(s.local)) &&
      (!haveOwners || sidecarPids.size === 0 || s.owners.some((o) => sidecarPids.has(o.pid))),
  );
  const used = new Set<TcpSocket>();

  const findings: Finding[] = [];
  let healthy = 0;
  let unjudged = 0;
  let orphans = 0;
  for (const d of downstream) {
    if (d.state !== 'FIN-WAIT-2') continue;
    if (d.inode === 0 || (haveOwners && d.owners.length === 0)) {
      // Closed by its process: the kernel reaps an orphaned FIN-WAIT-2 after tcp_fin_timeout.
      orphans++;
      continue;
    }
    const entry = input.conntrack ? entryOf(d, input.conntrack) : null;
    const appInNs = localHosts.has(hostKey(d.peer.host)) || isLoopback(d.peer.host);
    const appSock = (byLocal.get(key(d.peer)) ?? []).find((s) => HALF_CLOSED_APP_STATES.has(s.state) && key(s.peer) !== key(d.local)) ?? null;
    const app = { endpoint: showHostPort(d.peer), socket: appSock ? view(appSock) : null, inThisNamespace: appInNs };
    const ct = entry ? { state: entry.state ?? null, timeoutSec: entry.timeoutSec, originalDst: showHostPort({ host: entry.orig.dst, port: entry.orig.dport }) } : null;
    const idle = showAge(idleOf(d));

    let verdict: Verdict | null = null;
    let reason: FindingReason | null = null;
    let explanation = '';
    if (input.conntrack !== null && !entry) {
      verdict = 'leaked';
      reason = 'conntrack-entry-gone';
      explanation = `the sidecar closed its side towards the app ${app.endpoint} (idle ${idle}) but the conntrack entry is gone, so the app's FIN will never be un-NATed back to ${showHostPort(d.local)}: this socket and its partner stay until the proxy's idle timeout`;
    } else if (appInNs && !appSock) {
      verdict = 'leaked';
      reason = 'app-socket-gone';
      explanation = `the app's socket ${app.endpoint} no longer exists, yet the sidecar still waits for its FIN (idle ${idle}): nothing will ever close this pair before the proxy's idle timeout`;
    } else if (entry && entry.state === 'CLOSE_WAIT') {
      const ka = d.timer?.name === 'keepalive' && d.timer.expiresMs !== null && d.timer.expiresMs / 1000 < entry.timeoutSec;
      if (ka) {
        healthy++;
      } else {
        verdict = 'at-risk';
        reason = 'conntrack-expiring';
        explanation = `half-closed towards the app ${app.endpoint} (idle ${idle}); its conntrack entry is CLOSE_WAIT and expires in ${entry.timeoutSec}s with no keepalive to refresh it: if the app closes after that, its FIN is lost and this becomes a leak`;
      }
    } else if (input.conntrack === null && !appInNs) {
      unjudged++;
    } else {
      healthy++;
    }
    if (!verdict || !reason) continue;

    // The partner: same owner, towards the original destination when known, else closest in time.
    const pid = d.owners[0]?.pid;
    const cands = upstreamPool.filter((u) => !used.has(u) && (pid === undefined || u.owners.length === 0 || u.owners.some((o) => o.pid === pid)));
    const dest = appSock ? key(appSock.peer) : entry ? endpointKey(entry.orig.dst, entry.orig.dport) : null;
    let partner: TcpSocket | null = null;
    let pairing: Pairing = 'unpaired';
    let pairingNote = '';
    const dIdle = idleOf(d);
    // Candidates ranked by how close their last activity is to the downstream socket's.
    const ranked = (xs: TcpSocket[]): { u: TcpSocket; gap: number }[] =>
      dIdle === null
        ? []
        : xs
            .filter((u) => idleOf(u) !== null)
            .map((u) => ({ u, gap: Math.abs(idleOf(u)! - dIdle) }))
            .sort((a, b) => a.gap - b.gap);
    const doubt = (r: { gap: number }[]): string =>
      r.length > 1 && r[1]!.gap - r[0]!.gap < PAIR_AMBIGUITY_MS
        ? `; uncertain: another candidate is ${r[1]!.gap}ms apart, as close, so the two may be swapped`
        : '';
    const owner = pid !== undefined ? `, owner pid ${pid}` : '';
    const toDest = dest ? cands.filter((u) => key(u.peer) === dest) : [];
    const destText = dest ? showHostPort(toDest[0]?.peer ?? { host: '', port: 0 }) : '';
    if (toDest.length === 1) {
      partner = toDest[0]!;
      pairing = 'original-destination';
      pairingNote = `paired by the original destination ${destText}${owner}`;
    } else if (toDest.length > 1) {
      const r = ranked(toDest);
      if (r.length > 0 && r[0]!.gap <= PAIR_TOLERANCE_MS) {
        partner = r[0]!.u;
        pairing = 'original-destination';
        pairingNote = `paired by the original destination ${destText}${owner} and timing (last activity ${r[0]!.gap}ms apart)${doubt(r)}`;
      } else {
        pairingNote = `${toDest.length} CLOSE-WAIT sockets of the same process go to the original destination ${destText}; the data cannot tell which is its partner (capture with ss -i for timing)`;
      }
    } else {
      const r = ranked(cands);
      if (r.length > 0 && r[0]!.gap <= PAIR_TOLERANCE_MS) {
        partner = r[0]!.u;
        pairing = 'owner-and-timing';
        pairingNote = `paired by owner${pid !== undefined ? ` pid ${pid}` : ''} and timing (last activity ${r[0]!.gap}ms apart)${doubt(r)}`;
      } else if (cands.length === 1) {
        partner = cands[0]!;
        pairing = 'owner';
        pairingNote =
          pid !== undefined
            ? `paired by owner pid ${pid} only (the only CLOSE-WAIT socket it holds; no timing to confirm)`
            : "paired by elimination: the only other CLOSE-WAIT socket that is not the app's (no owners or timing to confirm)";
      } else {
        pairingNote =
          cands.length === 0
            ? 'no CLOSE-WAIT upstream socket of the same process found'
            : `${cands.length} CLOSE-WAIT upstream sockets of the same process could be its partner; the data cannot tell which (capture with ss -i for timing)`;
      }
    }
    if (partner) used.add(partner);
    findings.push({ verdict, reason, explanation, downstream: view(d), upstream: partner ? view(partner) : null, pairing, pairingNote, app, conntrack: ct });
  }

  // CLOSE-WAIT sockets of the sidecar that no downstream socket of it could still pair with: the
  // proxy dropped the app side but kept the upstream open. A one-sided leak this scan cannot tie
  // to a connection, so it is a note, not a finding (and does not change the exit status).
  if (haveOwners && sidecarPids.size > 0) {
    const freeUp = upstreamPool.filter((u) => !used.has(u) && u.owners.some((o) => sidecarPids.has(o.pid)));
    const findingDown = new Set(findings.map((f) => f.downstream.line));
    const freeDown = downstream.filter((d) => d.owners.some((o) => sidecarPids.has(o.pid)) && !findingDown.has(d.line)).length;
    const stray = freeUp.length - freeDown;
    if (stray > 0) {
      const shown = freeUp
        .slice()
        .sort((a, b) => (idleOf(b) ?? 0) - (idleOf(a) ?? 0))
        .slice(0, stray)
        .map((u) => `${showHostPort(u.local)} -> ${showHostPort(u.peer)}`);
      notes.push(
        `${stray} CLOSE-WAIT socket(s) of the sidecar have no socket towards the app left to pair with (${shown.slice(0, 5).join(', ')}${shown.length > 5 ? ', …' : ''}): either the proxy dropped the app side of a connection without closing this one, or it is a connection of the proxy's own (control plane, health check) it never closed`,
      );
    }
  }
  if (orphans > 0) notes.push(`${orphans} FIN-WAIT-2 socket(s) on the proxy ports have no owner: the kernel removes those after tcp_fin_timeout, not a leak`);
  if (unjudged > 0) notes.push(`${unjudged} half-closed sidecar connection(s) could not be judged: no conntrack table and the app is not in this namespace`);
  for (const p of input.problems.slice(0, 20)) notes.push(`${p.source} line ${p.line} skipped: ${p.why}`);
  if (input.problems.length > 20) notes.push(`… and ${input.problems.length - 20} more skipped lines`);

  const portHazards: PortHazard[] = [];
  const seen = new Set<string>();
  for (const f of findings) {
    if (f.verdict !== 'leaked' || seen.has(f.app.endpoint)) continue;
    seen.add(f.app.endpoint);
    portHazards.push({
      app: f.app.endpoint,
      heldBy: f.downstream.local,
      explanation: `a new connection from ${f.app.endpoint} is redirected onto the stale FIN-WAIT-2 socket ${f.downstream.local} and gets a challenge ACK instead of a SYN-ACK: the app's RST then clears it and the connect is delayed, or, where conntrack marks that RST INVALID (older kernels), the app sees a connect timeout`,
    });
  }

  const leaked = findings.filter((f) => f.verdict === 'leaked');
  return {
    where: input.where,
    proxyPorts,
    sidecar: {
      listeners: listeners.map((l) => showHostPort(l.local)),
      processes: [...sidecarPids].map(([pid, name]) => ({ name, pid })),
    },
    findings,
    portHazards,
    summary: {
      leakedSockets: leaked.reduce((n, f) => n + 1 + (f.upstream ? 1 : 0), 0),
      leakedConnections: leaked.length,
      atRiskConnections: findings.length - leaked.length,
      halfClosedHealthy: healthy,
      unjudged,
    },
    context: {
      closeWaitTimeoutSec: input.closeWaitTimeoutSec,
      counters: input.counters,
      conntrack: input.conntrack === null ? 'unavailable' : 'read',
      conntrackEntries: input.conntrack?.length ?? 0,
    },
    notes,
  };
}
