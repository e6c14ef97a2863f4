// The splice relay's worker thread: it owns whole connections. It accepts on the listening sockets
// the main thread bound, finds each connection's destination (a route's fixed upstream, or the
// original destination through SO_ORIGINAL_DST), connects with a timeout, then moves the bytes
// socket -> pipe -> socket with splice(2), so they never enter the process, and closes or resets
// both sockets at the end — all through koffi calls under its own epoll loop, with no net.Socket
// anywhere. The main thread keeps the connection records, the timers, the guard's decisions, the
// metrics and the access log; it learns of each step from the records this thread sends, and ends
// a connection early (timer, guard, drain) with OP_RELEASE. Every connection gets exactly one
// terminal record: EV_REFUSED, EV_FAILED, EV_DONE or EV_RELEASED. Descriptors are closed only here.
//
// Per direction, the same states as the copying relay (relay.ts): open -> fin-received (splice
// read 0) -> fin-forwarded (the pipe drained into the destination, then shutdown(SHUT_WR) of it),
// or failed. The pipe is the direction's bounded buffer; reading stops while it is full.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import {
  AF_INET,
  AF_INET6,
  EAGAIN,
  EINPROGRESS,
  EINTR,
  EMFILE,
  ENFILE,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_DATA_OFFSET,
  EPOLL_EVENT_SIZE,
  EPOLLERR,
  EPOLLET,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  errno,
  F_GETPIPE_SZ,
  F_SETPIPE_SZ,
  libcCalls,
  MSG_NOSIGNAL,
  O_CLOEXEC,
  O_NONBLOCK,
  SHUT_WR,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SPLICE_F_MOVE,
  SPLICE_F_NONBLOCK,
  words,
} from '../kernel/libc.js';
import { endpointAt, isMappedV4, pushAddr, SOCKADDR_MAX, writeAddr } from '../kernel/sockaddr.js';
import {
  IPPROTO_TCP,
  IP6T_SO_ORIGINAL_DST,
  SO_KEEPALIVE,
  SO_ORIGINAL_DST,
  SOL_IP,
  SOL_IPV6,
  SOL_SOCKET,
  closeWithReset,
  takeSocketErrno,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_NODELAY,
  TCP_USER_TIMEOUT,
} from '../kernel/sockopt.js';
import {
  CTRL_EXIT,
  EV_ACCEPT_ERROR,
  EV_ACCEPTED,
  EV_CONNECTED,
  EV_DONE,
  EV_FAILED,
  EV_FIN,
  EV_FIN_FORWARDED,
  EV_GUARDED,
  EV_REFUSED,
  EV_RELEASED,
  EV_UNLISTENED,
  FAIL_AFTER_EOF,
  FAIL_BEFORE_FIN,
  FAIL_IDLE,
  FAIL_READ,
  FAIL_WRITE,
  OP_KEEPALIVE,
  OP_RELEASE,
  OP_UNLISTEN,
  REFUSE_REASONS,
  SLOT_ACTIVITY,
  SLOT_BYTES,
  SLOT_FDS,
  SLOT_FIELDS,
  SLOT_HELD,
  SLOT_PAUSED,
} from './splice-protocol.js';

export interface WorkerListener {
  /** The listening socket, bound by the main thread (non-blocking). */
  fd: number;
  /** A route's fixed upstream as a sockaddr; null for an original-destination listener. */
  target: Uint8Array | null;
  /** The source address to bind for upstreams of each family (port 0), or null. */
  source4: Uint8Array | null;
  source6: Uint8Array | null;
}

/** Keepalive as [idle s, interval s, count]. */
export type KeepaliveTriple = [number, number, number];

export interface SpliceWorkerData {
  /** eventfd the main thread writes after each batch of operations. */
  wakeFd: number;
  live: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
  /** Connections relayed at once: the slots of `live`. Past it a client is reset at accept. */
  maxSlots: number;
  listeners: WorkerListener[];
  /** Ports of our own listeners and the addresses of this namespace: an original destination among them is a loop. */
  ownPorts: number[];
  localHosts: string[];
  connectTimeoutMs: number;
  bufferLimitBytes: number;
  /** The guard's keepalive for half-closed connections, applied at a connection's first FIN; null: off. */
  halfClosed: KeepaliveTriple | null;
  /** Keepalive (null: off) and TCP_USER_TIMEOUT (0: off) set on both sockets at connect. */
  established: KeepaliveTriple | null;
  userTimeoutMs: number;
}

const OPEN = 0;
const FIN_RECEIVED = 1;
const FIN_FORWARDED = 2;
const DOWNSTREAM = 0;
const UPSTREAM = 1;
const CONNECTING = 0;
const RELAYING = 1;
const CLOSED = 2;

const ECONNREFUSED = 111;
const ETIMEDOUT = 110;
const EHOSTUNREACH = 113;
const ENETUNREACH = 101;
const ENOBUFS = 105;
const REFUSE = Object.fromEntries(REFUSE_REASONS.map((r, i) => [r, i])) as Record<(typeof REFUSE_REASONS)[number], number>;

