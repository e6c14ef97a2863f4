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
  for (const d of [conn.c2s, conn.s2c]) {
    if (d.state !== 'fin-forwarded' && d.state !== 'reset') {
      d.state = 'reset';
      d.resetAt = now;
    }
  }
  resetSocket(conn.client);
  resetSocket(conn.upstream);
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
const kSink = Symbol('halfclose.relay.sink');
const kEarly = Symbol('halfclose.relay.early');

interface ReadSocket extends net.Socket {
  /** The relay's chunk handler: true when the destination kept (part of) the chunk queued. */
  [kSink]?: (chunk: Buffer) => boolean;
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
    const sink = this[kSink];
    let retained = true;
    if (sink !== undefined) retained = sink(chunk);
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

/** Starts relaying between conn.client and conn.upstream (both connected). */
export function startRelay(conn: Connection, bufferLimitBytes: number, events: RelayEvents): void {
  const client = conn.client;
  const upstream = conn.upstream!;
  let open = 2;
  const onClose = (): void => {
    if (--open > 0) return;
    if (conn.reason === null) {
      conn.reason = conn.c2s.state === 'fin-forwarded' && conn.s2c.state === 'fin-forwarded' ? 'both-fin' : 'downstream-error';
    }
    conn.closedAt = Date.now();
    events.finished(conn);
  };
  client.once('close', onClose);
  upstream.once('close', onClose);
  pump(conn, client, upstream, conn.c2s, 'c2s', 'downstream', bufferLimitBytes, events);
  pump(conn, upstream, client, conn.s2c, 's2c', 'upstream', bufferLimitBytes, events);
  client.resume();
}

function pump(
  conn: Connection,
  src: net.Socket,
  dst: net.Socket,
  dir: Direction,
  name: DirectionName,
  srcSide: Side,
  limit: number,
  events: RelayEvents,
): void {
  // While reading is paused, nothing watches the source: an RST from it would go unnoticed until
  // the destination drains, which may be never (a stuck reader). Its socket error is polled instead.
  let resetWatch: NodeJS.Timeout | null = null;
  const stopWatch = (): void => {
    if (resetWatch) clearInterval(resetWatch);
    resetWatch = null;
  };
  const watchForReset = (): void => {
    resetWatch = setInterval(() => {
      const code = pendingResetOf(src);
      if (code === null) return;
      stopWatch();
      if (conn.reason === null) conn.error = `${srcSide}: ${code} (while reading from it was paused)`;
      abortConnection(conn, reasonForError(srcSide, Object.assign(new Error(code), { code }), conn));
    }, PAUSED_RESET_POLL_MS);
    resetWatch.unref();
  };
  src.once('close', stopWatch);
  const resume = (): void => {
    stopWatch();
    dir.paused = false;
    src.resume();
  };
  const onChunk = (chunk: Buffer): boolean => {
    dir.bytes += chunk.length;
    conn.lastActivityAt = Date.now();
    // Bounded memory: past the limit, stop reading until the destination has drained.
    // write() returns false once past the stream's high-water mark, so 'drain' is guaranteed.
    if (!dst.write(chunk) && dst.writableLength >= limit && !dir.paused) {
      dir.paused = true;
      src.pause();
      dst.once('drain', resume);
      watchForReset();
    }
    return dst.writableLength > 0;
  };
  // An upstream socket made with UPSTREAM_ONREAD hands its chunks to the sink; any other socket
  // emits 'data'. Listening to 'data' also puts the socket in flowing mode, so EOF becomes 'end'.
  const rs = src as ReadSocket;
  rs[kSink] = onChunk;
  const early = rs[kEarly];
  if (early !== undefined) {
    rs[kEarly] = undefined;
    for (const c of early) onChunk(c);
  }
  src.on('data', onChunk);
  src.on('end', () => {
    if (dir.state !== 'open') return;
    // libuv reports EOF, not the error, for a socket that was reset while it still held unread
    // bytes (POLLHUP after a partial read): an RST that arrived while reading was paused. The
    // kernel kept the reset as the socket's error; forwarding a FIN would pass a crash off as a
    // complete stream.
    const reset = pendingResetOf(src);
    if (reset !== null) {
      if (conn.reason === null) conn.error = `${srcSide}: ${reset} (after its last bytes)`;
      abortConnection(conn, reasonForError(srcSide, Object.assign(new Error(reset), { code: reset }), conn));
      return;
    }
    dir.state = 'fin-received';
    dir.finReceivedAt = Date.now();
    conn.lastActivityAt = dir.finReceivedAt;
    if (conn.halfClosedAt === 0) conn.halfClosedAt = dir.finReceivedAt;
    events.halfClosed(conn, name);
    // end() shuts down the write side once everything queued before it has been written.
    dst.end((err?: Error | null) => {
      if (err || dir.state !== 'fin-received') return; // failed or aborted: the error path has it
      // Node ignores shutdown()'s own result, so a FIN "forwarded" into a socket the peer had
      // already reset (an RST that arrived after that socket's EOF, while libuv was not reading
      // it) would look like a clean both-fin. The kernel kept the reset as the socket's error.
      const code = pendingResetOf(dst);
      if (code !== null) {
        const dstSide: Side = srcSide === 'downstream' ? 'upstream' : 'downstream';
        if (conn.reason === null) conn.error = `${dstSide}: ${code} (reset before our FIN reached it)`;
        abortConnection(conn, reasonForError(dstSide, Object.assign(new Error(code), { code }), conn));
        return;
      }
      dir.state = 'fin-forwarded';
      dir.finForwardedAt = Date.now();
    });
  });
  src.on('error', (err: NodeJS.ErrnoException) => {
    if (conn.reason === null) {
      conn.error = `${srcSide}: ${err.code ?? err.message}`;
    }
    abortConnection(conn, reasonForError(srcSide, err, conn));
  });
}

/** The error the kernel recorded on a socket we were not reading (ECONNRESET, EPIPE, ETIMEDOUT), or null. */
function pendingResetOf(socket: net.Socket): string | null {
  try {
    return takeSocketError(socketFd(socket));
  } catch {
    return null; // no descriptor left: nothing more to learn
  }
}
