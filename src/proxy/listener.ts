// Binds one listening socket per configured listener. Accepted sockets arrive paused, with
// half-open allowed (a client's FIN must not close our write side) and Nagle off.

import net from 'node:net';
import { HalfcloseError } from '../errors.js';
import { AF_INET, AF_INET6, errno, libcCalls, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM } from '../kernel/libc.js';
import { endpointAt, pushAddr, sockaddrOf, SOCKADDR_MAX } from '../kernel/sockaddr.js';
import { errnoName, IPPROTO_TCP, SOL_IPV6, SOL_SOCKET, TCP_NODELAY } from '../kernel/sockopt.js';
import { formatEndpoint, type Endpoint } from '../util/address.js';
import type { ListenerConfig } from '../config/schema.js';

const BACKLOG = 1024;
const SO_REUSEADDR = 2;
const IPV6_V6ONLY = 26;

function listenError(config: ListenerConfig, code: string | undefined, cause: unknown): HalfcloseError {
  const why =
    code === 'EADDRINUSE'
      ? 'address already in use'
      : code === 'EADDRNOTAVAIL'
        ? 'address is not local to this host or namespace'
        : code === 'EACCES'
          ? 'permission denied'
          : (code ?? String(cause));
  return new HalfcloseError('HC_ERR_LISTEN', `listener "${config.name}" cannot listen on ${formatEndpoint(config.listen)}: ${why}`, { cause });
}

export interface BoundListener {
  readonly config: ListenerConfig;
  readonly server: net.Server;
  /** The address actually bound (port 0 resolved). */
  readonly address: Endpoint;
}

export function bindListener(config: ListenerConfig, onSocket: (socket: net.Socket, l: ListenerConfig) => void): Promise<BoundListener> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    server.on('connection', (socket) => onSocket(socket, config));
    const onError = (err: NodeJS.ErrnoException): void => reject(listenError(config, err.code ?? err.message, err));
    server.once('error', onError);
    server.listen({ host: config.listen.host, port: config.listen.port, backlog: BACKLOG }, () => {
      server.removeListener('error', onError);
      const a = server.address() as net.AddressInfo;
      resolve({ config, server, address: { host: a.address, port: a.port, family: a.family === 'IPv6' ? 6 : 4 } });
    });
  });
}

/**
 * Binds a non-blocking listening socket with libc calls, for the splice relay's worker to accept
 * on: the options libuv sets (SO_REUSEADDR; an IPv6 wildcard takes IPv4 clients too) and
 * TCP_NODELAY for the sockets it accepts, the same backlog and the same errors as bindListener.
 * The caller owns the descriptor.
 */
export function bindRawListener(config: ListenerConfig): { fd: number; address: Endpoint } {
  const sys = libcCalls();
  const addr = sockaddrOf(config.listen);
  const v6 = config.listen.family === 6;
  const fd = sys.socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw listenError(config, errnoName(errno()), 'socket');
  const one = Buffer.alloc(4);
  const fail = (): never => {
    const code = errnoName(errno());
    sys.close(fd);
    throw listenError(config, code, code);
  };
  one.writeInt32LE(1);
  if (sys.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) !== 0) fail();
  // Accepted sockets inherit TCP_NODELAY from the listener (the kernel clones it): one call here
  // instead of one per connection.
  if (sys.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4) !== 0) fail();
  if (v6) {
    one.writeInt32LE(0);
    if (sys.setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, one, 4) !== 0) fail();
  }
  if (sys.bind(fd, addr, addr.length) !== 0 || sys.listen(fd, BACKLOG) !== 0) fail();
  const buf = Buffer.alloc(SOCKADDR_MAX);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(SOCKADDR_MAX);
  if (sys.getsockname(fd, buf, len) !== 0) fail();
  const parts: number[] = [];
  pushAddr(parts, buf);
  const bound = endpointAt(parts, 0)!;
  return { fd, address: { host: config.listen.host, port: bound.port, family: v6 ? 6 : 4 } };
}
