// What the lab reads from the kernel during a run: the sockets of the app, the sidecar and the
// service (`ss -tanoeip` in both namespaces) and the conntrack entry of the redirected connection
// (`conntrack -L` in the pod), picked out of the raw text by their addresses and the sidecar uid.

import { readConntrack, type ConntrackEntry } from '../kernel/conntrack.js';
import { readSockets, type TcpSocket } from '../kernel/ss.js';
import type { PodTopology } from '../kernel/topology.js';
import { SERVICE_PORT, SIDECAR_PORT, SIDECAR_UID } from './sidecars.js';

/** One socket as the diagram shows it. */
export interface SocketView {
  state: string;
  local: string;
  peer: string;
  /** The `-o` timer, e.g. `keepalive 0.8s #1`. */
  timer?: string;
  /** Who holds it (`haproxy pid 42`); absent for orphans and TIME-WAIT. */
  owner?: string;
}

export interface EntryView {
  state: string;
  /** Seconds left before the kernel drops the entry. */
  timeoutSec: number;
  orig: string;
  reply: string;
}

/** The app's connection as the kernel saw it at one moment, plus the raw text it came from. */
export interface Snapshot {
  /** Milliseconds since the scenario started. */
  atMs: number;
  app: SocketView | null;
  /** The sidecar's socket towards the app (127.0.0.1:15001 <-> app) and towards the service. */
  sidecarDown: SocketView | null;
  sidecarUp: SocketView | null;
  service: SocketView | null;
  /** The redirected connection's conntrack entry in the pod namespace. */
  entry: EntryView | null;
  /** Non-listening sockets a sidecar process holds, any connection (the leak count). */
  sidecarHeld: number;
  raw: { podSs: string; svcSs: string; conntrack: string };
}

/** Ports that identify one connection through the sidecar. */
export interface ConnPorts {
  /** The app's source port. */
  app: number;
  /** The sidecar's source port towards the service (as the service saw it), when known. */
  upstream?: number;
}

function fmtTimer(s: TcpSocket): string | undefined {
  if (!s.timer) return undefined;
  const left = s.timer.expiresMs === null ? '' : ` ${(s.timer.expiresMs / 1000).toFixed(1)}s`;
  return `${s.timer.name}${left}${s.timer.retrans > 0 ? ` #${s.timer.retrans}` : ''}`;
}

function view(s: TcpSocket | undefined): SocketView | null {
  if (!s) return null;
  const v: SocketView = { state: s.state, local: `${s.local.host}:${s.local.port}`, peer: `${s.peer.host}:${s.peer.port}` };
  const timer = fmtTimer(s);
  if (timer) v.timer = timer;
  const o = s.owners[0];
  if (o) v.owner = `${o.name} pid ${o.pid}`;
  return v;
}

/** Sockets a sidecar process holds (not listening, not orphaned, not TIME-WAIT). */
export function heldBySidecar(sockets: TcpSocket[]): TcpSocket[] {
  return sockets.filter((s) => s.uid === SIDECAR_UID && s.owners.length > 0 && s.state !== 'LISTEN');
}

/** How many non-listening sockets the sidecar holds in the pod namespace right now. */
export async function countHeld(topo: PodTopology): Promise<number> {
  return heldBySidecar((await readSockets({ netns: topo.pod })).sockets).length;
}

function entryView(e: ConntrackEntry | undefined): EntryView | null {
  if (!e) return null;
  const t = (x: ConntrackEntry['orig']): string => `${x.src}:${x.sport}→${x.dst}:${x.dport}`;
  return { state: e.state ?? '?', timeoutSec: e.timeoutSec, orig: t(e.orig), reply: t(e.reply) };
}

/** The conntrack entry of the app's redirected connection, if the kernel still has one. */
export function findEntry(entries: ConntrackEntry[], topo: PodTopology, conn: ConnPorts): ConntrackEntry | undefined {
  return entries.find((e) => e.proto === 'tcp' && e.orig.src === topo.podIp && e.orig.sport === conn.app && e.orig.dport === SERVICE_PORT);
}

/** Reads both namespaces and the pod's conntrack table, and picks out `conn`'s sockets. */
export async function snapshot(topo: PodTopology, conn: ConnPorts | null, t0: number): Promise<Snapshot> {
  const [pod, svc, ct] = await Promise.all([readSockets({ netns: topo.pod }), readSockets({ netns: topo.svc }), readConntrack({ netns: topo.pod })]);
  const live = (s: TcpSocket): boolean => s.state !== 'LISTEN';
  const snap: Snapshot = {
    atMs: Date.now() - t0,
    app: null,
    sidecarDown: null,
    sidecarUp: null,
    service: null,
    entry: null,
    sidecarHeld: heldBySidecar(pod.sockets).length,
    raw: { podSs: pod.text, svcSs: svc.text, conntrack: ct.text },
  };
  if (conn === null) return snap;
  snap.app = view(pod.sockets.find((s) => live(s) && s.uid === undefined && s.local.port === conn.app && s.peer.port === SERVICE_PORT));
  snap.sidecarDown = view(pod.sockets.find((s) => live(s) && s.local.port === SIDECAR_PORT && s.peer.port === conn.app));
  if (conn.upstream !== undefined) {
    snap.sidecarUp = view(pod.sockets.find((s) => live(s) && s.local.port === conn.upstream && s.peer.port === SERVICE_PORT));
    snap.service = view(svc.sockets.find((s) => live(s) && s.local.port === SERVICE_PORT && s.peer.port === conn.upstream));
  }
  snap.entry = entryView(findEntry(ct.entries, topo, conn));
  return snap;
}
