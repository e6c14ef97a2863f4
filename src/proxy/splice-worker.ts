// The splice relay's worker thread: moves each connection's bytes socket -> pipe -> socket with
// splice(2), so they never enter the process, under its own epoll loop. The main thread keeps
// everything else (accept, connect, timers, guard, log) and keeps owning the descriptors: this
// thread only borrows them, and gives them back (removes them from its epoll and forgets them)
// before it reports that a connection failed, finished or was released. The main thread closes a
// descriptor only after that report, so a number the kernel reuses can never reach this thread.
//
// Per direction, the same states as the copying relay (relay.ts): open -> fin-received (splice
// read 0) -> fin-forwarded (the pipe drained into the destination, then shutdown(SHUT_WR) of it),
// or failed. The pipe is the direction's bounded buffer; reading stops while it is full.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import {
  EAGAIN,
  EINTR,
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
  O_CLOEXEC,
  O_NONBLOCK,
  SHUT_WR,
  SPLICE_F_MOVE,
  SPLICE_F_NONBLOCK,
} from '../kernel/libc.js';
import { takeSocketErrno } from '../kernel/sockopt.js';
import {
  CTRL_EXIT,
  EV_DONE,
  EV_FAILED,
  EV_FIN,
  EV_FIN_FORWARDED,
  EV_RELEASED,
  FAIL_AFTER_EOF,
  FAIL_BEFORE_FIN,
  FAIL_IDLE,
  FAIL_READ,
  FAIL_WRITE,
  OP_ATTACH,
  OP_FIELDS,
  OP_RELEASE,
  SLOT_ACTIVITY,
  SLOT_BYTES,
  SLOT_FIELDS,
  SLOT_HELD,
  SLOT_PAUSED,
} from './splice-protocol.js';

export interface SpliceWorkerData {
  /** eventfd the main thread writes after each batch of operations. */
  wakeFd: number;
  live: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
}

const OPEN = 0;
const FIN_RECEIVED = 1;
const FIN_FORWARDED = 2;
const DOWNSTREAM = 0;
const UPSTREAM = 1;

const sys = libcCalls();
const { wakeFd, live: liveBuf, ctrl: ctrlBuf } = workerData as SpliceWorkerData;
const live = new Float64Array(liveBuf);
const ctrl = new Int32Array(ctrlBuf);
const port = parentPort!;

const epfd = sys.epoll_create1(O_CLOEXEC);
const eventBuf = Buffer.alloc(EPOLL_EVENT_SIZE);
const MAX_EVENTS = 256;
const events = Buffer.alloc(EPOLL_EVENT_SIZE * MAX_EVENTS);
const scratch = Buffer.alloc(8);
/** Records for the main thread, sent once per loop turn. */
let out: number[] = [];

/** Adds a socket to the epoll set; the errno when that fails, else 0. */
function watch(fd: number): number {
  // Edge-triggered, in and out: a direction reads until the socket is dry; EPOLLOUT matters only
  // while a direction is blocked on its destination (checked before acting on it).
  eventBuf.writeUInt32LE((EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) >>> 0, 0);
  eventBuf.writeUInt32LE(fd, EPOLL_DATA_OFFSET);
  eventBuf.writeUInt32LE(0, EPOLL_DATA_OFFSET + 4);
  return sys.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, eventBuf) === 0 ? 0 : errno();
}

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
  const r = scratch.readInt32LE(0);
  const w = scratch.readInt32LE(4);
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

class Flow {
  state = OPEN;
  pipe: Pipe | null = null;
  inPipe = 0;
  /** The destination refused more (EAGAIN) with bytes still in the pipe. */
  blocked = false;
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
  readonly c2s: Flow;
  readonly s2c: Flow;
  attached = true;
  constructor(
    readonly id: number,
    readonly cfd: number,
    readonly ufd: number,
    readonly base: number,
    limit: number,
  ) {
    this.c2s = new Flow(this, cfd, ufd, 0, DOWNSTREAM, limit);
    this.s2c = new Flow(this, ufd, cfd, 1, UPSTREAM, limit);
    this.c2s.peer = this.s2c;
    this.s2c.peer = this.c2s;
  }
}

const byFd = new Map<number, Conn>();

function emit(ev: number, id: number, a: number, b: number, c: number): void {
  out.push(ev, id, a, b, c);
}

/** Gives both descriptors back: out of the epoll set, out of the map, pipes returned. */
function detach(c: Conn): void {
  if (!c.attached) return;
  c.attached = false;
  sys.epoll_ctl(epfd, EPOLL_CTL_DEL, c.cfd, null);
  sys.epoll_ctl(epfd, EPOLL_CTL_DEL, c.ufd, null);
  byFd.delete(c.cfd);
  byFd.delete(c.ufd);
  for (const f of [c.c2s, c.s2c]) {
    if (f.pipe !== null) givePipe(f.pipe, f.inPipe === 0);
    f.pipe = null;
  }
  if (byFd.size === 0) emptyPool();
}

function emptyPool(): void {
  while (pool.length > 0) givePipe(pool.pop()!, false);
}

function fail(c: Conn, side: number, code: number, where: number): void {
  detach(c);
  emit(EV_FAILED, c.id, side, code, where);
}

function setPaused(f: Flow, paused: boolean): void {
  const i = f.conn.base + SLOT_PAUSED;
  const bit = f.dir === 0 ? 1 : 2;
  live[i] = paused ? live[i]! | bit : live[i]! & ~bit;
}

/**
 * Moves what it can in one direction: reads while the pipe has room and the source has bytes,
 * writes while the destination takes them; forwards the FIN once the pipe is empty.
 */
