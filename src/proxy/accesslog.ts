// One JSON line per closed connection, with its close reason, addresses, bytes and the time of
// each per-direction transition. `--access-log off|stdout|FILE`.
//
// The line has the shape of the operational log's pino lines ({"level","time",...,"msg"}), but it
// is neither serialised nor written by pino: a proxy writes one per connection. The record is
// written as JSON text directly (Connection.toJSONText, the same text as JSON.stringify of its
// toJSON), and the lines of one turn of the event loop go out in one write(2), synchronously at
// the end of that turn: nothing waits on a timer, so a process killed outright loses no line it
// had already finished with. The text is encoded once, into a buffer kept for the next turn
// (pino's destination measured its length, encoded it to write and encoded it again to account
// for the write: a quarter of what the main thread spent on a short connection).

import fs from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { iso, type Connection } from './registry.js';

export interface AccessLog {
  write(conn: Connection): void;
  /** Writes what is pending now (drain, exit). */
  flush(): void;
}

const MSG = ',"msg":"connection closed"}\n';

/** Every log's pending lines go out when the process exits (one listener for all logs). */
const atExit = new Set<() => void>();
process.once('exit', () => {
  for (const f of atExit) f();
});

/** The access-log line of a closed connection. */
export function accessLine(conn: Connection, time = Date.now()): string {
  return `{"level":"info","time":"${iso(time) ?? new Date(time).toISOString()}",${conn.jsonFields(conn.closedAt)}${MSG}`;
}

/** A write that failed for another reason than a full pipe: the batch is dropped and the log says so once. */
export type AccessLogErrorHandler = (err: NodeJS.ErrnoException) => void;

/** The buffer one batch is encoded into is kept up to this size; a bigger batch gets one of its own. */
const KEEP_MAX = 1 << 20;
const waitCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Writes text to `fd` whole. A non-blocking pipe that is full (EAGAIN: a slow reader of stdout)
 * is waited for, a few milliseconds at a time, and no line is lost; any other error is thrown.
 */
export class LineWriter {
  private buf = Buffer.allocUnsafe(1 << 16);

  constructor(readonly fd: number) {}

  write(text: string): void {
    // At most three bytes per UTF-16 unit: text that fits is encoded without measuring it first.
    let buf = this.buf;
    if (text.length * 3 > buf.length) {
      if (text.length * 3 <= KEEP_MAX) buf = this.buf = Buffer.allocUnsafe(Math.max(text.length * 3, buf.length * 2));
      else buf = Buffer.from(text, 'utf8');
    }
    const n = buf === this.buf ? buf.write(text, 0, 'utf8') : buf.length;
    for (let off = 0; off < n; ) {
      try {
        off += fs.writeSync(this.fd, buf, off, n - off);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN' && code !== 'EINTR') throw err;
        Atomics.wait(waitCell, 0, 0, 5);
      }
    }
  }
}

/** mkdir -p, one level at a time (fs.mkdirSync's recursive mode retries forever where a parent refuses with ENOENT, as /proc does). */
function makeDirs(dir: string): void {
  if (fs.existsSync(dir)) return;
  makeDirs(path.dirname(dir));
  fs.mkdirSync(dir);
}

/** Opens the access log's destination: stdout, or a file appended to (its directory made if missing). */
function openTarget(target: string): number {
  if (target === 'stdout') return 1;
  try {
    makeDirs(path.dirname(target));
    return fs.openSync(target, 'a');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError(`access log ${target}: cannot open it for appending (${code}); expected off, stdout or a file whose directory can be made`);
  }
}

export function createAccessLog(target: string, onError: AccessLogErrorHandler = () => {}): AccessLog {
  if (target === 'off') return { write() {}, flush() {} };
  const out = new LineWriter(openTarget(target));
  let pending = '';
  let scheduled = false;
  let failing = false;
  const flush = (): void => {
    scheduled = false;
    if (pending === '') return;
    const text = pending;
    pending = '';
    try {
      out.write(text);
      failing = false;
    } catch (err) {
      if (!failing) onError(err as NodeJS.ErrnoException);
      failing = true;
    }
  };
  atExit.add(flush);
  return {
    write(conn) {
      pending += accessLine(conn);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    flush,
  };
}
