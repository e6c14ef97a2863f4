// The relay: copies bytes both ways with exact half-close semantics.
//
// Each direction (client->server, server->client) runs on its own:
//   open -> fin-received (EOF read from the source)
//        -> fin-forwarded (everything before the FIN written, then a write-side shutdown of the
//           destination: never a full close, so the other direction keeps flowing)
//   or reset (either socket failed: the other socket is reset with RST, not closed with FIN).
// The connection ends only when both sockets have closed; `finish` then runs exactly once.

import type net from 'node:net';
import type { CloseReason, Connection, Direction } from './registry.js';
import { socketFd, takeSocketError } from '../kernel/sockopt.js';

export type Side = 'downstream' | 'upstream';
export type DirectionName = 'c2s' | 's2c';

export interface RelayEvents {
  /** A FIN was read in this direction (the connection is now half-closed, or closing). */
  halfClosed(conn: Connection, dir: DirectionName): void;
  /** Both sockets are closed; `conn.reason` is set. Called exactly once. */
  finished(conn: Connection): void;
}

/** Sends RST instead of FIN. Falls back to destroy() where there is no TCP handle left. */
export function resetSocket(socket: net.Socket | null): void {
  if (!socket || socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

/** Ends a connection now with `reason`, resetting both sides. No-op when it already has a reason. */
export function abortConnection(conn: Connection, reason: CloseReason): void {
  if (conn.reason === null) conn.reason = reason;
  const now = Date.now();
  // A connection that never connected has no directions to reset.
  if (conn.connectedAt) for (const d of [conn.c2s, conn.s2c]) {
    if (d.state !== 'fin-forwarded' && d.state !== 'reset') {
      d.state = 'reset';
      d.resetAt = now;
    }
  }
  // The splice relay's worker may be using the descriptors: it resets them once it has let go.
  if (conn.offload !== null) conn.offload.release(conn);
  else {
    resetSocket(conn.client);
    resetSocket(conn.upstream);
  }
}

/** The close reason for a socket error (also used by the guard for errors it finds itself). */
export function reasonForError(side: Side, err: NodeJS.ErrnoException, conn: Connection): CloseReason {
  switch (err.code) {
    case 'ECONNRESET':
    case 'EPIPE':
      // Idle past the keepalive idle time, the kernel was probing: a reset now answers a probe
      // (the peer, or the conntrack entry that un-NATs it, is gone), not something the peer did.
      return conn.keepaliveIdleMs > 0 && Date.now() - conn.lastActivityAt >= conn.keepaliveIdleMs * 0.9 ? 'keepalive-dead' : `${side}-reset`;
    case 'ETIMEDOUT':
      // Keepalive probes (or the user timeout) gave up: the peer or the conntrack entry is gone.
      return conn.keepalive !== null ? 'keepalive-dead' : `${side}-error`;
    default:
      return `${side}-error`;
  }
}

const READ_BUFFER_BYTES = 64 * 1024;
/** A read at least this big means a bulk transfer: the next read gets a private buffer. */
const BULK_READ_BYTES = 16 * 1024;
/** Private buffers kept for reuse once their transfer went quiet. */
const POOL_MAX = 32;
const pool: Buffer[] = [];
/** Every quiet upstream socket reads into this one; a chunk read into it is copied out at once. */
const shared: Buffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
/** The buffer for the read that follows the one being handled (Node asks right after the callback). */
let nextBuf: Buffer = shared;
const kPump = Symbol('halfclose.relay.pump');
const kEarly = Symbol('halfclose.relay.early');

interface ReadSocket extends net.Socket {
  /** The direction this socket is the source of, once the relay has started. */
  [kPump]?: Pump;
  /** Chunks read before the relay started. */
  [kEarly]?: Buffer[];
}

/**
 * `onread` for upstream sockets (net.connect): reads land in reused buffers instead of Node's fresh
 * 64 KiB allocation per read. A quiet socket (idle, or small messages) reads into one buffer shared
 * by all of them and its chunk is copied out (nread bytes), so an idle connection holds no buffer
 * of its own. A socket in a bulk transfer gets a private buffer from a small pool, written from
 * directly and reused as long as each chunk left the process synchronously; a chunk the destination
 * had to queue keeps its buffer (garbage once written) and the next read gets another. One object
 * for every socket: no per-connection allocation.
 */
export const UPSTREAM_ONREAD: net.OnReadOpts = {
  buffer: () => {
    const b = nextBuf;
    nextBuf = shared;
    return b;
  },
  callback(this: ReadSocket, n: number, buf: Uint8Array): boolean {
    const priv = buf !== shared;
    // A private buffer is written from directly; the shared one must be free for the next read.
    const chunk = priv ? (buf as Buffer).subarray(0, n) : Buffer.from((buf as Buffer).subarray(0, n));
    const pump = this[kPump];
    let retained = true;
    if (pump !== undefined) retained = pump.chunk(chunk);
    else (this[kEarly] ??= []).push(priv ? Buffer.from(chunk) : chunk);
    if (n >= BULK_READ_BYTES) {
      nextBuf = priv && !retained ? (buf as Buffer) : (pool.pop() ?? Buffer.allocUnsafeSlow(READ_BUFFER_BYTES));
    } else if (priv && !retained && pool.length < POOL_MAX) {
      pool.push(buf as Buffer);
    }
    return true; // flow control is the relay's: pause() and resume()
  },
};

/** How often a source whose reading is paused (backpressure) is checked for a reset. */
const PAUSED_RESET_POLL_MS = 500;

/**
 * One direction of one connection: everything its socket events need. The event handlers below
 * are shared by every socket (Node calls them with `this` = the socket, which carries its Pump), so
 * a connection costs two of these small objects instead of a dozen closures and their contexts.
 */
class Pump {
  /** The other direction (whose source is this one's destination). */
  peer!: Pump;
  /** This direction's source socket has emitted 'close'. */
  closed = false;
  /** While reading is paused, nothing watches the source: an RST from it would go unnoticed until
   *  the destination drains, which may be never (a stuck reader). Its socket error is polled instead. */
  resetWatch: NodeJS.Timeout | null = null;

  constructor(
    readonly conn: Connection,
    readonly src: net.Socket,
    readonly dst: net.Socket,
    readonly dir: Direction,
    readonly name: DirectionName,
    readonly srcSide: Side,
    readonly limit: number,
    readonly events: RelayEvents,
  ) {}

  /** Relays one chunk; true when the destination kept (part of) it queued. */
  chunk(chunk: Buffer): boolean {
    const dir = this.dir;
    const dst = this.dst;
    dir.bytes += chunk.length;
    this.conn.lastActivityAt = Date.now();
    // Bounded memory: past the limit, stop reading until the destination has drained.
    // write() returns false once past the stream's high-water mark, so 'drain' is guaranteed.
    if (!dst.write(chunk) && dst.writableLength >= this.limit && !dir.paused) {
      dir.paused = true;
      this.src.pause();
      dst.once('drain', onDstDrain);
      this.resetWatch = setInterval(pollPausedSource, PAUSED_RESET_POLL_MS, this);
      this.resetWatch.unref();
    }
    return dst.writableLength > 0;
  }

  stopWatch(): void {
    if (this.resetWatch) clearInterval(this.resetWatch);
    this.resetWatch = null;
  }

  resume(): void {
    this.stopWatch();
    this.dir.paused = false;
    this.src.resume();
  }

  /** The source read EOF. */
  eof(): void {
    const { conn, dir, srcSide } = this;
    if (dir.state !== 'open') return;
    // libuv reports EOF, not the error, for a socket that was reset while it still held unread
    // bytes (POLLHUP after a partial read): an RST that arrived while reading was paused. The
    // kernel kept the reset as the socket's error; forwarding a FIN would pass a crash off as a
    // complete stream. (Not only while paused: a FIN and then an RST that both arrive before the
    // loop reads also end in EOF, since the kernel reports the FIN first.)
    const reset = pendingResetOf(this.src);
    if (reset !== null) {
      if (conn.reason === null) conn.error = `${srcSide}: ${reset} (after its last bytes)`;
      abortConnection(conn, reasonForError(srcSide, Object.assign(new Error(reset), { code: reset }), conn));
      return;
    }
    dir.state = 'fin-received';
    dir.finReceivedAt = Date.now();
    conn.lastActivityAt = dir.finReceivedAt;
    if (conn.halfClosedAt === 0) conn.halfClosedAt = dir.finReceivedAt;
    this.events.halfClosed(conn, this.name);
    // end() shuts down the write side once everything queued before it has been written.
    this.dst.end((err?: Error | null) => {
      if (err || dir.state !== 'fin-received') return; // failed or aborted: the error path has it
      // Node ignores shutdown()'s own result, so a FIN "forwarded" into a socket the peer had
      // already reset (an RST that arrived after that socket's EOF, while libuv was not reading
      // it) would look like a clean both-fin. The kernel kept the reset as the socket's error.
      const code = pendingResetOf(this.dst);
      if (code !== null) {
        const dstSide: Side = srcSide === 'downstream' ? 'upstream' : 'downstream';
        if (conn.reason === null) conn.error = `${dstSide}: ${code} (reset before our FIN reached it)`;
        abortConnection(conn, reasonForError(dstSide, Object.assign(new Error(code), { code }), conn));
        return;
      }
      dir.state = 'fin-forwarded';
      dir.finForwardedAt = Date.now();
    });
  }

  error(err: NodeJS.ErrnoException): void {
    const conn = this.conn;
    if (conn.reason === null) conn.error = `${this.srcSide}: ${err.code ?? err.message}`;
    abortConnection(conn, reasonForError(this.srcSide, err, conn));
  }

  /** The source socket closed; the connection ends when both have. */
  close(): void {
    this.stopWatch();
    if (this.closed) return;
    this.closed = true;
    if (!this.peer.closed) return;
    const conn = this.conn;
    if (conn.reason === null) {
      conn.reason = conn.c2s.state === 'fin-forwarded' && conn.s2c.state === 'fin-forwarded' ? 'both-fin' : 'downstream-error';
    }
    conn.closedAt = Date.now();
    this.events.finished(conn);
  }
}

// Shared socket event handlers: `this` is the socket, its Pump the direction it is the source of.
function onSrcData(this: ReadSocket, chunk: Buffer): void {
  this[kPump]!.chunk(chunk);
}
function onSrcEnd(this: ReadSocket): void {
  this[kPump]!.eof();
}
function onSrcError(this: ReadSocket, err: NodeJS.ErrnoException): void {
  this[kPump]!.error(err);
}
function onSrcClose(this: ReadSocket): void {
  this[kPump]!.close();
}
/** 'drain' on a destination: resume the direction that writes into it (the peer of its own). */
function onDstDrain(this: ReadSocket): void {
  this[kPump]!.peer.resume();
}
function pollPausedSource(p: Pump): void {
  const code = pendingResetOf(p.src);
  if (code === null) return;
  p.stopWatch();
  if (p.conn.reason === null) p.conn.error = `${p.srcSide}: ${code} (while reading from it was paused)`;
  abortConnection(p.conn, reasonForError(p.srcSide, Object.assign(new Error(code), { code }), p.conn));
}

/** Starts relaying between conn.client and conn.upstream (both connected). */
export function startRelay(conn: Connection, bufferLimitBytes: number, events: RelayEvents): void {
  const client = conn.client as ReadSocket;
  const upstream = conn.upstream! as ReadSocket;
  const c2s = new Pump(conn, client, upstream, conn.c2s, 'c2s', 'downstream', bufferLimitBytes, events);
  const s2c = new Pump(conn, upstream, client, conn.s2c, 's2c', 'upstream', bufferLimitBytes, events);
  c2s.peer = s2c;
  s2c.peer = c2s;
  for (const p of [c2s, s2c]) {
    const rs = p.src as ReadSocket;
    rs[kPump] = p;
    // An upstream socket made with UPSTREAM_ONREAD hands its chunks to its Pump; any other socket
    // emits 'data'. Listening to 'data' also puts the socket in flowing mode, so EOF becomes 'end'.
    const early = rs[kEarly];
    if (early !== undefined) {
      rs[kEarly] = undefined;
      for (const c of early) p.chunk(c);
    }
    rs.on('close', onSrcClose);
    rs.on('data', onSrcData);
    rs.on('end', onSrcEnd);
    rs.on('error', onSrcError);
  }
  client.resume();
}

/** The error the kernel recorded on a socket we were not reading (ECONNRESET, EPIPE, ETIMEDOUT), or null. */
function pendingResetOf(socket: net.Socket): string | null {
  try {
    return takeSocketError(socketFd(socket));
  } catch {
    return null; // no descriptor left: nothing more to learn
  }
}
