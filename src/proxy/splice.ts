// The splice relay, main-thread side. Once both sockets of a connection are connected and none of
// their bytes has been read by Node, the connection is handed to a worker thread
// (splice-worker.ts) that moves its bytes kernel to kernel with splice(2): no copy into the process,
// no Buffer, no stream machinery, and none of it on the event loop that accepts and connects.
//
// This thread keeps the sockets (and so the descriptors), the connection record, the timers, the
// guard and the access log. The worker reports each FIN it reads and forwards, and gives the
// descriptors back when a socket fails, when both FINs are through, or when asked to (a timer, the
// guard or a drain ending the connection); only then does this thread reset or close the sockets.
// Bytes and the time of the last one are counted in shared memory, read without a message.
//
// Semantics are the copying relay's (relay.ts), state for state and close reason for close reason;
// `relay: copy` in the config (`--relay copy`) uses that one instead.

import type net from 'node:net';
import { Worker } from 'node:worker_threads';
import { libcCalls, O_CLOEXEC, O_NONBLOCK, errno } from '../kernel/libc.js';
import { errnoName, socketFd } from '../kernel/sockopt.js';
import type { Logger } from '../log.js';
import type { Connection, Offload } from './registry.js';
import { abortConnection, hasUnrelayedInput, reasonForError, resetSocket, type RelayEvents, type Side } from './relay.js';
import {
  CTRL_EXIT,
  EV_DONE,
  EV_FAILED,
  EV_FIELDS,
  EV_FIN,
  EV_FIN_FORWARDED,
  EV_RELEASED,
  FAIL_AFTER_EOF,
  FAIL_BEFORE_FIN,
  FAIL_IDLE,
  OP_ATTACH,
  OP_RELEASE,
  SLOT_ACTIVITY,
  SLOT_BYTES,
  SLOT_FIELDS,
  SLOT_HELD,
  SLOT_PAUSED,
} from './splice-protocol.js';
import type { SpliceWorkerData } from './splice-worker.js';

/** Connections relayed at once (each holds one slot of shared counters, 48 bytes). Past it: copying. */
const MAX_SLOTS = 1 << 15;
const kAttached = Symbol('halfclose.splice.attached');

interface AttachedSocket extends net.Socket {
  [kAttached]?: Attached;
}

class Attached {
  /** Sockets closed so far (the connection is finished at two). */
  closed = 0;
  /** OP_RELEASE sent: the connection is ending on this side's initiative. */
  releasing = false;
  /** The worker has let go of the descriptors. */
  settled = false;
  constructor(
    readonly relay: SpliceRelay,
    readonly conn: Connection,
    readonly slot: number,
    readonly events: RelayEvents,
    /** The descriptors the worker borrowed (the sockets keep them until the worker lets go). */
    readonly cfd: number,
    readonly ufd: number,
  ) {}
}

const SUFFIX: Record<number, string> = {
  [FAIL_AFTER_EOF]: ' (after its last bytes)',
  [FAIL_BEFORE_FIN]: ' (reset before our FIN reached it)',
  [FAIL_IDLE]: ' (while nothing was reading it)',
};

export class SpliceRelay implements Offload {
  private readonly worker: Worker;
  private readonly wakeFd: number;
  private readonly live: Float64Array;
  private readonly ctrl: Int32Array;
  private readonly attached = new Map<number, Attached>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private ops: number[] = [];
  private flushing = false;
  private stopped = false;
  private readonly one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  /** A process that exits without stop() must still end the worker: Node joins its thread. */
  private readonly onExit = (): void => this.signalExit();

  /**
   * Starts the worker thread and waits until it relays. Rejects when it cannot (no koffi, no
   * epoll). `workerUrl` replaces the worker's module (tests: a worker that fails to start).
   */
  static async start(logger: Logger, workerUrl = new URL('./splice-worker.js', import.meta.url)): Promise<SpliceRelay> {
    const relay = new SpliceRelay(logger, workerUrl);
    try {
      await relay.ready;
    } catch (err) {
      await relay.stop();
      throw err;
    }
    return relay;
  }

