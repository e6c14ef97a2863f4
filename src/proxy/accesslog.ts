// One JSON line per closed connection, with its close reason, addresses, bytes and the time of
// each per-direction transition. `--access-log off|stdout|FILE`.

import pino, { type Logger } from 'pino';
import type { Connection } from './registry.js';

export interface AccessLog {
  write(conn: Connection): void;
  flush(): void;
}

export function createAccessLog(target: string): AccessLog {
  if (target === 'off') return { write() {}, flush() {} };
  const dest = pino.destination({ dest: target === 'stdout' ? 1 : target, sync: target === 'stdout', mkdir: true });
  const log: Logger = pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'msg', formatters: { level: (label) => ({ level: label }) } }, dest);
  return {
    write(conn) {
      log.info(conn.toJSON(conn.closedAt), 'connection closed');
    },
    flush() {
      try {
        dest.flushSync();
      } catch {
        /* nothing buffered, or the destination is not open yet */
      }
    },
  };
}
