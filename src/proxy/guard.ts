// The conntrack guard (DESIGN.md §1): while a connection is half-closed, TCP keepalive runs on both
// of its sockets with idle and interval below the namespace's conntrack CLOSE_WAIT timeout, so the
// entry that un-NATs the application's late FIN never expires; a lost entry or a vanished peer shows
// up as a probe answered by RST or left unanswered, and the connection ends as `keepalive-dead`.

import { formatDuration } from '../util/duration.js';
import type { ProxyConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { CLOSE_WAIT_SYSCTL, CloseWaitWatcher, DEFAULT_CLOSE_WAIT_SEC, readCloseWaitSec } from '../kernel/conntrack-settings.js';
import { getTcpState, setKeepalive, setUserTimeout, socketFd, takeSocketError, TCP_STATE_CLOSE, type KeepaliveSettings } from '../kernel/sockopt.js';
import type { ProxyObserver } from './proxy.js';
import { abortConnection, reasonForError, type DirectionName, type Side } from './relay.js';
import type { Connection } from './registry.js';

/** Probes before the kernel gives up, in `auto` mode: small, so a dead peer is found quickly. */
export const AUTO_KEEPALIVE_COUNT = 3;

/** What the guard decided; read by the admin API and metrics (`proxy.guard.status()`). */
export interface GuardStatus {
  /** The half-closed keepalive mode (`--keepalive`). */
  mode: 'auto' | 'off' | 'fixed';
  /** The conntrack CLOSE_WAIT timeout in use, or null only when the guard is off and the sysctl is absent. */
  closeWaitSec: number | null;
  /** Where closeWaitSec came from: the namespace's sysctl, or the kernel default (conntrack not loaded). */
  source: 'sysctl' | 'default';
  /** Keepalive applied when a connection becomes half-closed, or null when off. */
  halfClosed: KeepaliveSettings | null;
  /** Keepalive applied when a connection is established (`--keepalive-established`), or null when off. */
  established: KeepaliveSettings | null;
  /** TCP_USER_TIMEOUT applied to both sockets at connect; 0 = kernel default. */
  userTimeoutMs: number;
  /** Configurations that cannot keep entries alive, in plain words. Empty when all is well. */
  warnings: string[];
}

export interface GuardOptions {
  /** Reads the CLOSE_WAIT timeout (seconds, null when absent). Default: this namespace's sysctl. */
  readCloseWait?: () => number | null;
  /** How often the sysctl is re-read. Default 5 s. */
  closeWaitPollMs?: number;
  /** How often half-closed sockets' TCP state is polled. Default the keepalive interval, between 1 s and 5 s. */
  socketPollMs?: number;
}

const fmtKeepalive = (k: KeepaliveSettings): string => `${k.idleSec}:${k.intervalSec}:${k.count}`;

/** The guard's decision for a config and a CLOSE_WAIT timeout (null: conntrack not loaded). Pure. */
export function planGuard(config: ProxyConfig, closeWaitSecRead: number | null): GuardStatus {
  const source = closeWaitSecRead === null ? 'default' : 'sysctl';
  const cw = closeWaitSecRead ?? DEFAULT_CLOSE_WAIT_SEC;
  const ka = config.keepaliveHalfClosed;
  const warnings: string[] = [];
  let halfClosed: KeepaliveSettings | null = null;
  if (ka.mode === 'auto') {
    // A third of the timeout leaves room for two lost probes before the entry could expire.
    const third = Math.max(1, Math.floor(cw / 3));
    halfClosed = { idleSec: third, intervalSec: third, count: AUTO_KEEPALIVE_COUNT };
    if (third >= cw) {
      warnings.push(
        `${CLOSE_WAIT_SYSCTL} is ${cw}s, too short for keepalive (at most one probe a second) to refresh conntrack entries: a half-closed connection's entry may expire and the application's late FIN leak both sockets; raise it to 3 or more`,
      );
    }
  } else if (ka.mode === 'fixed') {
    halfClosed = { idleSec: ka.idleSec, intervalSec: ka.intervalSec, count: ka.count };
    for (const [what, v] of [['idle', ka.idleSec], ['interval', ka.intervalSec]] as const) {
      if (v >= cw) {
        warnings.push(
          `--keepalive ${what} ${v}s is not below the conntrack CLOSE_WAIT timeout ${cw}s${source === 'default' ? ' (kernel default assumed)' : ''}: a half-closed connection's entry can expire between probes and the application's late FIN then leaks both sockets; use --keepalive auto or an ${what} below ${cw}s`,
        );
      }
    }
  } else {
    const until = config.halfCloseTimeoutMs > 0 ? `the half-close timeout (${formatDuration(config.halfCloseTimeoutMs)})` : config.idleTimeoutMs > 0 ? `the idle timeout (${formatDuration(config.idleTimeoutMs)})` : 'forever (idle timeout disabled)';
    warnings.push(
      `keepalive on half-closed connections is off (Envoy-like): one idle for more than ${cw}s loses its conntrack entry, and the application's late bare FIN then leaks two sockets until ${until}`,
    );
  }
  const e = config.keepaliveEstablished;
  return {
    mode: ka.mode,
    closeWaitSec: closeWaitSecRead ?? (ka.mode === 'off' ? null : DEFAULT_CLOSE_WAIT_SEC),
    source,
    halfClosed,
    established: e.mode === 'fixed' ? { idleSec: e.idleSec, intervalSec: e.intervalSec, count: e.count } : null,
    userTimeoutMs: config.userTimeoutMs,
    warnings,
  };
}

function describePlan(s: GuardStatus): string {
  if (s.halfClosed === null) return 'conntrack guard off (--keepalive off): half-closed connections get no keepalive, like Envoy\'s tcp_proxy';
  const ka = fmtKeepalive(s.halfClosed);
  const cw = s.source === 'sysctl' ? `${CLOSE_WAIT_SYSCTL} = ${s.closeWaitSec}s` : `${CLOSE_WAIT_SYSCTL} is absent (conntrack not loaded here), so the kernel default ${s.closeWaitSec}s is assumed`;
  return s.mode === 'auto'
    ? `conntrack guard: half-closed connections get keepalive ${ka} (idle:interval:count, a third of the CLOSE_WAIT timeout; ${cw})`
    : `conntrack guard: half-closed connections get the configured keepalive ${ka} (${cw})`;
}

export class ConntrackGuard implements ProxyObserver {
  private plan: GuardStatus;
  private readonly watcher: CloseWaitWatcher;
  /** Half-closed connections with the guard's keepalive on: the only ones whose sockets are polled. */
  private readonly guarded = new Set<Connection>();
  private sweepTimer: NodeJS.Timeout | null = null;
  private readonly socketPollMs: number | undefined;
  private readonly halfClosedListeners: ((k: KeepaliveSettings | null) => void)[] = [];

  constructor(
    private readonly config: ProxyConfig,
    private readonly logger: Logger,
    opts: GuardOptions = {},
  ) {
    const read = opts.readCloseWait ?? (() => readCloseWaitSec());
    const initial = read();
    this.plan = planGuard(config, initial);
    this.socketPollMs = opts.socketPollMs;
    this.watcher = new CloseWaitWatcher((sec, prev) => this.replan(sec, prev), read, opts.closeWaitPollMs ?? 5000, initial);
  }

  status(): GuardStatus {
    return { ...this.plan, warnings: [...this.plan.warnings] };
  }

  /** Logs the decision and starts watching the sysctl. Called by Proxy.start(). */
  start(): void {
    this.logPlan();
    // With --keepalive off, or a fixed setting, the CLOSE_WAIT value still decides the warnings.
    this.watcher.start();
  }

  stop(): void {
    this.watcher.stop();
    this.stopSweep();
  }

  /**
   * Tells `listener` each time the keepalive for half-closed connections changes: the splice
   * relay's worker applies it itself, at a connection's first FIN and to those already guarded.
   */
  onHalfClosedChange(listener: (k: KeepaliveSettings | null) => void): void {
    this.halfClosedListeners.push(listener);
  }

  /** Re-reads the sysctl now (tests; the timer does the same every few seconds). */
  recheck(): void {
    this.watcher.check();
  }

  private logPlan(): void {
    const s = this.plan;
    this.logger.info(
      {
        guard: {
          mode: s.mode,
          closeWaitSec: s.closeWaitSec,
          source: s.source,
          halfClosed: s.halfClosed ? fmtKeepalive(s.halfClosed) : 'off',
          established: s.established ? fmtKeepalive(s.established) : 'off',
          userTimeoutMs: s.userTimeoutMs,
          ...(s.halfClosed ? { socketPollMs: this.sweepMs() } : {}),
        },
      },
      describePlan(s),
    );
    for (const w of s.warnings) this.logger.warn({ guard: { mode: s.mode, closeWaitSec: s.closeWaitSec } }, w);
  }

  private replan(sec: number | null, prev: number | null): void {
    const before = this.plan.halfClosed;
    this.plan = planGuard(this.config, sec);
    this.logger.info({ previousCloseWaitSec: prev, closeWaitSec: sec }, `${CLOSE_WAIT_SYSCTL} changed from ${prev ?? 'absent'} to ${sec ?? 'absent'}`);
    this.logPlan();
    const after = this.plan.halfClosed;
    if ((before ? fmtKeepalive(before) : 'off') !== (after ? fmtKeepalive(after) : 'off')) for (const l of this.halfClosedListeners) l(after);
    if (after && (!before || fmtKeepalive(before) !== fmtKeepalive(after))) {
      // Connections already half-closed would keep probing at the old pace and could lose their entries.
      for (const conn of this.guarded) if (conn.client !== null) this.applyKeepalive(conn, after);
      this.restartSweep();
    }
  }

  connected(conn: Connection): void {
    const s = this.plan;
    if (s.established) this.applyKeepalive(conn, s.established);
    if (s.userTimeoutMs > 0) {
      for (const sock of [conn.client, conn.upstream]) {
        if (!sock || sock.destroyed) continue;
        try {
          setUserTimeout(socketFd(sock), s.userTimeoutMs);
        } catch (err) {
          this.logger.warn({ conn: conn.id, err: (err as Error).message }, 'cannot set TCP_USER_TIMEOUT');
        }
      }
    }
  }

  halfClosed(conn: Connection, _dir: DirectionName): void {
    const k = this.plan.halfClosed;
    // A second FIN (the other direction) finds the connection already guarded.
    if (k === null || this.guarded.has(conn) || conn.reason !== null) return;
    // The splice relay's worker owns its connections' sockets: it sets this keepalive itself
    // (onHalfClosedChange tells it the values) and reports it, which sets conn.keepalive. It also
    // sees an RST on a socket past EOF at once, so only Node's sockets are kept here for the sweep
    // (and a set that every connection entered and left was, by itself, young-generation garbage
    // kept alive: src/util/dense-set.ts).
    if (conn.client === null) return;
    this.guarded.add(conn);
    this.applyKeepalive(conn, k);
    if (this.sweepTimer === null) this.startSweep();
  }

  closed(conn: Connection): void {
    this.guarded.delete(conn);
    if (this.guarded.size === 0) this.stopSweep();
  }

  private applyKeepalive(conn: Connection, k: KeepaliveSettings): void {
    for (const sock of [conn.client, conn.upstream]) {
      if (!sock || sock.destroyed) continue;
      try {
        setKeepalive(socketFd(sock), k);
      } catch (err) {
        // The socket is closing under us; the relay finishes the connection.
        this.logger.debug({ conn: conn.id, err: (err as Error).message }, 'cannot set keepalive');
      }
    }
    conn.keepalive = fmtKeepalive(k);
    conn.keepaliveIdleMs = k.idleSec * 1000;
  }

  /** Poll period: the probe interval, kept between 1 s and 5 s. */
  private sweepMs(): number {
    if (this.socketPollMs !== undefined) return this.socketPollMs;
    const interval = this.plan.halfClosed?.intervalSec ?? 5;
    return Math.min(5, Math.max(1, interval)) * 1000;
  }

  private startSweep(): void {
    this.sweepTimer = setInterval(() => this.sweep(), this.sweepMs());
    this.sweepTimer.unref();
  }

  private stopSweep(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
  }

  private restartSweep(): void {
    if (this.sweepTimer === null) return;
    this.stopSweep();
    this.startSweep();
  }

  /**
   * After a socket reads EOF, libuv stops polling it: an RST answering a keepalive probe, or the
   * kernel giving up on unanswered probes, would go unnoticed until the next write, which on an
   * idle half-closed connection may never come. So for each guarded connection we ask the kernel
   * for the TCP state of the sockets whose read side is done; a socket the kernel has closed with
   * an error ends the connection, the other side reset. One getsockopt per such socket per tick.
   */
  sweep(): void {
    for (const conn of this.guarded) {
      if (conn.reason !== null) continue;
      const sides: [Side, typeof conn.client | null, boolean][] = [
        ['downstream', conn.client, conn.c2s.state === 'fin-received' || conn.c2s.state === 'fin-forwarded'],
        ['upstream', conn.upstream, conn.s2c.state === 'fin-received' || conn.s2c.state === 'fin-forwarded'],
      ];
      for (const [side, sock, eof] of sides) {
        if (!eof || !sock || sock.destroyed) continue;
        let code: string | null;
        try {
          const fd = socketFd(sock);
          if (getTcpState(fd) !== TCP_STATE_CLOSE) continue;
          code = takeSocketError(fd);
        } catch {
          continue; // closed between the check and the call: the relay has it
        }
        // CLOSE without an error is the normal end after both FINs; Node closes that socket itself.
        if (code === null) continue;
        const reason = reasonForError(side, Object.assign(new Error(code), { code }), conn);
        conn.error ??= `${side}: ${code} (found by the guard: the socket had stopped reading after the peer's FIN)`;
        this.logger.info({ conn: conn.id, side, code, reason }, 'guard: half-closed connection is dead; resetting the other side');
        abortConnection(conn, reason);
        break;
      }
    }
  }
}
