// The splice relay, main-thread side. A worker thread (splice-worker.ts) owns the connections
// whole: it accepts on the listening sockets bound here, connects upstream, moves the bytes kernel
// to kernel with splice(2) and closes both sockets — no net.Socket, no Buffer and no stream
// machinery per connection, and none of it on the event loop. This thread keeps what operators
// see: a Connection record per connection (registry, timers, guard decisions, metrics, access log),
// built from the records the worker sends, and it ends a connection early (timer, guard, drain)
// by asking the worker to reset it (OP_RELEASE). Bytes and the time of the last one are counted in
// shared memory, read without a message.
//
// Semantics are the copying relay's (relay.ts), state for state and close reason for close reason;
// `relay: copy` in the config (`--relay copy`) uses that one, with Node accepting and connecting.

import { Worker } from 'node:worker_threads';
import type { ListenerConfig } from '../config/schema.js';
import { libcCalls, O_CLOEXEC, O_NONBLOCK, errno } from '../kernel/libc.js';
import { endpointAt } from '../kernel/sockaddr.js';
import { closeWithReset, errnoName, type KeepaliveSettings } from '../kernel/sockopt.js';
import type { Logger } from '../log.js';
import { formatEndpoint, type Endpoint } from '../util/address.js';
import { abortConnection, reasonForError, type DirectionName, type Side } from './relay.js';
import { Connection, type CloseReason, type Offload } from './registry.js';
import {
  CTRL_EXIT,
  EV_ACCEPT_ERROR,
  EV_ACCEPTED,
  EV_CONNECTED,
  EV_DONE,
  EV_FAILED,
  EV_FIN,
  EV_FIN_FORWARDED,
  EV_GUARDED,
  EV_REFUSED,
  EV_RELEASED,
  EV_UNLISTENED,
  FAIL_AFTER_EOF,
  FAIL_BEFORE_FIN,
  FAIL_IDLE,
  OP_KEEPALIVE,
  OP_RELEASE,
  OP_UNLISTEN,
  REFUSE_REASONS,
  SLOT_FDS,
  SLOT_FIELDS,
} from './splice-protocol.js';
import type { KeepaliveTriple, SpliceWorkerData, WorkerListener } from './splice-worker.js';

/** Connections relayed at once (each holds one slot of shared counters, 48 bytes). Past it a client is reset. */
const MAX_SLOTS = 1 << 15;

const SUFFIX: Record<number, string> = {
  [FAIL_AFTER_EOF]: ' (after its last bytes)',
  [FAIL_BEFORE_FIN]: ' (reset before our FIN reached it)',
  [FAIL_IDLE]: ' (while nothing was reading it)',
};

/** What the proxy does with the connections the worker reports. */
export interface SpliceHost {
  /** A new connection (registered by the host), before its upstream is connected. */
  accepted(conn: Connection): void;
  /** The upstream connection is up; the worker relays. */
  connected(conn: Connection): void;
  /** A FIN was read in `dir`. */
  halfClosed(conn: Connection, dir: DirectionName): void;
  /** Both sockets are closed and `conn.reason` is final (refused connections included). */
  finished(conn: Connection): void;
  /** accept4 failed on a listener (out of descriptors, or too many connections). */
  acceptFailed(listener: ListenerConfig, code: string): void;
  /** The worker died: its connections are finished and its listening sockets closed (not after stop()). */
  gone(): void;
}

/** A listening socket bound by this thread for the worker. */
export interface RawListener {
  readonly config: ListenerConfig;
  readonly fd: number;
  readonly address: Endpoint;
}

export interface SpliceOptions {
  logger: Logger;
  host: SpliceHost;
  listeners: readonly RawListener[];
  /** Route upstreams and upstream sources as sockaddrs, by listener (see WorkerListener). */
  workerListeners: WorkerListener[];
  ownPorts: number[];
  localHosts: string[];
  connectTimeoutMs: number;
  bufferLimitBytes: number;
  halfClosed: KeepaliveSettings | null;
  established: KeepaliveSettings | null;
  userTimeoutMs: number;
  /** Replaces the worker's module (tests: a worker that fails to start). */
  workerUrl?: URL;
}

const triple = (k: KeepaliveSettings | null): KeepaliveTriple | null => (k === null ? null : [k.idleSec, k.intervalSec, k.count]);