  private readonly ready: Promise<void>;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly logger: Logger,
    workerUrl: URL,
  ) {
    const sys = libcCalls();
    this.wakeFd = sys.eventfd(0, O_NONBLOCK | O_CLOEXEC);
    if (this.wakeFd < 0) throw new Error(`eventfd: ${errnoName(errno())}`);
    const live = new SharedArrayBuffer(MAX_SLOTS * SLOT_FIELDS * 8);
    const ctrl = new SharedArrayBuffer(4);
    this.live = new Float64Array(live);
    this.ctrl = new Int32Array(ctrl);
    const data: SpliceWorkerData = { wakeFd: this.wakeFd, live, ctrl };
    this.worker = new Worker(workerUrl, {
      workerData: data,
      // The worker allocates next to nothing (a few objects per connection); keep its heap small.
      resourceLimits: { maxYoungGenerationSizeMb: 2, maxOldGenerationSizeMb: 64 },
    });
    this.exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.once('message', () => resolve());
      this.worker.once('error', reject);
      this.worker.once('exit', (code) => reject(new Error(`splice relay worker exited with code ${code}`)));
    }).then(() => {
      // Referenced while starting (the wait must keep the process alive), not afterwards: the
      // proxy's listeners and sockets are what keep a process running, not the relay's thread.
      this.worker.unref();
      this.worker.on('message', (evs: number[]) => this.onEvents(evs));
      this.worker.on('error', (err) => this.workerGone(err));
      this.worker.on('exit', (code) => {
        if (!this.stopped) this.workerGone(new Error(`exited with code ${code}`));
      });
    });
    process.once('exit', this.onExit);
  }

  get size(): number {
    return this.attached.size;
  }

  /**
   * Hands a connected connection to the worker. False (the caller copies it instead) when a byte
   * or an EOF was already read by Node, or every slot is taken.
   */
  attach(conn: Connection, bufferLimitBytes: number, events: RelayEvents): boolean {
    const client = conn.client as AttachedSocket;
    const upstream = conn.upstream as AttachedSocket | null;
    if (this.stopped || upstream === null || hasUnrelayedInput(client) || hasUnrelayedInput(upstream)) return false;
    const slot = this.freeSlots.pop() ?? (this.nextSlot < MAX_SLOTS ? this.nextSlot++ : -1);
    if (slot < 0) return false;
    let cfd: number;
    let ufd: number;
    try {
      cfd = socketFd(client);
      ufd = socketFd(upstream);
    } catch {
      this.freeSlots.push(slot);
      return false;
    }
    stopReading(client);
    stopReading(upstream);
    const base = slot * SLOT_FIELDS;
    this.live[base + SLOT_ACTIVITY] = conn.lastActivityAt;
    this.live[base + SLOT_BYTES] = conn.c2s.bytes;
    this.live[base + SLOT_BYTES + 1] = conn.s2c.bytes;
    this.live[base + SLOT_PAUSED] = 0;
    this.live[base + SLOT_HELD] = 0;
    this.live[base + SLOT_HELD + 1] = 0;
    conn.follow(this.live, base);
    conn.offload = this;
    const rec = new Attached(this, conn, slot, events, cfd, ufd);
    this.attached.set(conn.id, rec);
    for (const s of [client, upstream]) {
      s[kAttached] = rec;
      s.on('close', onSocketClose);
      s.on('error', onSocketError);
    }
    this.post(OP_ATTACH, conn.id, cfd, ufd, slot, bufferLimitBytes);
    return true;
  }

  /** Offload: the connection is ending here (timer, guard, drain); reset it once the worker lets go. */
  release(conn: Connection): void {
    const rec = this.attached.get(conn.id);
    if (rec === undefined || rec.releasing) return;
    rec.releasing = true;
    this.post(OP_RELEASE, conn.id, rec.cfd, rec.ufd, 0, 0);
  }

  /** Ends the worker. Connections still attached are reset. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    process.removeListener('exit', this.onExit);
    this.worker.ref(); // waiting for it must keep the loop alive
    this.signalExit();
    await this.exited; // resolved already if the worker died or never started
    this.worker.removeAllListeners();
    libcCalls().close(this.wakeFd);
    this.resetAll();
  }

  private signalExit(): void {
    Atomics.store(this.ctrl, CTRL_EXIT, 1);
    libcCalls().write(this.wakeFd, this.one, 8);
  }

  private post(op: number, id: number, a: number, b: number, c: number, d: number): void {
    this.ops.push(op, id, a, b, c, d);
    if (this.flushing) return;
    this.flushing = true;
    // Once per turn of the event loop: the connections connected in one poll phase go in one message.
    setImmediate(() => {
      this.flushing = false;
      const ops = this.ops;
      this.ops = [];
      if (this.stopped) return;
      this.worker.postMessage(ops);
      libcCalls().write(this.wakeFd, this.one, 8);
    });
  }

  private onEvents(evs: number[]): void {
    for (let i = 0; i + EV_FIELDS <= evs.length; i += EV_FIELDS) {
      const rec = this.attached.get(evs[i + 1]!);
      if (rec === undefined || rec.settled) continue;
      const conn = rec.conn;
      const kind = evs[i]!;
      const a = evs[i + 2]!;
      const b = evs[i + 3]!;
      switch (kind) {
        case EV_FIN: {
          const name = a === 0 ? 'c2s' : 's2c';
          const d = conn[name];
          if (d.state !== 'open') break;
          d.state = 'fin-received';
          d.finReceivedAt = b;
          if (conn.halfClosedAt === 0) conn.halfClosedAt = b;
          if (!rec.releasing) rec.events.halfClosed(conn, name);
          break;
        }
        case EV_FIN_FORWARDED: {
          const d = a === 0 ? conn.c2s : conn.s2c;
          if (d.state !== 'fin-received') break;
          d.state = 'fin-forwarded';
          d.finForwardedAt = b;
          break;
        }
        case EV_FAILED: {
          this.settle(rec);
          if (rec.releasing) break; // the reset below is what was asked for
          const side: Side = a === 0 ? 'downstream' : 'upstream';
          const code = errnoName(b);
          if (conn.reason === null) conn.error = `${side}: ${code}${SUFFIX[evs[i + 4]!] ?? ''}`;
          abortConnection(conn, reasonForError(side, Object.assign(new Error(code), { code }), conn));
          break;
        }
        case EV_DONE:
          this.settle(rec);
          if (rec.releasing) break;
          // Both FINs are through: a plain close, as the copying relay's sockets end.
          conn.client.destroy();
          conn.upstream!.destroy();
          break;
        case EV_RELEASED:
          this.settle(rec);
          break;
      }
    }
  }

  /** The worker has let go: counters move back into the record, the slot is free. */
  private settle(rec: Attached): void {
    rec.settled = true;
    const conn = rec.conn;
    conn.unfollow();
    conn.offload = null;
    this.freeSlots.push(rec.slot);
    if (rec.releasing) {
      resetSocket(conn.client);
      resetSocket(conn.upstream);
    }
  }

  private workerGone(err: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    process.removeListener('exit', this.onExit);
    this.logger.error({ err: err.message, connections: this.attached.size }, 'splice relay worker failed; resetting its connections, new ones are copied');
    this.resetAll();
  }

  private resetAll(): void {
    for (const rec of this.attached.values()) {
      if (rec.settled) continue;
      rec.releasing = true;
      rec.conn.error ??= 'splice relay stopped';
      this.settle(rec);
    }
  }

  /** A socket of an attached connection closed; the connection is finished when both have. */
  closed(rec: Attached): void {
    if (++rec.closed < 2) return;
    this.attached.delete(rec.conn.id);
    const conn = rec.conn;
    if (conn.reason === null) {
      conn.reason = conn.c2s.state === 'fin-forwarded' && conn.s2c.state === 'fin-forwarded' ? 'both-fin' : 'downstream-error';
    }
    conn.closedAt = Date.now();
    rec.events.finished(conn);
  }
}

function onSocketClose(this: AttachedSocket): void {
  const rec = this[kAttached];
  if (rec === undefined) return;
  this[kAttached] = undefined;
  rec.relay.closed(rec);
}

function onSocketError(this: AttachedSocket, err: NodeJS.ErrnoException): void {
  const conn = this[kAttached]?.conn;
  if (conn && conn.reason === null) conn.error ??= `${this === conn.client ? 'downstream' : 'upstream'}: ${err.code ?? err.message}`;
}

/**
 * Node must not read a socket the worker relays: its read side is the worker's from now on, and
 * a byte read by libuv would be lost to the worker's stream. Reading is stopped, and restarting it
 * (a stream internal that calls read(0) later) is made a no-op for the rest of the socket's life:
 * once the worker lets go the socket is only reset or closed.
 */
function stopReading(socket: net.Socket): void {
  socket.pause();
  const h = (socket as unknown as { _handle?: { reading?: boolean; readStop?: () => number; readStart?: () => number } })._handle;
  if (h === undefined) return;
  if (h.reading) {
    h.reading = false;
    h.readStop?.();
  }
  h.readStart = noReadStart;
}

function noReadStart(): number {
  return 0;
}
