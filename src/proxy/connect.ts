// Opens the upstream connection with a timeout. Failures map to a close reason so the client can
// be reset (never a clean EOF that would look like an empty reply) and the failure counted.

import net from 'node:net';
import type { Endpoint } from '../util/address.js';
import type { CloseReason } from './registry.js';
import { UPSTREAM_ONREAD } from './relay.js';

export type ConnectResult = { ok: true; socket: net.Socket } | { ok: false; reason: CloseReason; detail: string };

export interface ConnectOptions {
  /** 0 leaves it to the kernel's SYN retries. */
  connectTimeoutMs: number;
  /** Source address to bind (127.0.0.6 or ::6 for inbound, so interception lets it through). */
  localAddress: string | null;
}

function reasonFor(err: NodeJS.ErrnoException): CloseReason {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connect-refused';
    case 'ETIMEDOUT':
      return 'connect-timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'connect-unreachable';
    default:
      return 'connect-error';
  }
}

export function connectUpstream(target: Endpoint, opts: ConnectOptions): Promise<ConnectResult> {
  return new Promise((resolve) => {
    // Reads go through the relay's reusable buffers instead of a fresh 64 KiB allocation each.
    const socket = net.connect({
      onread: UPSTREAM_ONREAD,
      host: target.host,
      port: target.port,
      allowHalfOpen: true,
      noDelay: true,
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    });
    let timer: NodeJS.Timeout | null = null;
    const done = (r: ConnectResult): void => {
      if (timer) clearTimeout(timer);
      socket.removeListener('connect', onConnect);
      socket.removeListener('error', onError);
      resolve(r);
    };
    const onConnect = (): void => done({ ok: true, socket });
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.destroy();
      done({ ok: false, reason: reasonFor(err), detail: `${err.code ?? 'error'} connecting to ${target.host}:${target.port}` });
    };
    socket.once('connect', onConnect);
    socket.once('error', onError);
    if (opts.connectTimeoutMs > 0) {
      timer = setTimeout(() => {
        socket.destroy();
        done({ ok: false, reason: 'connect-timeout', detail: `no answer from ${target.host}:${target.port} within ${opts.connectTimeoutMs}ms` });
      }, opts.connectTimeoutMs);
    }
  });
}