export class SpliceRelay implements Offload {
  private readonly worker: Worker;
  private readonly wakeFd: number;
  private readonly live: Float64Array;
  private readonly ctrl: Int32Array;
  private readonly host: SpliceHost;
  private readonly listeners: readonly RawListener[];
  /**
   * Connections the worker holds, by slot (the worker's records name both slot and id). An array
   * written in place, not a Map: one that gains and loses an entry per connection keeps its
   * abandoned tables, and the dead connections they list, alive through young collections
   * (src/util/dense-set.ts).
   */
  private readonly bySlot: (Connection | null)[] = [];
  private held = 0;
  /** Ids asked to be released (OP_RELEASE sent). */
  private readonly releasing = new Set<number>();
  private ops: number[] = [];
  private flushing = false;
  private stopped = false;
  private unlistened: Promise<void> | null = null;
  private onUnlistened: (() => void) | null = null;
  private readonly one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  /** A process that exits without stop() must still end the worker: Node joins its thread. */
  private readonly onExit = (): void => this.signalExit();
  private readonly ready: Promise<void>;
  private readonly exited: Promise<void>;

  /** Starts the worker on the bound listeners and waits until it accepts. Rejects when it cannot (no koffi, no epoll). */
  static async start(opts: SpliceOptions): Promise<SpliceRelay> {
    const relay = new SpliceRelay(opts);
    try {
      await relay.ready;
    } catch (err) {
      await relay.stop();
      throw err;
    }
    return relay;
  }