const sys = libcCalls();
const data = workerData as SpliceWorkerData;
const { wakeFd, listeners, connectTimeoutMs, bufferLimitBytes, established, userTimeoutMs } = data;
let halfClosedKeepalive = data.halfClosed;
const ownPorts = new Set(data.ownPorts);
const localHosts = new Set(data.localHosts);
const live = new Float64Array(data.live);
const ctrl = new Int32Array(data.ctrl);
const port = parentPort!;
const targets = listeners.map((l) => (l.target ? Buffer.from(l.target) : null));
const sources4 = listeners.map((l) => (l.source4 ? Buffer.from(l.source4) : null));
const sources6 = listeners.map((l) => (l.source6 ? Buffer.from(l.source6) : null));
const listenerByFd = new Map(listeners.map((l, i) => [l.fd, i]));
let listening = true;
/** While accept4 fails for want of descriptors, listeners are out of the epoll set until then (epoch ms). */
let acceptPausedUntil = 0;

const epfd = sys.epoll_create1(O_CLOEXEC);
// The fields of a struct epoll_event are 32-bit words at every offset (libc.ts), on every architecture.
const EV_WORDS = EPOLL_EVENT_SIZE >> 2;
const EV_DATA = EPOLL_DATA_OFFSET >> 2;
const [eventBuf, eventWords] = words(new Uint32Array(EV_WORDS));
const MAX_EVENTS = 256;
const [events, eventList] = words(new Uint32Array(EV_WORDS * MAX_EVENTS));
const [scratch, scratchInts] = words(new Int32Array(2));
const addrBuf = Buffer.alloc(SOCKADDR_MAX);
const [addrLen, addrLenWord] = words(new Uint32Array(1));
const dstBuf = Buffer.alloc(SOCKADDR_MAX);
const localBuf = Buffer.alloc(SOCKADDR_MAX);
const [optVal, optInt] = words(new Int32Array(2));
/**
 * Records for the main thread, sent every POST_EVERY_MS as a copy of the used part: one
 * Float64Array, doubled when a batch needs more and reused, so a batch is neither reallocated as it
 * grows nor copied by every young-generation collection (a plain array of a few thousand numbers
 * was both). rec() starts a record and reserves its fields, put() writes them.
 */
let out = new Float64Array(8192);
let outLen = 0;

function rec(kind: number, c: Conn | null, n: number): void {
  if (outLen + 4 + n > out.length) {
    const bigger = new Float64Array(Math.max(out.length * 2, outLen + 4 + n));
    bigger.set(out.subarray(0, outLen));
    out = bigger;
  }
  out[outLen++] = kind;
  out[outLen++] = c === null ? 0 : c.id;
  out[outLen++] = c === null ? -1 : c.slot;
  out[outLen++] = n;
}

function put(v: number): void {
  out[outLen++] = v;
}

/** An address field (six numbers, kernel/sockaddr.ts), or family 0 for none (`buf` null). */
function putAddr(buf: Buffer | null): void {
  if (buf === null) out.fill(0, outLen, outLen + 6);
  else writeAddr(out, outLen, buf);
  outLen += 6;
}
/**
 * The time, epoch ms, read once after each epoll_wait (and once after handling its events): every
 * record and counter of one batch carries it. A batch of up to MAX_EVENTS events takes a
 * millisecond or two at most under load, so a timestamp can be that much early; Date.now() per
 * record and per read cost more than the rest of the bookkeeping of a short connection's reads.
 */
let now = Date.now();

/**
 * The epoll data of a registration: the descriptor, and a tag (0 for listeners and the wake-up
 * eventfd, the connection's tag for its sockets). A descriptor closed while handling one event can
 * be handed out again to a new connection before a later event of the same batch, still about the
 * old socket, is handled: the tag tells them apart (a stale EPOLLOUT would otherwise pass a socket
 * that is still connecting off as connected).
 */
function ctl(op: number, fd: number, flags: number, tag = 0): number {
  eventWords[0] = flags;
  eventWords[EV_DATA] = fd;
  eventWords[EV_DATA + 1] = tag;
  return sys.epoll_ctl(epfd, op, fd, eventBuf) === 0 ? 0 : errno();
}

/** A connection's epoll tag: never 0. */
const tagOf = (c: Conn): number => (c.id % 0xfffffffe) + 1;

/** Adds a connection's socket to the epoll set; the errno when that fails, else 0. */
function watch(fd: number, c: Conn): number {
  // Edge-triggered, in and out: a direction reads until the socket is dry; EPOLLOUT matters only
  // while connecting and while a direction is blocked on its destination.
  return ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, tagOf(c));
}

function setInt(fd: number, level: number, name: number, value: number): void {
  optInt[0] = value;
  sys.setsockopt(fd, level, name, optVal, 4);
}

function setKeepalive(fd: number, k: KeepaliveTriple): void {
  setInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, k[0]);
  setInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, k[1]);
  setInt(fd, IPPROTO_TCP, TCP_KEEPCNT, k[2]);
  setInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
}

const reset = closeWithReset;

// Pipes are borrowed per direction only while bytes are in flight and come back empty, so an idle
// connection holds none. An unprivileged user's pipes share one budget (fs.pipe-user-pages-soft,
// 64 MiB: 64 pipes of 1 MiB), so the pool keeps at most 16 (1 MiB pipes cost a fifth less CPU per
// byte than 256 KiB ones: bench/relay-cost.sh c2s, 0.22 against 0.26-0.28 CPU s per GB).
interface Pipe {
  r: number;
  w: number;
  size: number;
}
const POOL_MAX = 16;
const pool: Pipe[] = [];
let pipeSize = 1 << 20;

