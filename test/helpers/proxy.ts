// Test helpers: an in-process proxy on 127.0.0.1:0 with a captured access log, plus small
// socket utilities. Tests use real sockets throughout.

import net from 'node:net';
import { readdirSync } from 'node:fs';
import { once } from 'node:events';
import { resolveConfig, type FileConfig, type ProxyConfig } from '../../src/config/schema.js';
import { silentLogger } from '../../src/log.js';
import { Proxy, type ProxyOptions } from '../../src/proxy/proxy.js';
import type { AccessLog } from '../../src/proxy/accesslog.js';
import type { Connection } from '../../src/proxy/registry.js';
import { socketFd } from '../../src/kernel/sockopt.js';

export interface LoggedConnection {
  id: number;
  reason: string;
  [k: string]: unknown;
}

export interface TestProxy {
  proxy: Proxy;
  config: ProxyConfig;
  /** Access-log entries, one per closed connection, in close order. */
  log: LoggedConnection[];
  /** Port of the first listener. */
  port: number;
  /** Resolves when `n` connections have closed in total. */
  closed(n: number): Promise<LoggedConnection[]>;
  close(): Promise<void>;
}

/** Starts a proxy routing 127.0.0.1:0 to `upstreamPort`, with `overrides` on the file config. */
export async function startRouteProxy(upstreamPort: number, overrides: FileConfig = {}, opts: Partial<ProxyOptions> = {}): Promise<TestProxy> {
  const config = resolveConfig(
    {
      listeners: [{ kind: 'route', name: 'test', listen: '127.0.0.1:0', upstream: `127.0.0.1:${upstreamPort}` }],
      admin: { address: 'off' },
      ...overrides,
    },
    'test',
  );
  return startProxy(config, opts);
}

export async function startProxy(config: ProxyConfig, opts: Partial<ProxyOptions> = {}): Promise<TestProxy> {
  const log: LoggedConnection[] = [];
  const waiters: { n: number; resolve: (l: LoggedConnection[]) => void }[] = [];
  const accessLog: AccessLog = {
    write(conn) {
      log.push(conn.toJSON(conn.closedAt) as unknown as LoggedConnection);
      for (const w of [...waiters]) {
        if (log.length >= w.n) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(log);
        }
      }
    },
    flush() {},
  };
  const proxy = new Proxy(config, { logger: silentLogger(), accessLog, ...opts });
  await proxy.start();
  return {
    proxy,
    config,
    log,
    port: proxy.listeners()[0]!.address.port,
    closed(n) {
      if (log.length >= n) return Promise.resolve(log);
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    close: () => proxy.close(),
  };
}

/** The descriptors of a live connection's two sockets, whoever holds them (Node's sockets, or the splice relay's worker). */
export function socketFds(conn: Connection): [number, number] {
  if (conn.client !== null) return [socketFd(conn.client), socketFd(conn.upstream!)];
  return [conn.clientFd, conn.upstreamFd];
}

/** Open file descriptors of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** A TCP server on 127.0.0.1:0 handing each accepted socket (half-open allowed) to `onSocket`. */
export async function startServer(onSocket: (s: net.Socket) => void): Promise<{ server: net.Server; port: number; close(): Promise<void> }> {
  const server = net.createServer({ allowHalfOpen: true }, onSocket);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

export async function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  const s = net.connect({ port, host, allowHalfOpen: true });
  await once(s, 'connect');
  return s;
}

/**
 * Connects and reads until EOF or error, without waiting for the connect first: a proxy that
 * resets a client at once can have its RST arrive before the connect is reported, and that is a
 * reset all the same ('reset'; a refused connect is 'ECONNREFUSED').
 */
export function connectAndObserve(port: number, host = '127.0.0.1'): Promise<Observed> {
  return observe(net.connect({ port, host, allowHalfOpen: true }));
}

export interface Observed {
  data: Buffer;
  /** 'eof' (FIN read), 'reset' (ECONNRESET), or another error code. */
  end: 'eof' | 'reset' | string;
}

/** Reads a socket until EOF or error; resolves with the bytes and how it ended. */
export function observe(s: net.Socket): Promise<Observed> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const done = (end: string): void => {
      if (settled) return;
      settled = true;
      resolve({ data: Buffer.concat(chunks), end });
    };
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => done('eof'));
    s.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNRESET' ? 'reset' : (e.code ?? e.message)));
    s.on('close', () => done('closed'));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` every 20 ms until it is true or `timeoutMs` passes. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await sleep(20);
  }
}
