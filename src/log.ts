// Two loggers, both JSON lines through pino: the operational log on stderr (start-up, guard
// decisions, warnings) and the access log (one line per closed connection, see proxy/accesslog.ts).

import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, dest: number | string = 2): Logger {
  return pino(
    { level, base: { component: 'halfclose' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    pino.destination({ dest, sync: true }),
  );
}

/** A logger that drops everything (tests and embedding). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