function takePipe(): Pipe | null {
  const p = pool.pop();
  if (p !== undefined) return p;
  if (sys.pipe2(scratch, O_NONBLOCK | O_CLOEXEC) !== 0) return null;
  const r = scratchInts[0]!;
  const w = scratchInts[1]!;
  // Best effort: over the user's pipe budget the kernel keeps the default size.
  if (sys.fcntl(w, F_SETPIPE_SZ, pipeSize) < 0) pipeSize = Math.max(65536, pipeSize >> 1);
  const size = sys.fcntl(w, F_GETPIPE_SZ, 0);
  return { r, w, size: size > 0 ? size : 65536 };
}

function givePipe(p: Pipe, empty: boolean): void {
  if (empty && pool.length < POOL_MAX) pool.push(p);
  else {
    sys.close(p.r);
    sys.close(p.w);
  }
}

function emptyPool(): void {
  while (pool.length > 0) givePipe(pool.pop()!, false);
}

class Flow {
  state = OPEN;
  pipe: Pipe | null = null;
  inPipe = 0;
  /** The destination refused more (EAGAIN) with bytes still in the pipe. */
  blocked = false;
  /** A read filled the copy buffer: a stream, spliced from then on (see COPY_MAX). */
  bulk = false;
  peer!: Flow;
  constructor(
    readonly conn: Conn,
    readonly src: number,
    readonly dst: number,
    /** 0 client->server, 1 server->client. */
    readonly dir: number,
    readonly srcSide: number,
    readonly limit: number,
  ) {}
}

class Conn {
  phase = CONNECTING;
  ufd = -1;
  c2s: Flow | null = null;
  s2c: Flow | null = null;
  /** Epoch ms by which the upstream must have answered (0: no connect timer). */
  deadline = 0;
  /** When the half-closed keepalive is due (epoch ms; 0: not scheduled), and whether it is on. */
  guardAt = 0;
  guarded = false;
  constructor(
    readonly id: number,
    readonly cfd: number,
    readonly slot: number,
    readonly base: number,
    readonly listener: number,
  ) {}
}

/**
 * Connections by either of their descriptors, and by slot (the main thread names a connection by
 * its slot and id). Plain arrays, written in place: a Map that gains and loses entries per
 * connection keeps abandoned tables that hold dead connections alive (src/util/dense-set.ts).
 */
const byFd: (Conn | null)[] = [];
const bySlot: (Conn | null)[] = [];
let liveCount = 0;
const freeSlots: number[] = [];
let nextSlot = 0;
let nextId = 1;
/**
 * Connections in the order they came, handed out from the front. Each one handed out is let go at
 * once: a consumed entry kept pointing at its connection until the array was trimmed (every 1,024
 * or so), which kept about a quarter-second of finished connections alive through the young
 * generation's collections, to be copied and promoted (a collection freed 0.1 of the 1 MB it
 * scanned, `--trace-gc`).
 */
