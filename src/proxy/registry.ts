// The live connections and their per-direction state, and the closed set of reasons a
// connection can end with. Everything the admin API, metrics, access log and guard read.

import type net from 'node:net';
import type { ListenerConfig } from '../config/schema.js';
import type { ClientAddr, Endpoint, OriginalDst, UpstreamAddr } from '../util/address.js';
import { DenseSet } from '../util/dense-set.js';
import { SLOT_ACTIVITY, SLOT_BYTES, SLOT_HELD, SLOT_PAUSED } from './splice-protocol.js';

/** Why a connection ended. Exactly one per connection, logged once and counted once. */
export const CLOSE_REASONS = [
  'both-fin', // both directions finished with a FIN, forwarded
  'downstream-reset', // the client reset (or its socket failed with ECONNRESET / EPIPE)
  'upstream-reset', // the upstream reset
  'downstream-error', // another socket error on the client side
  'upstream-error', // another socket error on the upstream side
  'connect-refused', // the upstream refused the connection (RST to our SYN)
  'connect-timeout', // the upstream did not answer within the connect timeout
  'connect-unreachable', // no route to the upstream (EHOSTUNREACH, ENETUNREACH)
  'connect-error', // any other connect failure
  'no-original-dst', // an original-destination listener got a connection that was not redirected
  'loop-refused', // the original destination is one of our own listeners
  'idle-timeout', // no bytes either way for the idle timeout
  'half-close-timeout', // half-closed and idle for the half-close timeout
  'keepalive-dead', // keepalive probes went unanswered or were answered by a reset (guard)
  'max-duration', // older than the max duration
  'drain', // still open at the end of the drain timeout
] as const;
export type CloseReason = (typeof CLOSE_REASONS)[number];

/** Per direction: open -> fin-received -> fin-forwarded, or reset. */
export type DirectionState = 'open' | 'fin-received' | 'fin-forwarded' | 'reset';

export class Direction {
  state: DirectionState = 'open';
  private ownBytes = 0;
  private ownPaused = false;
  /** While the splice relay moves this direction: its shared counters, and this direction's index in them. */
  private live: Float64Array | null = null;
  private liveAt = 0;
  private pausedAt = 0;
  private pausedBit = 0;
  private heldAt = 0;
  /** Epoch ms of each transition, or 0 when it has not happened. */
  finReceivedAt = 0;
  finForwardedAt = 0;
  resetAt = 0;
  /** Bytes relayed in this direction. */
  get bytes(): number {
    return this.live === null ? this.ownBytes : this.live[this.liveAt]!;
  }
  set bytes(n: number) {
    this.ownBytes = n;
  }
  /** True while reading from the source is paused because the destination is over its buffer limit. */
  get paused(): boolean {
    return this.live === null ? this.ownPaused : (this.live[this.pausedAt]! & this.pausedBit) !== 0;
  }
  set paused(p: boolean) {
    this.ownPaused = p;
  }
  /** Bytes the splice relay holds in this direction's pipe right now; null when the copying relay has it. */
  get held(): number | null {
    return this.live === null ? null : this.live[this.heldAt]!;
  }
  /** Reads bytes, the paused flag (bit `bit` at `pausedAt`) and held bytes from shared counters at these indexes until unfollow(). */
  follow(live: Float64Array, bytesAt: number, pausedAt: number, bit: number, heldAt: number): void {
    this.live = live;
    this.liveAt = bytesAt;
    this.pausedAt = pausedAt;
    this.pausedBit = bit;
    this.heldAt = heldAt;
  }
  unfollow(): void {
    if (this.live === null) return;
    this.unfollowWith(this.live[this.liveAt]!);
  }
  /** Stops following with a final byte count (the splice relay's worker may reuse the slot at once). */
  unfollowWith(bytes: number): void {
    this.ownBytes = bytes;
    this.ownPaused = false;
    this.live = null;
  }
  toJSON(): Record<string, unknown> {
    return {
      state: this.state,
      bytes: this.bytes,
      finReceivedAt: iso(this.finReceivedAt),
      finForwardedAt: iso(this.finForwardedAt),
      resetAt: iso(this.resetAt),
      paused: this.paused,
    };
  }
  /** JSON.stringify(this.toJSON()), written directly (the access log's hot path). */
  toJSONText(): string {
    const tail = this.resetAt === 0 && !this.paused ? NOT_RESET_TAIL : `,"resetAt":${isoJSON(this.resetAt)},"paused":${this.paused}}`;
    return `${STATE_HEAD[this.state]}${this.bytes},"finReceivedAt":${isoJSON(this.finReceivedAt)},"finForwardedAt":${isoJSON(this.finForwardedAt)}${tail}`;
  }
}

