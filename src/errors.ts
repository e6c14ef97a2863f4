// Every error halfclose raises on purpose, in one place, each with a stable code.
// The CLI prints `halfclose: <message>` and exits 2 for any of them (bad input or a
// system part that is missing); anything else is a bug and keeps its stack trace.

export type ErrorCode =
  | 'HC_ERR_USAGE'
  | 'HC_ERR_CONFIG'
  | 'HC_ERR_CONFIG_FILE'
  | 'HC_ERR_DURATION'
  | 'HC_ERR_ADDRESS'
  | 'HC_ERR_LISTEN'
  | 'HC_ERR_SOCKOPT'
  | 'HC_ERR_ORIGINAL_DST'
  | 'HC_ERR_COMMAND'
  | 'HC_ERR_MISSING_TOOL'
  | 'HC_ERR_NETNS'
  | 'HC_ERR_PARSE'
  | 'HC_ERR_IPTABLES'
  | 'HC_ERR_LAB';

/** Codes with a one-line meaning each; `docs/errors.md` lists the same, and a test checks both agree. */
export const ERROR_CODES: Record<ErrorCode, string> = {
  HC_ERR_USAGE: 'a command-line flag or argument is unknown, missing or malformed',
  HC_ERR_CONFIG: 'a configuration key is unknown or its value is out of range',
  HC_ERR_CONFIG_FILE: 'the configuration file cannot be read or is not valid YAML',
  HC_ERR_DURATION: 'a duration is not a number with a unit (250ms, 30s, 5m, 1h) or 0',
  HC_ERR_ADDRESS: 'an address is not HOST:PORT (IPv6 as [ADDR]:PORT) or the port is out of range',
  HC_ERR_LISTEN: 'a listener cannot bind its address (in use, or not local)',
  HC_ERR_SOCKOPT: 'the kernel refused a socket option',
  HC_ERR_ORIGINAL_DST: 'the original destination of a redirected connection cannot be read',
  HC_ERR_COMMAND: 'an external command (ip, iptables, conntrack, ss, nsenter) failed',
  HC_ERR_MISSING_TOOL: 'an external command is not installed',
  HC_ERR_NETNS: 'a network namespace does not exist or cannot be entered',
  HC_ERR_PARSE: 'kernel output (ss, conntrack) cannot be parsed',
  HC_ERR_IPTABLES: 'interception rules cannot be planned or applied',
  HC_ERR_LAB: 'the lab cannot build or run its topology',
};

export class HalfcloseError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HalfcloseError';
    this.code = code;
  }
}

export class UsageError extends HalfcloseError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('HC_ERR_USAGE', message, options);
    this.name = 'UsageError';
  }
}

export class ConfigError extends HalfcloseError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('HC_ERR_CONFIG', message, options);
    this.name = 'ConfigError';
  }
}

export class SockoptError extends HalfcloseError {
  readonly option: string;
  readonly errno: number;
  constructor(option: string, errno: number, message: string) {
    super('HC_ERR_SOCKOPT', message);
    this.name = 'SockoptError';
    this.option = option;
    this.errno = errno;
  }
}

/** The result of a failed external command, shaped like execa's: command, exit code, stderr, timedOut. */
export class CommandError extends HalfcloseError {
  readonly command: string;
  readonly exitCode: number | null;
  readonly stderr: string;
  readonly stdout: string;
  readonly timedOut: boolean;
  constructor(fields: { command: string; exitCode: number | null; stdout: string; stderr: string; timedOut: boolean; signal?: string | null }) {
    const why = fields.timedOut
      ? 'timed out'
      : fields.exitCode === null
        ? `was killed by ${fields.signal ?? 'a signal'}`
        : `exited with status ${fields.exitCode}`;
    const detail = fields.stderr.trim().split('\n').slice(-3).join(' | ');
    super('HC_ERR_COMMAND', `command \`${fields.command}\` ${why}${detail ? `: ${detail}` : ''}`);
    this.name = 'CommandError';
    this.command = fields.command;
    this.exitCode = fields.exitCode;
    this.stdout = fields.stdout;
    this.stderr = fields.stderr;
    this.timedOut = fields.timedOut;
  }
}

export function isHalfcloseError(err: unknown): err is HalfcloseError {
  return err instanceof HalfcloseError;
}
