// The admin HTTP server (docs/admin.md): Prometheus metrics, live connections as JSON, config,
// health and readiness, POST /drain, and the live page. node:http only; short text bodies on errors.

import http from 'node:http';
import { describeConfig, isLoopback } from '../config/schema.js';
import { HalfcloseError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Proxy } from '../proxy/proxy.js';
import type { Connection } from '../proxy/registry.js';
import { formatEndpoint, unmapIPv4, type Endpoint } from '../util/address.js';
import { ACTIVE_STATES, ProxyMetrics } from './metrics.js';
import { PAGE_HTML } from './page.js';

export interface AdminOptions {
  /** Where to listen; port 0 picks a free port (see AdminServer.address). */
  address: Endpoint;
  logger: Logger;
  /** Metrics to expose. Default: a new ProxyMetrics observing `proxy`, with process metrics. */
  metrics?: ProxyMetrics;
  /**
   * What POST /drain does once the caller is allowed. Default: `proxy.drain()` (stop accepting,
   * let live connections finish within the drain timeout). The CLI passes its SIGTERM path, so a
   * drained proxy also exits.
   */
  onDrain?: () => void;
}

export interface AdminServer {
  /** The bound address (port 0 resolved). */
  readonly address: Endpoint;
  /** `http://HOST:PORT/` */
  readonly url: string;
  readonly metrics: ProxyMetrics;
  /** Stops listening and closes idle and in-flight admin connections. */
  close(): Promise<void>;
}

/** `?state=` values: every live state, plus `half-closed` for either side. */
export const STATE_FILTERS = ['half-closed', ...ACTIVE_STATES] as const;

type Reply = { status: number; type: 'text' | 'json' | 'html' | 'metrics'; body: string; headers?: Record<string, string> };
type Handler = (req: http.IncomingMessage, url: URL) => Reply | Promise<Reply>;

const text = (status: number, body: string, headers?: Record<string, string>): Reply => ({ status, type: 'text', body: body.endsWith('\n') ? body : `${body}\n`, ...(headers ? { headers } : {}) });
const json = (body: unknown, status = 200): Reply => ({ status, type: 'json', body: `${JSON.stringify(body, null, 2)}\n` });

function matchesState(c: Connection, filters: Set<string>): boolean {
  const s = c.state;
  return filters.has(s) || (filters.has('half-closed') && (s === 'half-closed-client' || s === 'half-closed-server'));
}

/** True when the Host header names this machine's loopback (or is absent, as in HTTP/1.0). */
function loopbackHost(hostHeader: string | undefined): boolean {
  if (hostHeader === undefined) return true;
  let host: string;
  try {
    host = new URL(`http://${hostHeader}`).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return false;
  }
  return isLoopback(host);
}