// A connection's timestamps (six in each access-log line) fall in few distinct seconds: the text up
// to the second is made once per second and the milliseconds appended, instead of a Date and
// toISOString (a formatted print) per timestamp. Same text as toISOString for years 0-9999.
let isoSecond = NaN;
let isoPrefix = '';
let lastMs = NaN;
let lastIso = '';
const ISO_MAX_MS = 253402300800000; // 10000-01-01
const MILLIS = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(3, '0')}Z`);

export function iso(ms: number): string | null {
  if (!ms) return null;
  if (ms === lastMs) return lastIso;
  if (ms < 0 || ms >= ISO_MAX_MS || !Number.isFinite(ms)) return new Date(ms).toISOString();
  const whole = Math.floor(ms);
  const sec = Math.floor(whole / 1000);
  if (sec !== isoSecond) {
    isoSecond = sec;
    isoPrefix = new Date(sec * 1000).toISOString().slice(0, 20); // "YYYY-MM-DDTHH:MM:SS."
  }
  lastMs = ms;
  lastIso = isoPrefix + MILLIS[whole - sec * 1000]!;
  return lastIso;
}

// The access-log line is built from pieces, and what V8 spends on it goes by their number (each
// join is a string of its own, walked again when the line is encoded): text that repeats from
// line to line (a quoted timestamp, an endpoint's host, a direction's state) is made once, as one
// flat piece, and reused.

/** Makes `s` one flat piece: a joined string is flattened in place by reading a character. */
function flat(s: string): string {
  s.charCodeAt(0);
  return s;
}

const QUOTED_SLOTS = 64;
const quotedMs = new Float64Array(QUOTED_SLOTS).fill(NaN);
const quotedText: string[] = new Array<string>(QUOTED_SLOTS).fill('');

/** A JSON value: a timestamp as iso() text, or null. The last few timestamps' text is kept, by millisecond. */
function isoJSON(ms: number): string {
  if (!ms) return 'null';
  const slot = ms & (QUOTED_SLOTS - 1);
  if (quotedMs[slot] === ms) return quotedText[slot]!;
  const t = flat(`"${iso(ms)!}"`);
  quotedMs[slot] = ms;
  quotedText[slot] = t;
  return t;
}

const STATE_HEAD: Record<DirectionState, string> = {
  open: '{"state":"open","bytes":',
  'fin-received': '{"state":"fin-received","bytes":',
  'fin-forwarded': '{"state":"fin-forwarded","bytes":',
  reset: '{"state":"reset","bytes":',
};
const NOT_RESET_TAIL = ',"resetAt":null,"paused":false}';

const REASON_JSON = new Map<string, string>(CLOSE_REASONS.map((r) => [r, JSON.stringify(r)]));

/** A string as JSON, null as null (a close reason's text made once). */
function str(s: string | null): string {
  return s === null ? 'null' : (REASON_JSON.get(s) ?? JSON.stringify(s));
}

// The text of an endpoint up to its port, by host: a proxy sees the same few hosts over and over.
const HOST_HEAD_MAX = 1024;
const hostHead = new Map<string, string>();

/** An endpoint as JSON, its fields in the order the address types declare them. */
function endpointJSON(e: Endpoint | null): string {
  if (e === null) return 'null';
  let head = hostHead.get(e.host);
  if (head === undefined) {
    if (hostHead.size >= HOST_HEAD_MAX) hostHead.clear();
    head = flat(`{"host":${JSON.stringify(e.host)},"port":`);
    hostHead.set(e.host, head);
  }
  return `${head}${e.port}${e.family === 4 ? ',"family":4}' : `,"family":${e.family}}`}`;
}

/** Something other than the copying relay moving a connection's bytes (the splice relay's worker, which owns its sockets). */
export interface Offload {
  /** End the connection: reset both sockets. The offload finishes the connection once it has. */
  release(conn: Connection): void;
}

/** The connection as a whole, from the point of view of metrics: which side has half-closed. */
export type ConnectionState = 'connecting' | 'open' | 'half-closed-client' | 'half-closed-server' | 'closing' | 'closed';

export class Connection {
  readonly id: number;
  readonly listener: ListenerConfig;
  /** The client's socket when Node accepted it (copying relay); null when the splice relay's worker owns the connection. */
  readonly client: net.Socket | null;
  readonly clientAddr: ClientAddr;
  /** The sockets' descriptors while the splice relay's worker holds them, else -1 (diagnostics and tests: they belong to the worker). */
  clientFd = -1;
  upstreamFd = -1;
  readonly startedAt: number;
  upstream: net.Socket | null = null;
  /** Our own address on the upstream connection (what the service sees). */
  upstreamLocal: UpstreamAddr | null = null;
  /** Where we connect: the original destination, or the route's fixed upstream. */
  target: UpstreamAddr | null = null;
  originalDst: OriginalDst | null = null;
  connectedAt = 0;
  /** client->server and server->client. */
  readonly c2s = new Direction();
  readonly s2c = new Direction();
  private ownActivityAt: number;
  private live: Float64Array | null = null;
  private liveBase = 0;
  /** Epoch ms of the last byte or FIN either way. */
  get lastActivityAt(): number {
    return this.live === null ? this.ownActivityAt : Math.max(this.ownActivityAt, this.live[this.liveBase + SLOT_ACTIVITY]!);
  }
  set lastActivityAt(ms: number) {
    this.ownActivityAt = ms;
  }
  /** Set while the splice relay moves this connection's bytes; it ends the connection through release(). */
  offload: Offload | null = null;
  /** Epoch ms at which the connection first became half-closed (either direction), or 0. */
  halfClosedAt = 0;
  closedAt = 0;
  reason: CloseReason | null = null;
  /** The guard's keepalive, once applied: `idle:interval:count` in seconds. */
  keepalive: string | null = null;
  /** The keepalive idle time in ms (0 without keepalive): a reset after this much idleness answers a probe. */
  keepaliveIdleMs = 0;
  /** Error text when a socket failed (code and syscall), for the access log. */
  error: string | null = null;
  /** Positions in the sets that hold the connection (DenseSet), -1 outside them: the registry's, the far timers'. */
  registryIndex = -1;
  farIndex = -1;
  /** The splice relay's slot for the connection (its shared counters), -1 when it does not hold it. */
  spliceSlot = -1;

  constructor(id: number, listener: ListenerConfig, client: net.Socket | null, clientAddr: ClientAddr, now: number) {
    this.id = id;
    this.listener = listener;
    this.client = client;
    this.clientAddr = clientAddr;
    this.startedAt = now;
    this.ownActivityAt = now;
  }

  /**
   * Reads activity, bytes and paused flags from the splice relay's shared counters, laid out at
   * `base` (the SLOT_* layout of splice-protocol.ts), until unfollow().
   */
  follow(live: Float64Array, base: number): void {
    this.live = live;
    this.liveBase = base;
    this.c2s.follow(live, base + SLOT_BYTES, base + SLOT_PAUSED, 1, base + SLOT_HELD);
    this.s2c.follow(live, base + SLOT_BYTES + 1, base + SLOT_PAUSED, 2, base + SLOT_HELD + 1);
  }
  unfollow(): void {
    if (this.live === null) return;
    this.ownActivityAt = this.lastActivityAt;
    this.live = null;
    this.c2s.unfollow();
    this.s2c.unfollow();
  }
  /** Stops following with the final counters the worker sent (it may already reuse the slot). */
  unfollowWith(c2sBytes: number, s2cBytes: number, activityAt: number): void {
    if (this.live === null) return;
    this.ownActivityAt = Math.max(this.ownActivityAt, activityAt);
    this.live = null;
    this.c2s.unfollowWith(c2sBytes);
    this.s2c.unfollowWith(s2cBytes);
  }

  get state(): ConnectionState {
    if (this.closedAt) return 'closed';
    if (!this.connectedAt) return 'connecting';
    const c = this.c2s.state !== 'open';
    const s = this.s2c.state !== 'open';
    if (c && s) return 'closing';
    if (c) return 'half-closed-client';
    if (s) return 'half-closed-server';
    return 'open';
  }

  toJSON(now = Date.now()): Record<string, unknown> {
    return {
      id: this.id,
      listener: this.listener.name,
      state: this.state,
      client: this.clientAddr,
      upstreamLocal: this.upstreamLocal,
      target: this.target,
      originalDst: this.originalDst,
      startedAt: iso(this.startedAt),
      ageMs: (this.closedAt || now) - this.startedAt,
      idleMs: now - this.lastActivityAt,
      halfClosedAt: iso(this.halfClosedAt),
      halfClosedMs: this.halfClosedAt ? (this.closedAt || now) - this.halfClosedAt : 0,
      clientToServer: this.c2s.toJSON(),
      serverToClient: this.s2c.toJSON(),
      keepalive: this.keepalive,
      ...(this.closedAt ? { closedAt: iso(this.closedAt), reason: this.reason } : {}),
      ...(this.error ? { error: this.error } : {}),
    };
  }

  /**
   * JSON.stringify(this.toJSON(now)), written directly: one string per closed connection instead
   * of an object graph to serialize (the access log writes one per connection; a test holds the
   * two to the same text).
   */
  toJSONText(now = Date.now()): string {
    return `{${this.jsonFields(now)}}`;
  }

  /** toJSONText() without its braces, for a line that adds fields around it. */
  jsonFields(now = Date.now()): string {
    const end = this.closedAt || now;
    let t = `"id":${this.id},"listener":${listenerJSON(this.listener)},"state":"${this.state}","client":${endpointJSON(this.clientAddr)},"upstreamLocal":${endpointJSON(this.upstreamLocal)},"target":${endpointJSON(this.target)},"originalDst":${endpointJSON(this.originalDst)},"startedAt":${isoJSON(this.startedAt)},"ageMs":${end - this.startedAt},"idleMs":${now - this.lastActivityAt},"halfClosedAt":${isoJSON(this.halfClosedAt)},"halfClosedMs":${this.halfClosedAt ? end - this.halfClosedAt : 0},"clientToServer":${this.c2s.toJSONText()},"serverToClient":${this.s2c.toJSONText()},"keepalive":${str(this.keepalive)}`;
    if (this.closedAt) t += `,"closedAt":${isoJSON(this.closedAt)},"reason":${str(this.reason)}`;
    if (this.error) t += `,"error":${str(this.error)}`;
    return t;
  }
}

const listenerText = new WeakMap<ListenerConfig, string>();

function listenerJSON(l: ListenerConfig): string {
  let t = listenerText.get(l);
  if (t === undefined) {
    t = JSON.stringify(l.name);
    listenerText.set(l, t);
  }
  return t;
}

/** Live connections. */
export class Registry {
  private readonly live = new DenseSet<Connection>({ get: (c) => c.registryIndex, set: (c, i) => (c.registryIndex = i) });
  private nextId = 1;

  allocateId(): number {
    return this.nextId++;
  }
  add(c: Connection): void {
    this.live.add(c);
  }
  remove(c: Connection): void {
    this.live.delete(c);
  }
  has(c: Connection): boolean {
    return this.live.has(c);
  }
  get size(): number {
    return this.live.size;
  }
  /** The live connections now (a copy: connections may end while the caller goes through them). */
  all(): Connection[] {
    return this.live.snapshot();
  }
}