  private constructor(private readonly opts: SpliceOptions) {
    this.host = opts.host;
    this.listeners = opts.listeners;
    const sys = libcCalls();
    this.wakeFd = sys.eventfd(0, O_NONBLOCK | O_CLOEXEC);
    if (this.wakeFd < 0) throw new Error(`eventfd: ${errnoName(errno())}`);
    const live = new SharedArrayBuffer(MAX_SLOTS * SLOT_FIELDS * 8);
    const ctrl = new SharedArrayBuffer(4);
    this.live = new Float64Array(live);
    this.ctrl = new Int32Array(ctrl);
    const data: SpliceWorkerData = {
      wakeFd: this.wakeFd,
      live,
      ctrl,
      maxSlots: MAX_SLOTS,
      listeners: opts.workerListeners,
      ownPorts: opts.ownPorts,
      localHosts: opts.localHosts,
      connectTimeoutMs: opts.connectTimeoutMs,
      bufferLimitBytes: opts.bufferLimitBytes,
      halfClosed: triple(opts.halfClosed),
      established: triple(opts.established),
      userTimeoutMs: opts.userTimeoutMs,
    };
    this.worker = new Worker(opts.workerUrl ?? new URL('./splice-worker.js', import.meta.url), {
      workerData: data,
      // The worker allocates little (two small objects per connection); keep its heap small.
      resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 64 },
    });
    this.exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.once('message', () => resolve());
      this.worker.once('error', reject);
      this.worker.once('exit', (code) => reject(new Error(`splice relay worker exited with code ${code}`)));
    }).then(() => {
      // The worker stays referenced until stop(), as a listening net.Server or an open socket keeps
      // a process running: while draining, its answers are what the event loop waits for.
      this.worker.on('message', (evs: Float64Array) => this.onEvents(evs));
      this.worker.on('error', (err) => this.workerGone(err));
      this.worker.on('exit', (code) => {
        if (!this.stopped) this.workerGone(new Error(`exited with code ${code}`));
      });
    });
    process.once('exit', this.onExit);
  }

  /** Connections the worker holds. */
  get size(): number {
    return this.held;
  }

  private holds(conn: Connection): boolean {
    return conn.spliceSlot >= 0 && this.bySlot[conn.spliceSlot] === conn;
  }

  /** Offload: the connection is ending here (timer, guard, drain); the worker resets both sockets. */
  release(conn: Connection): void {
    if (!this.holds(conn) || this.releasing.has(conn.id)) return;
    this.releasing.add(conn.id);
    this.post(OP_RELEASE, conn.id, [conn.spliceSlot]);
  }

  /** The guard's keepalive for half-closed connections changed: new first FINs and those already guarded get it. */
  setHalfClosedKeepalive(k: KeepaliveSettings | null): void {
    this.post(OP_KEEPALIVE, 0, triple(k) ?? [0, 0, 0]);
  }

  /** Stops accepting and closes the listening sockets; resolves once the worker has. */
  unlisten(): Promise<void> {
    if (this.unlistened === null) {
      if (this.stopped) return Promise.resolve();
      this.unlistened = new Promise<void>((resolve) => (this.onUnlistened = resolve));
      this.post(OP_UNLISTEN, 0, []);
    }
    return this.unlistened;
  }

  /** Ends the worker; it resets the connections it still holds, which are finished here. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    process.removeListener('exit', this.onExit);
    this.worker.ref(); // waiting for it must keep the loop alive
    this.signalExit();
    await this.exited; // resolved already if the worker died or never started
    this.worker.removeAllListeners();
    libcCalls().close(this.wakeFd);
    this.onUnlistened?.();
    this.finishAll('splice relay stopped');
  }

  private signalExit(): void {
    Atomics.store(this.ctrl, CTRL_EXIT, 1);
    libcCalls().write(this.wakeFd, this.one, 8);
  }

  private post(op: number, id: number, fields: number[]): void {
    this.ops.push(op, id, fields.length, ...fields);
    if (this.flushing) return;
    this.flushing = true;
    // Once per turn of the event loop: the operations of one turn go in one message.
    setImmediate(() => {
      this.flushing = false;
      const ops = this.ops;
      this.ops = [];
      if (this.stopped) return;
      this.worker.postMessage(ops);
      libcCalls().write(this.wakeFd, this.one, 8);
    });
  }

  private onEvents(evs: Float64Array): void {
    for (let i = 0; i + 4 <= evs.length; i += 4 + evs[i + 3]!) {
      const kind = evs[i]!;
      const id = evs[i + 1]!;
      const f = i + 4;
      if (kind === EV_ACCEPTED) {
        this.accepted(id, evs[i + 2]!, evs, f);
        continue;
      }
      if (kind === EV_UNLISTENED) {
        this.onUnlistened?.();
        continue;
      }
      if (kind === EV_ACCEPT_ERROR) {
        this.acceptError(evs[f]!, evs[f + 1]!, evs[f + 2] === 1);
        continue;
      }
      const conn = this.bySlot[evs[i + 2]!];
      if (conn == null || conn.id !== id) continue;
      switch (kind) {
        case EV_CONNECTED:
          conn.connectedAt = evs[f]!;
          conn.upstreamFd = evs[f + 1]!;
          conn.upstreamLocal = endpointAt(evs, f + 2);
          this.host.connected(conn);
          break;
        case EV_REFUSED: {
          const reason: CloseReason = REFUSE_REASONS[evs[f]!]!;
          this.settle(conn, 0, 0, conn.startedAt);
          conn.reason ??= reason;
          if (!this.releasing.has(id)) conn.error ??= this.refusalDetail(conn, reason, evs[f + 1]!);
          // No destination to go to: the error names the one that looped.
          if (reason === 'loop-refused') conn.target = conn.originalDst = null;
          conn.closedAt = evs[f + 2]!;
          this.end(conn);
          break;
        }
        case EV_FIN: {
          const name = evs[f] === 0 ? 'c2s' : 's2c';
          const d = conn[name];
          if (d.state !== 'open') break;
          d.state = 'fin-received';
          d.finReceivedAt = evs[f + 1]!;
          if (conn.halfClosedAt === 0) conn.halfClosedAt = evs[f + 1]!;
          if (!this.releasing.has(id)) this.host.halfClosed(conn, name);
          break;
        }
        case EV_FIN_FORWARDED: {
          const d = evs[f] === 0 ? conn.c2s : conn.s2c;
          if (d.state !== 'fin-received') break;
          d.state = 'fin-forwarded';
          d.finForwardedAt = evs[f + 1]!;
          break;
        }
        case EV_GUARDED:
          conn.keepalive = `${evs[f]}:${evs[f + 1]}:${evs[f + 2]}`;
          conn.keepaliveIdleMs = evs[f]! * 1000;
          break;
        case EV_FAILED: {
          this.settle(conn, evs[f + 3]!, evs[f + 4]!, evs[f + 5]!);
          if (!this.releasing.has(id)) {
            const side: Side = evs[f] === 0 ? 'downstream' : 'upstream';
            const code = errnoName(evs[f + 1]!);
            if (conn.reason === null) conn.error = `${side}: ${code}${SUFFIX[evs[f + 2]!] ?? ''}`;
            // Both sockets are reset already (offload is off now): this only records the reason and states.
            abortConnection(conn, reasonForError(side, Object.assign(new Error(code), { code }), conn));
          }
          conn.closedAt = evs[f + 6]!;
          this.end(conn);
          break;
        }
        case EV_DONE:
          this.settle(conn, evs[f]!, evs[f + 1]!, evs[f + 2]!);
          conn.reason ??= 'both-fin';
          conn.closedAt = evs[f + 3]!;
          this.end(conn);
          break;
        case EV_RELEASED:
          this.settle(conn, evs[f]!, evs[f + 1]!, evs[f + 2]!);
          conn.closedAt = evs[f + 3]!;
          this.end(conn);
          break;
      }
    }
  }

  private accepted(id: number, slot: number, evs: Float64Array, f: number): void {
    const l = this.listeners[evs[f]!]!.config;
    const conn = new Connection(id, l, null, endpointAt(evs, f + 3)!, evs[f + 1]!);
    conn.clientFd = evs[f + 2]!;
    if (l.kind === 'route') conn.target = l.upstream;
    else {
      const dst = endpointAt(evs, f + 9);
      conn.target = dst;
      conn.originalDst = dst;
    }
    conn.follow(this.live, slot * SLOT_FIELDS);
    conn.offload = this;
    while (this.bySlot.length <= slot) this.bySlot.push(null);
    this.bySlot[slot] = conn;
    conn.spliceSlot = slot;
    this.held++;
    this.host.accepted(conn);
  }

  /** The worker has closed both sockets and freed the slot: the last counters move into the record. */
  private settle(conn: Connection, c2s: number, s2c: number, activityAt: number): void {
    conn.unfollowWith(c2s, s2c, activityAt);
    conn.offload = null;
    conn.clientFd = -1;
    conn.upstreamFd = -1;
  }

  private end(conn: Connection): void {
    if (this.holds(conn)) {
      this.bySlot[conn.spliceSlot] = null;
      this.held--;
    }
    conn.spliceSlot = -1;
    this.releasing.delete(conn.id);
    this.host.finished(conn);
  }

  private refusalDetail(conn: Connection, reason: CloseReason, code: number): string {
    const to = conn.target ? formatEndpoint(conn.target) : '?';
    switch (reason) {
      case 'no-original-dst':
        return `getsockopt SO_ORIGINAL_DST failed: ${errnoName(code)} (was the connection redirected by iptables?)`;
      case 'loop-refused':
        return `original destination ${to} is this proxy's own listener`;
      case 'connect-timeout':
        if (code === 0) return `no answer from ${to} within ${this.opts.connectTimeoutMs}ms`;
        return `${errnoName(code)} connecting to ${to}`;
      default:
        return `${errnoName(code)} connecting to ${to}`;
    }
  }

  private acceptError(code: number, li: number, upstream: boolean): void {
    const l = this.listeners[li]?.config;
    if (l === undefined) return;
    const what = code < 0 ? `too many connections (${MAX_SLOTS} relayed at once)` : errnoName(code);
    this.host.acceptFailed(l, upstream ? `no descriptor for an upstream socket (${what}), the client was reset` : what);
  }

  private workerGone(err: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    process.removeListener('exit', this.onExit);
    this.opts.logger.error({ err: err.message, connections: this.held }, 'splice relay worker failed; its connections are reset');
    // The descriptors belong to the process, not the thread: reset what the worker left open, by
    // its own shared account (a connection it accepted or connected in its last few milliseconds
    // may not have been reported yet).
    for (let base = 0; base < this.live.length; base += SLOT_FIELDS) {
      for (let side = 0; side < 2; side++) {
        const fdPlusOne = this.live[base + SLOT_FDS + side]!;
        if (fdPlusOne > 0) closeWithReset(fdPlusOne - 1);
        this.live[base + SLOT_FDS + side] = 0;
      }
    }
    if (this.unlistened === null) for (const l of this.listeners) libcCalls().close(l.fd);
    this.onUnlistened?.();
    this.finishAll(`splice relay worker failed: ${err.message}`);
    this.host.gone();
  }

  /** Finishes every connection still held (the worker is gone and has reset them). */
  private finishAll(why: string): void {
    for (const conn of this.bySlot.filter((c): c is Connection => c !== null)) {
      this.settle(conn, conn.c2s.bytes, conn.s2c.bytes, conn.lastActivityAt);
      if (conn.reason === null) {
        conn.error ??= why;
        abortConnection(conn, conn.connectedAt ? 'downstream-error' : 'connect-error');
      }
      conn.closedAt = Date.now();
      this.end(conn);
    }
  }
}
