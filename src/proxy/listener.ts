// Binds one listening socket per configured listener. Accepted sockets arrive paused, with
// half-open allowed (a client's FIN must not close our write side) and Nagle off.

import net from 'node:net';
import { HalfcloseError } from '../errors.js';
import { formatEndpoint, type Endpoint } from '../util/address.js';
import type { ListenerConfig } from '../config/schema.js';

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
    const onError = (err: NodeJS.ErrnoException): void => {
      const why =
        err.code === 'EADDRINUSE'
          ? 'address already in use'
          : err.code === 'EADDRNOTAVAIL'
            ? 'address is not local to this host or namespace'
            : err.code === 'EACCES'
              ? 'permission denied'
              : (err.code ?? err.message);
      reject(new HalfcloseError('HC_ERR_LISTEN', `listener "${config.name}" cannot listen on ${formatEndpoint(config.listen)}: ${why}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen({ host: config.listen.host, port: config.listen.port, backlog: 1024 }, () => {
      server.removeListener('error', onError);
      const a = server.address() as net.AddressInfo;
      resolve({ config, server, address: { host: a.address, port: a.port, family: a.family === 'IPv6' ? 6 : 4 } });
    });
  });
}
