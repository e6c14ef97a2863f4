// Where an accepted connection goes: a route's fixed upstream, or the original destination an
// iptables REDIRECT rewrote (SO_ORIGINAL_DST). The seam lets unit tests use a fixed resolver while
// the real one is tested in a network namespace.

import net from 'node:net';
import os from 'node:os';
import { HalfcloseError } from '../errors.js';
import { originalDst, socketFd } from '../kernel/sockopt.js';
import { unmapIPv4, type Endpoint, type OriginalDst } from '../util/address.js';
import type { CloseReason } from './registry.js';

export type Resolution = { ok: true; target: Endpoint; originalDst: OriginalDst | null } | { ok: false; reason: CloseReason; detail: string };

export interface DestinationResolver {
  resolve(socket: net.Socket): Resolution;
}

export class FixedDestination implements DestinationResolver {
  constructor(private readonly upstream: Endpoint) {}
  resolve(): Resolution {
    return { ok: true, target: this.upstream, originalDst: null };
  }
}

/** The addresses of this network namespace, to recognise a destination that points back at us. */
export function localAddresses(): Set<string> {
  const set = new Set<string>(['127.0.0.1', '::1', '0.0.0.0', '::']);
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) set.add(a.address);
  return set;
}

export class OriginalDestination implements DestinationResolver {
  /** Ports of our own listeners: a destination that is one of them on a local address is a loop. */
  constructor(private readonly ownPorts: ReadonlySet<number>) {}

  resolve(socket: net.Socket): Resolution {
    let dst: OriginalDst;
    try {
      dst = originalDst(socketFd(socket), socket.localAddress ?? '');
    } catch (err) {
      if (err instanceof HalfcloseError) return { ok: false, reason: 'no-original-dst', detail: err.message };
      throw err;
    }
    const host = unmapIPv4(dst.host);
    // Not redirected: conntrack reports the address the client really dialled, which is our listener.
    if (this.ownPorts.has(dst.port) && (host === unmapIPv4(socket.localAddress ?? '') || localAddresses().has(host))) {
      return { ok: false, reason: 'loop-refused', detail: `original destination ${host}:${dst.port} is this proxy's own listener` };
    }
    return { ok: true, target: { ...dst, host }, originalDst: { ...dst, host } };
  }
}
