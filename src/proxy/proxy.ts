// The proxy composes the stages of a connection's life:
//   listener (accept) -> destination (fixed or original) -> connect (with timeout)
//   -> relay (both directions, half-close exact) -> finish (one close reason, one log line).
// Observers (the conntrack guard, metrics) are told of each stage; they never steer the relay.

import type net from 'node:net';
import { upstreamSourceFor, type ProxyConfig, type ListenerConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { formatEndpoint, unmapIPv4, type Endpoint } from '../util/address.js';
import { createAccessLog, type AccessLog } from './accesslog.js';
import { connectUpstream } from './connect.js';
import { FixedDestination, localAddresses, OriginalDestination, type DestinationResolver } from './destination.js';
import { ConntrackGuard, type GuardOptions } from './guard.js';
import { bindListener, bindRawListener, type BoundListener } from './listener.js';
import { Connection, Registry, type CloseReason } from './registry.js';
import { abortConnection, resetSocket, startRelay, type DirectionName, type RelayEvents } from './relay.js';
import { SpliceRelay, type RawListener, type SpliceHost } from './splice.js';
import { libcCalls } from '../kernel/libc.js';
import { sockaddrOf } from '../kernel/sockaddr.js';
import { ConnectionTimers } from './timers.js';

export interface ProxyObserver {
  /** A client connection was accepted (before its destination is known). */
  accepted?(conn: Connection): void;
  /** The upstream connection is up; relaying starts right after. */
  connected?(conn: Connection): void;
  /** A FIN was read in `dir`; the connection is half-closed (or closing, if the other direction already was). */
  halfClosed?(conn: Connection, dir: DirectionName): void;
  /** Both sockets are closed and `conn.reason` is final. */
  closed?(conn: Connection): void;
}

export interface ProxyOptions {
  logger: Logger;
  /** Defaults to the config's access-log target. */
  accessLog?: AccessLog;
  /** Replaces destination resolution per listener (tests). */
  resolverFor?: (l: ListenerConfig) => DestinationResolver;
  /** Overrides for the conntrack guard (tests: a fake CLOSE_WAIT source, faster polling). */
  guard?: GuardOptions;
  /** Replaces the splice relay's worker module (bench/books-cost.ts: a stand-in that sends records without sockets). */
  spliceWorkerUrl?: URL;
}

export class Proxy {
  readonly registry = new Registry();
  readonly config: ProxyConfig;
  /** The conntrack guard: keepalive on half-closed connections; `guard.status()` for metrics. */
  readonly guard: ConntrackGuard;
  private readonly logger: Logger;
  private readonly accessLog: AccessLog;
  private readonly observers: ProxyObserver[] = [];
  private readonly timers: ConnectionTimers;
  private readonly resolvers = new Map<string, DestinationResolver>();
  private bound: BoundListener[] = [];
  /** Listening sockets the splice relay's worker accepts on. */
  private raw: RawListener[] = [];
  /** The splice relay's worker, when `relay: splice` and the kernel lets it start: it accepts, connects and relays every connection. Else Node accepts and connects, and the relay copies. */
  private splice: SpliceRelay | null = null;
  private lastAcceptWarningAt = 0;
  private draining = false;
  /** One per pending drain(): a second drain (SIGTERM after POST /drain, a second signal) must not orphan the first. */
  private readonly whenEmpty = new Set<() => void>();
  private readonly resolverFor: ((l: ListenerConfig) => DestinationResolver) | undefined;
  private readonly spliceWorkerUrl: URL | undefined;
  /** One for every connection (the relay passes the connection), not two closures per connection. */
  private readonly relayEvents: RelayEvents = {
    halfClosed: (c, dir) => {
      // Only the half-close timeout starts at a FIN; without it the deadlines armed at accept stand.
      if (this.config.halfCloseTimeoutMs > 0) this.timers.arm(c);
      for (const o of this.observers) o.halfClosed?.(c, dir);
    },
    finished: (c) => this.finish(c),
  };

  constructor(config: ProxyConfig, opts: ProxyOptions) {
    this.config = config;
    this.logger = opts.logger;
    this.accessLog =
      opts.accessLog ??
      createAccessLog(config.accessLog, (err) => this.logger.error({ accessLog: config.accessLog, err: err.code ?? err.message }, `cannot write the access log: ${err.code ?? err.message}; lines are dropped until a write succeeds`));
    this.resolverFor = opts.resolverFor;
    this.spliceWorkerUrl = opts.spliceWorkerUrl;
    this.timers = new ConnectionTimers(config, (conn, reason) => this.expire(conn, reason));
    this.guard = new ConntrackGuard(config, this.logger, opts.guard);
    this.observe(this.guard);
  }

  observe(o: ProxyObserver): void {
    this.observers.push(o);
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Bound listeners with their real addresses (port 0 resolved). */
  listeners(): readonly { name: string; kind: string; address: Endpoint }[] {
    return [...this.raw, ...this.bound].map((b) => ({ name: b.config.name, kind: b.config.kind, address: b.address }));
  }

  /** Binds every listener; on any failure closes those already bound and throws HC_ERR_LISTEN. */
  async start(): Promise<void> {
    if (this.config.relay === 'splice' && (await this.startSplice())) {
      this.guard.start();
      return;
    }
    // Resolvers exist before the first bind: a redirected connection can arrive on the first
    // listener while the next one is still binding. The loop guard's port set fills as they bind.
    const ownPorts = new Set<number>(this.config.listeners.map((l) => l.listen.port).filter((p) => p !== 0));
    for (const l of this.config.listeners) {
      this.resolvers.set(
        l.name,
        this.resolverFor?.(l) ?? (l.kind === 'route' ? new FixedDestination(l.upstream!) : new OriginalDestination(ownPorts)),
      );
    }
    try {
      for (const l of this.config.listeners) {
        const b = await bindListener(l, (socket, cfg) => this.accept(socket, cfg));
        this.bound.push(b);
        ownPorts.add(b.address.port);
      }
    } catch (err) {
      await this.closeListeners();
      throw err;
    }
    this.guard.start();
  }

  /**
   * Binds the listeners for the splice relay's worker and starts it. False when the relay cannot
   * serve this configuration (a host name to resolve, a test's resolver) or the worker cannot
   * start: Node then accepts, connects and copies.
   */
  private async startSplice(): Promise<boolean> {
    const names = this.config.listeners.filter((l) => l.listen.family === 0 || (l.upstream !== null && l.upstream.family === 0));
    if (this.resolverFor !== undefined) return false;
    if (names.length > 0) {
      this.logger.info({ listeners: names.map((l) => l.name) }, 'splice relay off: a listen address or route upstream is a host name, which Node resolves for each connection; every connection is copied');
      return false;
    }
    try {
      for (const l of this.config.listeners) this.raw.push({ config: l, ...bindRawListener(l) });
    } catch (err) {
      this.closeRaw();
      throw err;
    }
    const ownPorts = new Set<number>(this.config.listeners.map((l) => l.listen.port).filter((p) => p !== 0));
    for (const r of this.raw) ownPorts.add(r.address.port);
    const source = (l: ListenerConfig, anyOfFamily: string): Uint8Array | null => {
      const host = upstreamSourceFor(l.upstreamSource, anyOfFamily);
      return host ? sockaddrOf({ host, port: 0 }) : null;
    };
    try {
      this.splice = await SpliceRelay.start({
        logger: this.logger,
        host: this.spliceHost,
        listeners: this.raw,
        workerListeners: this.raw.map((r) => ({
          fd: r.fd,
          target: r.config.kind === 'route' ? sockaddrOf(r.config.upstream!) : null,
          source4: source(r.config, '0.0.0.0'),
          source6: source(r.config, '::'),
        })),
        ownPorts: [...ownPorts],
        localHosts: [...localAddresses()],
        connectTimeoutMs: this.config.connectTimeoutMs,
        bufferLimitBytes: this.config.bufferLimitBytes,
        halfClosed: this.guard.status().halfClosed,
        established: this.guard.status().established,
        userTimeoutMs: this.config.userTimeoutMs,
        ...(this.spliceWorkerUrl ? { workerUrl: this.spliceWorkerUrl } : {}),
      });
    } catch (err) {
      this.closeRaw();
      this.logger.warn({ err: (err as Error).message }, 'splice relay unavailable: Node accepts, connects and copies every connection instead');
      return false;
    }
    this.guard.onHalfClosedChange((k) => this.splice?.setHalfClosedKeepalive(k));
    return true;
  }

  /**
   * The splice relay's worker died (its connections are reset and its listening sockets closed):
   * Node binds the same addresses again and carries new connections itself, so a sidecar whose
   * worker failed keeps serving instead of reporting ready while accepting nothing. Clients that
   * connect in between are refused.
   */
  private async copyFromNowOn(): Promise<void> {
    const addresses = this.raw.map((r) => ({ ...r.config, listen: r.address }));
    this.splice = null;
    this.raw = [];
    if (this.draining) return;
    const ownPorts = new Set<number>(addresses.map((l) => l.listen.port));
    try {
      for (const l of addresses) {
        this.resolvers.set(l.name, l.kind === 'route' ? new FixedDestination(l.upstream!) : new OriginalDestination(ownPorts));
        this.bound.push(await bindListener(l, (socket, cfg) => this.accept(socket, cfg)));
      }
      this.logger.warn({ listeners: addresses.map((l) => l.name) }, 'listening again without the splice relay: Node accepts, connects and copies every new connection');
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'cannot listen again after the splice relay failed');
    }
  }

  private closeRaw(): void {
    for (const r of this.raw) libcCalls().close(r.fd);
    this.raw = [];
  }

  /** What the proxy does with the connections the splice relay's worker reports. */
  private readonly spliceHost: SpliceHost = {
    accepted: (conn) => {
      this.registry.add(conn);
      for (const o of this.observers) o.accepted?.(conn);
      this.timers.arm(conn); // the max-duration and idle clocks run from accept
    },
    connected: (conn) => {
      for (const o of this.observers) o.connected?.(conn);
    },
    halfClosed: (conn, dir) => this.relayEvents.halfClosed(conn, dir),
    finished: (conn) => {
      if (!conn.connectedAt && (conn.reason === 'no-original-dst' || conn.reason === 'loop-refused')) {
        this.logger.warn({ conn: conn.id, listener: conn.listener.name, client: conn.clientAddr, reason: conn.reason }, conn.error ?? conn.reason);
      }
      this.finish(conn);
    },
    gone: () => void this.copyFromNowOn(),
    acceptFailed: (l, code) => {
      // Once a second at most: a listener out of descriptors fails every accept until some close.
      const now = Date.now();
      if (now - this.lastAcceptWarningAt < 1000) return;
      this.lastAcceptWarningAt = now;
      this.logger.warn({ listener: l.name, address: formatEndpoint(l.listen), code }, `cannot accept on listener "${l.name}": ${code}; accepting pauses for 100ms (raise the descriptor limit, ulimit -n, if this repeats)`);
    },
  };

  private accept(socket: net.Socket, l: ListenerConfig): void {
    const now = Date.now();
    const clientAddr: Endpoint = { host: unmapIPv4(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0, family: socket.remoteFamily === 'IPv6' ? 6 : 4 };
    const conn = new Connection(this.registry.allocateId(), l, socket, clientAddr, now);
    this.registry.add(conn);
    // Until the relay takes over, a client error only marks the connection; it is handled once connected.
    const onEarlyError = (err: NodeJS.ErrnoException): void => {
      if (conn.upstream === null) conn.error ??= `downstream: ${err.code ?? err.message}`;
    };
    socket.on('error', onEarlyError);
    for (const o of this.observers) o.accepted?.(conn);
    if (this.draining) {
      this.refuse(conn, 'drain', 'proxy is draining');
      return;
    }
    const resolution = this.resolvers.get(l.name)!.resolve(socket);
    if (!resolution.ok) {
      this.logger.warn({ conn: conn.id, listener: l.name, client: clientAddr, reason: resolution.reason }, resolution.detail);
      this.refuse(conn, resolution.reason, resolution.detail);
      return;
    }
    conn.target = resolution.target;
    conn.originalDst = resolution.originalDst;
    this.timers.arm(conn); // the max-duration and idle clocks run from accept
    void connectUpstream(resolution.target, { connectTimeoutMs: this.config.connectTimeoutMs, localAddress: upstreamSourceFor(l.upstreamSource, resolution.target.host) }).then((r) => {
      if (!r.ok) {
        this.refuse(conn, r.reason, r.detail);
        return;
      }
      const upstream = r.socket;
      conn.upstream = upstream;
      conn.connectedAt = Date.now();
      conn.upstreamLocal = { host: unmapIPv4(upstream.localAddress ?? ''), port: upstream.localPort ?? 0, family: upstream.localFamily === 'IPv6' ? 6 : 4 };
      if (conn.reason !== null) {
        // Ended while we were connecting (timer or drain): refuse() finishes it when the client closes.
        resetSocket(upstream);
        return;
      }
      if (socket.destroyed) {
        conn.reason = 'downstream-reset';
        resetSocket(upstream);
        this.finish(conn);
        return;
      }
      for (const o of this.observers) o.connected?.(conn);
      startRelay(conn, this.config.bufferLimitBytes, this.relayEvents);
      // The relay has its own error handler now; this one would keep accept()'s scope alive.
      socket.removeListener('error', onEarlyError);
    });
  }

  /** Ends a connection that never reached the relay: the client gets a reset, not an empty reply. */
  private refuse(conn: Connection, reason: CloseReason, detail: string): void {
    conn.reason ??= reason;
    if (reason !== 'drain') conn.error ??= detail;
    const client = conn.client;
    if (client === null || client.destroyed) {
      this.finish(conn);
      return;
    }
    client.once('close', () => {
      conn.closedAt = Date.now();
      this.finish(conn);
    });
    resetSocket(client);
  }

  private expire(conn: Connection, reason: CloseReason): void {
    this.logger.debug({ conn: conn.id, reason }, 'timer expired');
    if (conn.offload === null && conn.upstream === null) {
      // Still connecting: the connect callback sees the reason and resets the new upstream.
      this.refuse(conn, reason, reason);
      return;
    }
    abortConnection(conn, reason);
  }

  private finish(conn: Connection): void {
    if (!this.registry.has(conn)) return;
    conn.closedAt ||= Date.now();
    this.timers.disarm(conn);
    this.registry.remove(conn);
    this.accessLog.write(conn);
    for (const o of this.observers) o.closed?.(conn);
    if (this.registry.size === 0) for (const w of [...this.whenEmpty]) w();
  }

  private async closeListeners(): Promise<void> {
    await Promise.all([...this.bound.map((b) => new Promise<void>((r) => b.server.close(() => r()))), this.splice?.unlisten()]);
  }

  /**
   * Stops accepting, lets live connections finish, and resets what is left after `timeoutMs`
   * (default: the configured drain timeout; 0 resets at once). Resolves when no connection is left.
   */
  async drain(timeoutMs = this.config.drainTimeoutMs): Promise<void> {
    if (!this.draining) {
      this.draining = true;
      this.logger.info({ connections: this.registry.size, drainTimeoutMs: timeoutMs }, 'draining: no new connections');
    }
    const closed = this.closeListeners();
    // The worker reports the clients it took from the backlog before it answers: they drain too.
    await this.splice?.unlisten();
    if (this.registry.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          for (const c of [...this.registry.all()]) {
            if (c.offload === null && c.upstream === null) this.refuse(c, 'drain', 'drain timeout');
            else abortConnection(c, 'drain');
          }
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          this.whenEmpty.delete(done);
          resolve();
        };
        this.whenEmpty.add(done);
      });
    }
    await closed;
    await this.splice?.stop();
    this.guard.stop();
    this.accessLog.flush();
  }

  /** Immediate stop: drain with no grace. */
  async close(): Promise<void> {
    await this.drain(0);
  }
}