class ConnQueue {
  private items: (Conn | null)[] = [];
  private head = 0;
  push(c: Conn): void {
    this.items.push(c);
  }
  get empty(): boolean {
    return this.head >= this.items.length;
  }
  /** The connection at the front (the queue must not be empty). */
  front(): Conn {
    return this.items[this.head]!;
  }
  /** Drops the front connection. */
  shift(): void {
    this.items[this.head++] = null;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
  /** The first connection from the front that `pred` accepts, or undefined. */
  find(pred: (c: Conn) => boolean): Conn | undefined {
    for (let i = this.head; i < this.items.length; i++) if (pred(this.items[i]!)) return this.items[i]!;
    return undefined;
  }
}

/** Connects waiting for an answer, oldest first (one timeout for all, so deadlines are in order). */
const connecting = new ConnQueue();

function setFd(fd: number, c: Conn | null): void {
  while (byFd.length <= fd) byFd.push(null);
  byFd[fd] = c;
}

function takeSlot(): number {
  return freeSlots.pop() ?? (nextSlot < data.maxSlots ? nextSlot++ : -1);
}

function returnPipe(f: Flow): void {
  if (f.pipe === null) return;
  givePipe(f.pipe, f.inPipe === 0);
  f.pipe = null;
}

/** Out of every map, its pipes back, its slot free: nothing here refers to the connection any more. */
function forget(c: Conn): void {
  c.phase = CLOSED;
  bySlot[c.slot] = null;
  liveCount--;
  setFd(c.cfd, null);
  if (c.ufd >= 0) setFd(c.ufd, null);
  if (c.c2s !== null) returnPipe(c.c2s);
  if (c.s2c !== null) returnPipe(c.s2c);
  freeSlots.push(c.slot);
  if (liveCount === 0) emptyPool();
}

/** The terminal record of a connection that relayed: `n` fields (at most three), then its last counters (FINAL_FIELDS). */
function finish(c: Conn, ev: number, n: number, f0 = 0, f1 = 0, f2 = 0): void {
  const base = c.base;
  rec(ev, c, n + 4);
  if (n > 0) put(f0);
  if (n > 1) put(f1);
  if (n > 2) put(f2);
  put(live[base + SLOT_BYTES]!);
  put(live[base + SLOT_BYTES + 1]!);
  put(live[base + SLOT_ACTIVITY]!);
  put(now);
  forget(c);
}

/** The connection's descriptors are about to be closed: the main thread must no longer reset them if this thread dies. */
function disown(c: Conn): void {
  live[c.base + SLOT_FDS] = 0;
  live[c.base + SLOT_FDS + 1] = 0;
}

/** Both sockets reset and closed: a socket failed (side, errno, where). */
function fail(c: Conn, side: number, code: number, where: number): void {
  disown(c);
  reset(c.cfd);
  reset(c.ufd);
  finish(c, EV_FAILED, 3, side, code, where);
}

/** Asked by the main thread (timer, guard, drain): both sockets reset, or the connect abandoned. */
function release(c: Conn): void {
  disown(c);
  if (c.phase === RELAYING) reset(c.ufd);
  else if (c.ufd >= 0) sys.close(c.ufd);
  reset(c.cfd);
  finish(c, EV_RELEASED, 0);
}

/** Ends a connection that never relayed: the client gets an RST, never a clean EOF. */
function refuse(c: Conn, reason: number, code: number): void {
  disown(c);
  if (c.ufd >= 0) sys.close(c.ufd);
  reset(c.cfd);
  rec(EV_REFUSED, c, 3);
  put(reason);
  put(code);
  put(now);
  forget(c);
}

function connectReason(code: number): number {
  switch (code) {
    case ECONNREFUSED:
      return REFUSE['connect-refused'];
    case ETIMEDOUT:
      return REFUSE['connect-timeout'];
    case EHOSTUNREACH:
    case ENETUNREACH:
      return REFUSE['connect-unreachable'];
    default:
      return REFUSE['connect-error'];
  }
}

function acceptFrom(li: number, lfd: number, max = 64): void {
  // Bounded per turn, so one busy listener cannot starve the connections already relaying.
  for (let n = 0; n < max && acceptPausedUntil === 0; n++) {
    addrLenWord[0] = SOCKADDR_MAX;
    const fd = sys.accept4(lfd, addrBuf, addrLen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const e = errno();
      if (e === EAGAIN || e === EINTR) return;
      acceptError(e, li, 0);
      // Out of descriptors: the listener would wake us at once, forever. Leave the backlog alone for a moment.
      if (e === EMFILE || e === ENFILE) pauseAccepting();
      return;
    }
    accepted(li, fd);
  }
}

/** EV_ACCEPT_ERROR: errno (-1: every slot taken), listener, 0 accept | 1 upstream socket. */
function acceptError(code: number, li: number, upstream: number): void {
  rec(EV_ACCEPT_ERROR, null, 3);
  put(code);
  put(li);
  put(upstream);
}

function pauseAccepting(): void {
  acceptPausedUntil = Date.now() + 100;
  for (const l of listeners) ctl(EPOLL_CTL_DEL, l.fd, 0);
}

function resumeAccepting(): void {
  acceptPausedUntil = 0;
  if (listening) for (const l of listeners) ctl(EPOLL_CTL_ADD, l.fd, EPOLLIN);
}

function accepted(li: number, cfd: number): void {
  const slot = takeSlot();
  if (slot < 0) {
    reset(cfd);
    acceptError(-1, li, 0);
    return;
  }
  const base = slot * SLOT_FIELDS;
  live[base + SLOT_ACTIVITY] = now;
  live[base + SLOT_BYTES] = 0;
  live[base + SLOT_BYTES + 1] = 0;
  live[base + SLOT_PAUSED] = 0;
  live[base + SLOT_HELD] = 0;
  live[base + SLOT_HELD + 1] = 0;
  live[base + SLOT_FDS] = cfd + 1;
  live[base + SLOT_FDS + 1] = 0;
  const c = new Conn(nextId++, cfd, slot, base, li);
  while (bySlot.length <= slot) bySlot.push(null);
  bySlot[slot] = c;
  liveCount++;
  setFd(cfd, c);
  // TCP_NODELAY came with the listener (bindRawListener).
  rec(EV_ACCEPTED, c, 15);
  put(li);
  put(now);
  put(cfd);
  putAddr(addrBuf);
  // The destination: the route's upstream, or what conntrack says the client dialled.
  let target = targets[li]!;
  let refusal = -1;
  let code = 0;
  if (target === null) {
    target = dstBuf;
    // A dual-stack listener's IPv4 client (::ffff:a.b.c.d) was redirected by iptables, not ip6tables.
    const v6 = addrBuf.readUInt16LE(0) === AF_INET6 && !isMappedV4(out, outLen - 6);
    addrLenWord[0] = v6 ? 28 : 16;
    if (sys.getsockopt(cfd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IP6T_SO_ORIGINAL_DST : SO_ORIGINAL_DST, dstBuf, addrLen) !== 0) {
      refusal = REFUSE['no-original-dst'];
      code = errno();
      putAddr(null);
    } else {
      putAddr(dstBuf);
      if (isLoop(cfd, out, outLen - 6)) refusal = REFUSE['loop-refused'];
    }
  } else {
    putAddr(null);
  }
  if (refusal >= 0) refuse(c, refusal, code);
  else startConnect(c, target);
}

/** An original destination that is one of our own listeners: the connection was not redirected, or it would loop. */
function isLoop(cfd: number, a: ArrayLike<number>, i: number): boolean {
  if (!ownPorts.has(a[i + 1]!)) return false;
  const dst = endpointAt(a, i);
  if (dst === null) return false;
  if (localHosts.has(dst.host)) return true;
  // Not into dstBuf: that holds the destination to connect to when this says no.
  addrLenWord[0] = SOCKADDR_MAX;
  if (sys.getsockname(cfd, localBuf, addrLen) !== 0) return false;
  const local: number[] = [];
  pushAddr(local, localBuf);
  return endpointAt(local, 0)?.host === dst.host;
}

function startConnect(c: Conn, target: Buffer): void {
  const family = target.readUInt16LE(0);
  const ufd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (ufd < 0) {
    const e = errno();
    refuse(c, REFUSE['connect-error'], e);
    if (e === EMFILE || e === ENFILE) {
      // Accepting more would only reset them one by one: the backlog waits until descriptors free up.
      acceptError(e, c.listener, 1);
      pauseAccepting();
    }
    return;
  }
  c.ufd = ufd;
  live[c.base + SLOT_FDS + 1] = ufd + 1;
  setInt(ufd, IPPROTO_TCP, TCP_NODELAY, 1);
  const source = family === AF_INET ? sources4[c.listener] : sources6[c.listener];
  if (source && sys.bind(ufd, source, source.length) !== 0) {
    refuse(c, REFUSE['connect-error'], errno());
    return;
  }
  if (sys.connect(ufd, target, family === AF_INET ? 16 : 28) !== 0) {
    const e = errno();
    if (e !== EINPROGRESS) {
      refuse(c, connectReason(e), e);
      return;
    }
  }
  setFd(ufd, c);
  const werr = watch(ufd, c);
  if (werr !== 0) {
    refuse(c, REFUSE['connect-error'], werr);
    return;
  }
  if (connectTimeoutMs > 0) {
    c.deadline = now + connectTimeoutMs;
    connecting.push(c);
  }
  // A connect that completed at once still raises EPOLLOUT: it is handled there, like any other.
}

/** The upstream answered (EPOLLOUT, or an error while connecting). */
function onConnectDone(c: Conn, ev: number): void {
  // A refused or failed connect always raises EPOLLERR (with EPOLLHUP): EPOLLOUT alone is a
  // connected socket, and asking for SO_ERROR would only cost a system call.
  const e = ev & (EPOLLERR | EPOLLHUP) ? takeSocketErrno(c.ufd) : 0;
  if (e !== 0) {
    refuse(c, connectReason(e), e);
    return;
  }
  c.phase = RELAYING;
  c.c2s = new Flow(c, c.cfd, c.ufd, 0, DOWNSTREAM, bufferLimitBytes);
  c.s2c = new Flow(c, c.ufd, c.cfd, 1, UPSTREAM, bufferLimitBytes);
  c.c2s.peer = c.s2c;
  c.s2c.peer = c.c2s;
  if (established !== null) {
    setKeepalive(c.cfd, established);
    setKeepalive(c.ufd, established);
  }
  if (userTimeoutMs > 0) {
    setInt(c.cfd, IPPROTO_TCP, TCP_USER_TIMEOUT, userTimeoutMs);
    setInt(c.ufd, IPPROTO_TCP, TCP_USER_TIMEOUT, userTimeoutMs);
  }
  rec(EV_CONNECTED, c, 8);
  put(now);
  put(c.ufd);
  addrLenWord[0] = SOCKADDR_MAX;
  putAddr(sys.getsockname(c.ufd, addrBuf, addrLen) === 0 ? addrBuf : null);
  const cerr = watch(c.cfd, c);
  if (cerr !== 0) {
    fail(c, DOWNSTREAM, cerr, FAIL_READ);
    return;
  }
  // The client's bytes are read now rather than one turn later (the client usually speaks first).
  // Whatever was already there when the watch began is queued as an event by epoll_ctl itself, so
  // a short read can stop as it does for an event: a FIN behind the bytes is reported next turn.
  pump(c.c2s, EPOLLIN | ASSUMED);
  // The upstream's: this connect event's own flags say whether it had sent anything yet; what
  // it sends later raises an edge of its own.
  if (c.phase === RELAYING && ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pump(c.s2c, ev);
}

function expireConnects(now: number): void {
  while (!connecting.empty) {
    const c = connecting.front();
    if (c.phase === CONNECTING && c.deadline > now) break;
    connecting.shift();
    if (c.phase === CONNECTING) refuse(c, REFUSE['connect-timeout'], 0);
  }
}

const stillConnecting = (c: Conn): boolean => c.phase === CONNECTING;

/** The nearest connect deadline still pending, or 0. */
function nextDeadline(): number {
  return connecting.find(stillConnecting)?.deadline ?? 0;
}

/**
 * The guard's keepalive goes on both sockets of a connection GUARD_DELAY_MS after its first FIN,
 * if it is still open then. Most half-closes last a round trip (the other FIN follows at once),
 * and eight setsockopt calls per connection were a tenth of what the worker spent on a short
 * connection. The delay is far below the keepalive idle time (at least 1 s; the conntrack entry
 * lives three idle times), so the first probe leaves at most 100 ms later than it would have.
 */
const GUARD_DELAY_MS = 100;
const guardQueue = new ConnQueue();

function guard(c: Conn): void {
  if (c.guardAt !== 0 || halfClosedKeepalive === null) return;
  c.guardAt = now + GUARD_DELAY_MS;
  guardQueue.push(c);
}

function keepGuarding(c: Conn, k: KeepaliveTriple): void {
  setKeepalive(c.cfd, k);
  setKeepalive(c.ufd, k);
  rec(EV_GUARDED, c, 3);
  put(k[0]);
  put(k[1]);
  put(k[2]);
}

function applyGuards(now: number): void {
  while (!guardQueue.empty) {
    const c = guardQueue.front();
    if (c.guardAt > now) break;
    guardQueue.shift();
    if (c.phase !== RELAYING || halfClosedKeepalive === null) continue;
    c.guarded = true;
    keepGuarding(c, halfClosedKeepalive);
  }
}

function setPaused(f: Flow, paused: boolean): void {
  const i = f.conn.base + SLOT_PAUSED;
  const bit = f.dir === 0 ? 1 : 2;
  live[i] = paused ? live[i]! | bit : live[i]! & ~bit;
}

/**
 * Small reads are copied, not spliced: recv into one buffer of this thread, send straight on.
 * Splicing a message of a few bytes costs two splices and a pipe, and a short recv() tells that
 * the socket is drained, where a short splice does not (it can stop at the pipe's slots), so the
 * read that would only say EAGAIN is saved too. The first read that fills the buffer marks the
 * direction a stream, and it is spliced from then on: its bytes never enter the process. Bytes
 * the destination does not take at once wait in a pipe, as spliced ones do. 8 KiB: the least an
 * empty pipe holds (two pages, for a user over the pipe budget), so what is left always fits.
 */
const COPY_MAX = 8192;
const copyBuf = Buffer.alloc(COPY_MAX);

/**
 * Not an epoll flag: pump()'s `ev` was assumed by this thread (reading a socket just added to the
 * epoll set), not reported by epoll_wait, so it says nothing of the socket's pending error.
 */
const ASSUMED = 1 << 30;

/**
 * Moves what it can in one direction: reads while the pipe has room and the source has bytes,
 * writes while the destination takes them; forwards the FIN once the pipe is empty. `ev`: what
 * epoll_wait reported for the source (with ASSUMED: what this thread took for granted), or 0
 * outside an event of the source.
 */
function pump(f: Flow, ev = 0): void {
  const c = f.conn;
  for (;;) {
    let progress = false;
    if (f.state === OPEN && f.inPipe === 0 && !f.bulk) {
      const want = Math.min(COPY_MAX, f.limit);
      const n = sys.recv(f.src, copyBuf, want, 0);
      if (n > 0) {
        live[c.base + SLOT_BYTES + f.dir]! += n;
        live[c.base + SLOT_ACTIVITY] = now;
        if (n === want) f.bulk = true;
        const m = sys.send(f.dst, copyBuf, n, MSG_NOSIGNAL);
        if (m < 0) {
          const e = errno();
          if (e !== EAGAIN && e !== EINTR) {
            fail(c, 1 - f.srcSide, e, FAIL_WRITE);
            return;
          }
        }
        const sent = m > 0 ? m : 0;
        if (sent < n && !hold(f, sent, n - sent)) return;
        // A short read left the socket empty: its next bytes raise a new edge. A FIN or an error
        // that came with them (EPOLLRDHUP, EPOLLHUP, EPOLLERR) is read now; outside an event, read
        // until EAGAIN.
        if (sent === n && !f.bulk && ev !== 0 && (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) === 0) return;
        continue;
      }
      if (!readNothing(f, n, ev)) return;
    } else if (f.state === OPEN && f.inPipe < f.limit) {
      if (f.pipe === null) {
        f.pipe = takePipe();
        if (f.pipe === null) {
          fail(c, f.srcSide, errno(), FAIL_READ);
          return;
        }
      }
      const room = Math.min(f.limit, f.pipe.size) - f.inPipe;
      if (room > 0) {
        const n = sys.splice(f.src, null, f.pipe.w, null, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          f.inPipe += n;
          live[c.base + SLOT_HELD + f.dir] = f.inPipe;
          live[c.base + SLOT_BYTES + f.dir]! += n;
          live[c.base + SLOT_ACTIVITY] = now;
          progress = true;
        } else {
          if (f.inPipe === 0) {
            // Nothing read and nothing held: the pipe goes back, an idle direction holds none.
            givePipe(f.pipe, true);
            f.pipe = null;
          }
          if (!readNothing(f, n, ev)) return;
        }
      }
    }
    if (f.inPipe > 0) {
      const m = sys.splice(f.pipe!.r, null, f.dst, null, f.inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        f.inPipe -= m;
        live[c.base + SLOT_HELD + f.dir] = f.inPipe;
        progress = true;
        if (f.inPipe === 0) {
          givePipe(f.pipe!, true);
          f.pipe = null;
        }
      } else {
        const e = errno();
        if (e === EAGAIN) {
          f.blocked = true;
          // Reading has stopped too once the pipe is full: the direction is paused.
          if (f.inPipe >= Math.min(f.limit, f.pipe!.size)) setPaused(f, true);
        } else if (e !== EINTR) {
          fail(c, 1 - f.srcSide, e, FAIL_WRITE);
          return;
        }
      }
    }
    if (f.inPipe === 0 && f.blocked) {
      f.blocked = false;
      setPaused(f, false);
    }
    if (f.state === FIN_RECEIVED && f.inPipe === 0) {
      // Write-side shutdown only: the other direction keeps flowing. A destination the peer had
      // already reset must not count as a forwarded FIN. A reset closes the socket (the kernel
      // keeps the reset as SO_ERROR), so the shutdown fails, with ENOTCONN, and SO_ERROR says
      // why. A reset that comes back once our FIN has arrived (the peer read EOF, then crashed)
      // is the peer's next move, and the FIN was forwarded; the read side reports that reset.
      // The last FIN is sent by close() below: the destination was read to its EOF, so its receive
      // queue is empty and closing it sends a FIN, not a reset (a shutdown first cost a call).
      // close() does not fail on a reset socket: for it, SO_ERROR is asked first. No event of this
      // batch vouches for the destination, whose peer may have reset it in answer to the bytes
      // just written into it (over loopback that reset is already there when send() returns).
      const last = f.peer.state === FIN_FORWARDED;
      let err = 0;
      if (last) err = takeSocketErrno(f.dst);
      else if (sys.shutdown(f.dst, SHUT_WR) !== 0) err = takeSocketErrno(f.dst) || errno();
      if (err !== 0) {
        fail(c, 1 - f.srcSide, err, FAIL_BEFORE_FIN);
        return;
      }
      f.state = FIN_FORWARDED;
      rec(EV_FIN_FORWARDED, c, 2);
      put(f.dir);
      put(now);
      if (last) {
        // Both directions done and both sockets read to EOF: a plain close, which sends the last FIN.
        disown(c);
        sys.close(c.cfd);
        sys.close(c.ufd);
        finish(c, EV_DONE, 0);
      }
      return;
    }
    if (!progress) return;
  }
}

/** A read that moved nothing: 0 is the end of the stream, -1 an errno (EAGAIN: nothing yet). False when the connection failed. */
function readNothing(f: Flow, n: number, ev: number): boolean {
  if (n === 0) return endOfStream(f, ev);
  const e = errno();
  if (e === EAGAIN || e === EINTR) return true;
  fail(f.conn, f.srcSide, e, FAIL_READ);
  return false;
}

/** EOF read: the direction is fin-received, or failed (false) when a reset came after the last bytes. */
function endOfStream(f: Flow, ev: number): boolean {
  const c = f.conn;
  // A reset that arrived behind the FIN is kept as the socket's error (recv reads the FIN as the
  // end of the stream first), and a FIN forwarded now would pass a crash off as a complete stream.
  // epoll_wait reports such an error as EPOLLERR, read when it collects the events: without it
  // there was none then, and asking SO_ERROR on every EOF cost 1–2 % of a short connection's
  // CPU (bench/pair-cost.sh). A reset that comes later raises an edge of its own (EPOLLERR): while
  // the other direction is open it reaches the other side as an RST behind the FIN, what that side
  // would have seen without a proxy between; once this was the last FIN, both sockets are closed
  // and the reset has nothing left to end, as when it comes a moment after the close.
  const err = ev === 0 || ev & (EPOLLERR | ASSUMED) ? takeSocketErrno(f.src) : 0;
  if (err !== 0) {
    fail(c, f.srcSide, err, FAIL_AFTER_EOF);
    return false;
  }
  f.state = FIN_RECEIVED;
  live[c.base + SLOT_ACTIVITY] = now;
  rec(EV_FIN, c, 2);
  put(f.dir);
  put(now);
  guard(c);
  return true;
}

/** Copied bytes the destination did not take (copyBuf[from, from + len)) wait in a pipe; false when the connection failed. */
function hold(f: Flow, from: number, len: number): boolean {
  f.pipe = takePipe();
  const w = f.pipe === null ? -1 : sys.write(f.pipe.w, from === 0 ? copyBuf : copyBuf.subarray(from), len);
  if (w !== len) {
    // No descriptor for a pipe (or, never seen, a pipe that took less than its least size): the
    // bytes cannot be kept, and the stream cannot go on without them.
    const e = w < 0 ? errno() : ENOBUFS;
    if (f.pipe !== null) givePipe(f.pipe, false);
    f.pipe = null;
    fail(f.conn, f.srcSide, e, FAIL_READ);
    return false;
  }
  f.inPipe = len;
  live[f.conn.base + SLOT_HELD + f.dir] = len;
  return true;
}

function onSocket(fd: number, tag: number, ev: number): void {
  const c = fd < byFd.length ? byFd[fd]! : null;
  if (c === null || tagOf(c) !== tag) return; // a socket closed earlier in this batch
  if (c.phase === CONNECTING) {
    if (fd === c.ufd && ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) onConnectDone(c, ev);
    return;
  }
  const from = fd === c.cfd ? c.c2s! : c.s2c!; // the direction this socket is the source of
  const into = from.peer; // and the one it is the destination of
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pump(from, ev);
  if (c.phase === RELAYING && ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) && into.blocked) pump(into);
  if (c.phase === RELAYING && ev & EPOLLERR) {
    // Nothing read it (EOF already seen, or its direction is blocked): the error is the socket's.
    const err = takeSocketErrno(fd);
    if (err !== 0) fail(c, from.srcSide, err, FAIL_IDLE);
  }
}

function onOps(ops: number[]): void {
  for (let i = 0; i + 3 <= ops.length; i += 3 + ops[i + 2]!) {
    const op = ops[i]!;
    if (op === OP_RELEASE) {
      // Not here any more (failed, done, refused) means its terminal record is already on its way.
      const c = bySlot[ops[i + 3]!];
      if (c != null && c.id === ops[i + 1]) release(c);
    } else if (op === OP_KEEPALIVE) {
      const k: KeepaliveTriple = [ops[i + 3]!, ops[i + 4]!, ops[i + 5]!];
      halfClosedKeepalive = k[0] > 0 ? k : null;
      // Connections already half-closed would keep probing at the old pace and could lose their entries.
      if (halfClosedKeepalive !== null) {
        for (const c of bySlot) if (c !== null && c.guarded && c.phase === RELAYING) keepGuarding(c, halfClosedKeepalive);
      }
    } else if (op === OP_UNLISTEN) {
      if (listening) {
        // Clients whose handshake completed wait in the backlog, and closing the listener would
        // reset them: they are ours, so they are accepted first and drain with the others.
        if (acceptPausedUntil === 0) listeners.forEach((l, li) => acceptFrom(li, l.fd, Infinity));
        listening = false;
        for (const l of listeners) {
          if (acceptPausedUntil === 0) ctl(EPOLL_CTL_DEL, l.fd, 0);
          sys.close(l.fd);
        }
        listenerByFd.clear(); // their numbers may come back as connections' sockets
      }
      rec(EV_UNLISTENED, null, 0);
    }
  }
}

/** Pooled pipes are closed when the last connection goes, or after this long without a single event. */
const POOL_IDLE_MS = 1000;

/**
 * Records go to the main thread at most every 40 ms (or sooner when very many wait): a message
 * costs the worker about as much as relaying a short connection, plus a switch to the main thread
 * and back on a shared core, and the main thread's turn for it (its event machinery, one
 * access-log write), while nothing on the data path waits for the main thread, which only keeps
 * the books (every record carries the time of its event). Under load one message carries a few
 * hundred connections' records; when the worker goes idle the last ones leave within 40 ms. The
 * batch limit (32,768 numbers, about 500 short connections) is above what 40 ms bring at 7,000
 * connections a second, so the clock, not the limit, sets the pace.
 * (bench/relay-cost.sh conn, CPU s per 1,000 connections: every 1 ms 0.154 against 0.142 every
 * 4 ms; every 4 ms 0.161 against 0.144 every 10 ms, medians of 10 alternating runs;
 * bench/pair-cost.sh, every 20 ms against every 10: 0.978, 0.993, 0.949, 0.955; every 40 ms
 * against every 20, both with a limit of 8,192: 0.982, 0.983, 0.984, 0.992, 0.980, 0.990, 0.992,
 * 0.979, and the other way round 0.988, 1.022, 1.003, 1.026, 1.010, 1.014.)
 */
const POST_EVERY_MS = 40;
const POST_BATCH = 32768;
let lastPostAt = 0;

function flushOut(now: number): void {
  // As a transferred Float64Array the records reach the main thread without being cloned, and
  // reading them there allocates nothing; a plain array arrives as one heap number per timestamp
  // and IPv4 address.
  const records = out.slice(0, outLen);
  port.postMessage(records, [records.buffer]);
  outLen = 0;
  lastPostAt = now;
}

/** How long epoll_wait may sleep: until records are due, the nearest connect deadline or keepalive, accept resumption or pool expiry. */
function waitMs(now: number): number {
  if (outLen > 0) return Math.max(0, lastPostAt + POST_EVERY_MS - now);
  let until = 0;
  const d = nextDeadline();
  if (d > 0) until = d;
  if (!guardQueue.empty && (until === 0 || guardQueue.front().guardAt < until)) until = guardQueue.front().guardAt;
  if (acceptPausedUntil > 0 && (until === 0 || acceptPausedUntil < until)) until = acceptPausedUntil;
  if (until > 0) return Math.max(0, until - now);
  return pool.length > 0 ? POOL_IDLE_MS : -1;
}

function loop(): void {
  for (;;) {
    const n = sys.epoll_wait(epfd, events, MAX_EVENTS, waitMs(now));
    now = Date.now();
    if (n < 0) {
      if (errno() === EINTR) continue;
      throw new Error(`epoll_wait: errno ${errno()}`);
    }
    if (n === 0 && connecting.empty && guardQueue.empty && acceptPausedUntil === 0) emptyPool();
    for (let i = 0; i < n; i++) {
      const at = i * EV_WORDS;
      const ev = eventList[at]!;
      const fd = eventList[at + EV_DATA]!;
      const tag = eventList[at + EV_DATA + 1]!;
      if (fd === wakeFd) {
        sys.read(wakeFd, scratch, 8);
        if (Atomics.load(ctrl, CTRL_EXIT) === 1) return;
        for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) onOps(m.message as number[]);
        continue;
      }
      const li = tag === 0 ? listenerByFd.get(fd) : undefined;
      if (li !== undefined) {
        if (listening) acceptFrom(li, fd);
      } else if (tag !== 0) {
        onSocket(fd, tag, ev);
      }
    }
    now = Date.now();
    if (!connecting.empty) expireConnects(now);
    if (!guardQueue.empty) applyGuards(now);
    if (acceptPausedUntil > 0 && now >= acceptPausedUntil) resumeAccepting();
    if (outLen > 0 && (now - lastPostAt >= POST_EVERY_MS || outLen >= POST_BATCH)) flushOut(now);
  }
}

/** On exit: every connection reset, every listener and pipe closed. */
function closeAll(): void {
  for (const c of bySlot) {
    if (c === null) continue;
    if (c.ufd >= 0) reset(c.ufd);
    reset(c.cfd);
  }
  bySlot.length = 0;
  byFd.length = 0;
  if (listening) for (const l of listeners) sys.close(l.fd);
  emptyPool();
  sys.close(epfd);
}

if (epfd < 0 || ctl(EPOLL_CTL_ADD, wakeFd, EPOLLIN) !== 0) throw new Error(`epoll: errno ${errno()}`);
for (const l of listeners) {
  if (ctl(EPOLL_CTL_ADD, l.fd, EPOLLIN) !== 0) throw new Error(`epoll: listener: errno ${errno()}`);
}
port.postMessage('ready');
loop();
closeAll();
