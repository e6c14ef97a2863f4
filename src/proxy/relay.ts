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
  const resume = (): void => {
    dir.paused = false;
    src.resume();
  };
  src.on('data', (chunk: Buffer) => {
    dir.bytes += chunk.length;
    conn.lastActivityAt = Date.now();
    // Bounded memory: past the limit, stop reading until the destination has drained.
    // write() returns false once past the stream's high-water mark, so 'drain' is guaranteed.
    if (!dst.write(chunk) && dst.writableLength >= limit && !dir.paused) {
      dir.paused = true;
      src.pause();
      dst.once('drain', resume);
    }
  });
  src.on('end', () => {
    if (dir.state !== 'open') return;
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
