// A stand-in for the splice relay's worker thread (src/proxy/splice-worker.ts), for
// bench/books-cost.ts: no sockets at all. It sends the main thread the records a real worker sends
// for short connections (accepted, connected, a FIN and its forwarding each way, done), batched
// every POST_MS as the real one does, and keeps their shared counters, so that only the main
// thread's bookkeeping is left to measure. Settings come from the environment: BOOKS_RATE
// (connections per second, 6000), BOOKS_LIFE_MS (accept to close, 8), BOOKS_POST_MS (20, as the real worker).

import fs from 'node:fs';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { libcCalls } from '../src/kernel/libc.js';
import {
  CTRL_EXIT,
  EV_ACCEPTED,
  EV_CONNECTED,
  EV_DONE,
  EV_FIN,
  EV_FIN_FORWARDED,
  EV_UNLISTENED,
  OP_UNLISTEN,
  SLOT_ACTIVITY,
  SLOT_BYTES,
  SLOT_FDS,
  SLOT_FIELDS,
} from '../src/proxy/splice-protocol.js';
import type { SpliceWorkerData } from '../src/proxy/splice-worker.js';

const data = workerData as SpliceWorkerData;
const port = parentPort!;
const live = new Float64Array(data.live);
const ctrl = new Int32Array(data.ctrl);
const rate = Number(process.env.BOOKS_RATE ?? 6000);
const lifeMs = Number(process.env.BOOKS_LIFE_MS ?? 8);
const postMs = Number(process.env.BOOKS_POST_MS ?? 20);
const LOOPBACK = 0x7f000001;

interface Fake {
  id: number;
  slot: number;
  at: number;
  step: number;
}
let nextId = 1;
let nextPort = 32768;
const freeSlots: number[] = [];
let nextSlot = 0;
let alive: Fake[] = [];
let owed = 0;
let last = Date.now();
let out: number[] = [];

const addr = (p: number): number[] => [4, p, LOOPBACK, 0, 0, 0];
const ephemeral = (): number => (nextPort = nextPort >= 60999 ? 32768 : nextPort + 1);

/** Emits every step of `c` due by `now`; true once it is done. */
function advance(c: Fake, now: number): boolean {
  const base = c.slot * SLOT_FIELDS;
  for (;;) {
    switch (c.step) {
      case 0:
        live.fill(0, base, base + SLOT_FIELDS);
        live[base + SLOT_ACTIVITY] = c.at;
        live[base + SLOT_FDS] = 1; // "fd 0": never reset by anyone, there is no socket
        out.push(EV_ACCEPTED, c.id, c.slot, 15, 0, c.at, 1000, ...addr(ephemeral()), 0, 0, 0, 0, 0, 0);
        out.push(EV_CONNECTED, c.id, c.slot, 8, c.at, 1001, ...addr(ephemeral()));
        break;
      case 1:
        if (c.at + 1 > now) return false;
        live[base + SLOT_BYTES] = 15;
        live[base + SLOT_ACTIVITY] = c.at + 1;
        out.push(EV_FIN, c.id, c.slot, 2, 0, c.at + 1, EV_FIN_FORWARDED, c.id, c.slot, 2, 0, c.at + 1);
        break;
      case 2: {
        const end = c.at + lifeMs;
        if (end > now) return false;
        live[base + SLOT_BYTES + 1] = 15;
        live[base + SLOT_ACTIVITY] = end;
        out.push(EV_FIN, c.id, c.slot, 2, 1, end, EV_FIN_FORWARDED, c.id, c.slot, 2, 1, end);
        out.push(EV_DONE, c.id, c.slot, 4, 15, 15, end, end);
        live[base + SLOT_FDS] = 0;
        freeSlots.push(c.slot);
        return true;
      }
    }
    c.step++;
  }
}

function tick(): void {
  if (Atomics.load(ctrl, CTRL_EXIT) === 1) {
    clearInterval(timer);
    for (const l of data.listeners) libcCalls().close(l.fd);
    return;
  }
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
    const ops = m.message as number[];
    for (let i = 0; i + 3 <= ops.length; i += 3 + ops[i + 2]!) if (ops[i] === OP_UNLISTEN) out.push(EV_UNLISTENED, 0, -1, 0);
  }
  const now = Date.now();
  owed += ((now - last) * rate) / 1000;
  last = now;
  for (; owed >= 1; owed--) alive.push({ id: nextId++, slot: freeSlots.pop() ?? nextSlot++, at: now, step: 0 });
  alive = alive.filter((c) => !advance(c, now));
  if (out.length > 0) {
    const records = Float64Array.from(out);
    port.postMessage(records, [records.buffer]);
    out = [];
  }
}

const timer = setInterval(tick, postMs);
port.postMessage('ready');
// The harness leaves this thread's CPU out: it learns which one it is from this file.
if (process.env.BOOKS_TID_FILE) fs.writeFileSync(process.env.BOOKS_TID_FILE, fs.readlinkSync('/proc/thread-self').split('/').pop()!);