export async function startAdminServer(proxy: Proxy, opts: AdminOptions): Promise<AdminServer> {
  const metrics = opts.metrics ?? new ProxyMetrics(proxy);
  const logger = opts.logger;
  const boundToLoopback = isLoopback(opts.address.host);
  const onDrain = opts.onDrain ?? ((): void => void proxy.drain());

  const routes: Record<string, Partial<Record<'GET' | 'POST', Handler>>> = {
    '/': { GET: () => ({ status: 200, type: 'html', body: PAGE_HTML }) },
    '/metrics': { GET: async () => ({ status: 200, type: 'metrics', body: await metrics.exposition() }) },
    '/stats': { GET: async () => json(await metrics.stats()) },
    '/connections': {
      GET: (_req, url) => {
        const wanted = url.searchParams.getAll('state').flatMap((v) => v.split(',')).filter((v) => v !== '');
        const bad = wanted.find((v) => !(STATE_FILTERS as readonly string[]).includes(v));
        if (bad !== undefined) return text(400, `unknown state "${bad}"; expected one of: ${STATE_FILTERS.join(', ')}`);
        const listener = url.searchParams.get('listener');
        const filters = new Set(wanted);
        const now = Date.now();
        const list = [...proxy.registry.all()]
          .filter((c) => (filters.size === 0 || matchesState(c, filters)) && (listener === null || c.listener.name === listener))
          .sort((a, b) => a.id - b.id)
          .map((c) => c.toJSON(now));
        return json({ time: new Date(now).toISOString(), draining: proxy.isDraining, count: list.length, connections: list });
      },
    },
    '/config': { GET: () => json(describeConfig(proxy.config)) },
    '/healthz': { GET: () => text(200, 'ok') },
    // Ready = every configured listener bound and not draining. The CLI binds the admin port before
    // the listeners, so a load balancer polling /ready sees false until the proxy can take traffic.
    '/ready': { GET: () => (!proxy.isDraining && proxy.listeners().length === proxy.config.listeners.length ? text(200, 'true') : text(503, 'false')) },
    '/drain': {
      POST: (req) => {
        const peer = unmapIPv4(req.socket.remoteAddress ?? '');
        if (!isLoopback(peer)) return text(403, `POST /drain is only accepted from loopback, not from ${peer}`);
        // A web page the operator has open could POST here cross-site; browsers always send Origin then.
        const origin = req.headers.origin;
        if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`) return text(403, `POST /drain is not accepted from another origin (${origin})`);
        if (proxy.isDraining) return text(200, `already draining; ${proxy.registry.size} connections left`);
        logger.warn({ peer }, 'POST /drain: draining');
        onDrain();
        return text(202, `draining: no new connections; ${proxy.registry.size} connections left, drain timeout ${proxy.config.drainTimeoutMs}ms`);
      },
    },
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    let reply: Reply;
    try {
      const url = new URL(req.url ?? '/', 'http://admin.invalid');
      const route = routes[url.pathname];
      // With a loopback bind, a Host naming anything else is DNS rebinding: a remote page reading our API.
      if (boundToLoopback && !loopbackHost(req.headers.host)) {
        reply = text(403, `Host "${req.headers.host}" is not a loopback name; the admin API is bound to loopback`);
      } else if (!route) {
        reply = text(404, `not found: ${url.pathname}; try GET / or see docs/admin.md`);
      } else {
        const method = req.method === 'HEAD' ? 'GET' : req.method;
        const handler = method === 'GET' || method === 'POST' ? route[method] : undefined;
        if (handler) {
          reply = await handler(req, url);
        } else {
          const allow = Object.keys(route).flatMap((m) => (m === 'GET' ? ['GET', 'HEAD'] : [m])).join(', ');
          reply = text(405, `method ${req.method} not allowed on ${url.pathname}; allowed: ${allow}`, { Allow: allow });
        }
      }
    } catch (err) {
      logger.error({ err, url: req.url }, 'admin request failed');
      reply = text(500, `internal error: ${(err as Error).message}`);
    }
    const type = { text: 'text/plain; charset=utf-8', json: 'application/json; charset=utf-8', html: 'text/html; charset=utf-8', metrics: metrics.contentType }[reply.type];
    res.writeHead(reply.status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(reply.body), ...reply.headers });
    res.end(req.method === 'HEAD' ? undefined : reply.body);
    logger.debug({ method: req.method, url: req.url, status: reply.status }, 'admin request');
  };

  const server = http.createServer((req, res) => {
    req.resume(); // no route reads a body; drain it so keep-alive works
    void handle(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const why = err.code === 'EADDRINUSE' ? 'address already in use' : err.code === 'EADDRNOTAVAIL' ? 'address is not local to this host or namespace' : err.code === 'EACCES' ? 'permission denied' : (err.code ?? err.message);
      reject(new HalfcloseError('HC_ERR_LISTEN', `admin server cannot listen on ${formatEndpoint(opts.address)}: ${why} (choose another with --admin HOST:PORT, or --admin off)`, { cause: err }));
    };
    server.once('error', onError);
    server.listen({ host: opts.address.host, port: opts.address.port }, () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => logger.error({ err }, 'admin server error'));
  const a = server.address() as import('node:net').AddressInfo;
  const address: Endpoint = { host: a.address, port: a.port, family: a.family === 'IPv6' ? 6 : 4 };
  return {
    address,
    url: `http://${formatEndpoint(address)}/`,
    metrics,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