function pump(f: Flow): void {
  const c = f.conn;
  for (;;) {
    let progress = false;
    if (f.state === OPEN && f.inPipe < f.limit) {
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
          live[c.base + SLOT_ACTIVITY] = Date.now();
          progress = true;
        } else {
          if (f.inPipe === 0) {
            // Nothing read and nothing held: the pipe goes back, an idle direction holds none.
            givePipe(f.pipe, true);
            f.pipe = null;
          }
          if (n === 0) {
            // EOF. A reset that arrived after the last bytes is kept as the socket's error, and a
            // FIN forwarded now would pass a crash off as a complete stream.
            const err = takeSocketErrno(f.src);
            if (err !== 0) {
              fail(c, f.srcSide, err, FAIL_AFTER_EOF);
              return;
            }
            f.state = FIN_RECEIVED;
            const now = Date.now();
            live[c.base + SLOT_ACTIVITY] = now;
            emit(EV_FIN, c.id, f.dir, now, 0);
          } else {
            const e = errno();
            if (e !== EAGAIN && e !== EINTR) {
              fail(c, f.srcSide, e, FAIL_READ);
              return;
            }
          }
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
      // already reset must not count as a forwarded FIN: its reset is pending as SO_ERROR, or the
      // shutdown fails (the socket is closed). Checked before, not after: a reset that comes back
      // once our FIN has arrived (the peer read EOF, then crashed) is the peer's next move, and
      // the FIN was forwarded; the read side reports that reset.
      let err = takeSocketErrno(f.dst);
      if (err === 0 && sys.shutdown(f.dst, SHUT_WR) !== 0) err = takeSocketErrno(f.dst) || errno();
      if (err !== 0) {
        fail(c, 1 - f.srcSide, err, FAIL_BEFORE_FIN);
        return;
      }
      f.state = FIN_FORWARDED;
      emit(EV_FIN_FORWARDED, c.id, f.dir, Date.now(), 0);
      if (f.peer.state === FIN_FORWARDED) {
        detach(c);
        emit(EV_DONE, c.id, 0, 0, 0);
      }
      return;
    }
    if (!progress) return;
  }
}

function onSocket(fd: number, ev: number): void {
  const c = byFd.get(fd);
  if (c === undefined) return;
  const from = fd === c.cfd ? c.c2s : c.s2c; // the direction this socket is the source of
  const into = from.peer; // and the one it is the destination of
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) pump(from);
  if (c.attached && ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) && into.blocked) pump(into);
  if (c.attached && ev & EPOLLERR) {
    // Nothing read it (EOF already seen, or its direction is blocked): the error is the socket's.
    const err = takeSocketErrno(fd);
    if (err !== 0) fail(c, from.srcSide, err, FAIL_IDLE);
  }
}

function onOps(ops: number[]): void {
  for (let i = 0; i + OP_FIELDS <= ops.length; i += OP_FIELDS) {
    const op = ops[i]!;
    const id = ops[i + 1]!;
    if (op === OP_ATTACH) {
      const c = new Conn(id, ops[i + 2]!, ops[i + 3]!, ops[i + 4]! * SLOT_FIELDS, ops[i + 5]!);
      byFd.set(c.cfd, c);
      byFd.set(c.ufd, c);
      // A connection that cannot be watched fails alone (detach ignores a descriptor not in the set).
      const cerr = watch(c.cfd);
      const uerr = cerr === 0 ? watch(c.ufd) : 0;
      if (cerr !== 0 || uerr !== 0) {
        fail(c, cerr !== 0 ? DOWNSTREAM : UPSTREAM, cerr || uerr, FAIL_READ);
        continue;
      }
      // Bytes (or a FIN) that arrived before the watch began raise no edge: look now.
      pump(c.c2s);
      if (c.attached) pump(c.s2c);
    } else if (op === OP_RELEASE) {
      // By either descriptor: not attached any more (failed, done) means nothing to let go of.
      const c = byFd.get(ops[i + 2]!) ?? byFd.get(ops[i + 3]!);
      if (c !== undefined && c.id === id) detach(c);
      emit(EV_RELEASED, id, 0, 0, 0);
    }
  }
}

/** Pooled pipes are closed when the last connection goes, or after this long without a single event. */
const POOL_IDLE_MS = 1000;

function loop(): void {
  for (;;) {
    const n = sys.epoll_wait(epfd, events, MAX_EVENTS, pool.length > 0 ? POOL_IDLE_MS : -1);
    if (n === 0) {
      emptyPool();
      continue;
    }
    if (n < 0) {
      if (errno() === EINTR) continue;
      throw new Error(`epoll_wait: errno ${errno()}`);
    }
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT_SIZE;
      const ev = events.readUInt32LE(at);
      const fd = events.readUInt32LE(at + EPOLL_DATA_OFFSET);
      if (fd === wakeFd) {
        sys.read(wakeFd, scratch, 8);
        if (Atomics.load(ctrl, CTRL_EXIT) === 1) return;
        for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) onOps(m.message as number[]);
      } else {
        onSocket(fd, ev);
      }
    }
    if (out.length > 0) {
      port.postMessage(out);
      out = [];
    }
  }
}

eventBuf.writeUInt32LE(EPOLLIN, 0);
eventBuf.writeUInt32LE(wakeFd, EPOLL_DATA_OFFSET);
eventBuf.writeUInt32LE(0, EPOLL_DATA_OFFSET + 4);
if (epfd < 0 || sys.epoll_ctl(epfd, EPOLL_CTL_ADD, wakeFd, eventBuf) !== 0) throw new Error(`epoll: errno ${errno()}`);
port.postMessage('ready');
loop();
emptyPool();
sys.close(epfd);
