// The one runner every shell-out goes through (ip, iptables-restore, conntrack, ss, nsenter).
// A failure is a CommandError carrying the command, exit code, stderr and whether it timed out.

import { spawn, spawnSync } from 'node:child_process';
import { CommandError, HalfcloseError } from '../errors.js';

export interface RunOptions {
  /** Text written to the command's standard input. */
  input?: string;
  /** Kill the command after this many milliseconds. Default 15 s. */
  timeoutMs?: number;
  /** Run inside this named network namespace (`ip netns exec NAME …`). */
  netns?: string;
  /** Resolve with the result instead of throwing when the exit status is not 0. */
  reject?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface RunResult {
  command: string;
  exitCode: number;
  stdout: string;
  stderr: string;
}

const DEFAULT_TIMEOUT_MS = 15_000;

function wrap(file: string, args: readonly string[], netns?: string): [string, string[]] {
  return netns ? ['ip', ['netns', 'exec', netns, file, ...args]] : [file, [...args]];
}

export function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** Runs a command to completion and returns its output; throws CommandError on failure. */
export function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, argv] = wrap(file, args, opts.netns);
  const command = commandLine(cmd, argv);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.on('error', () => {}); // a command that exits without reading its input
    child.stdin.end(opts.input ?? '');
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (e.code === 'ENOENT') {
        reject(new HalfcloseError('HC_ERR_MISSING_TOOL', `\`${cmd}\` is not installed (run \`make setup\`, or install it with apt-get)`, { cause: e }));
      } else {
        reject(e);
      }
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0 || (opts.reject === false && !timedOut)) {
        resolve({ command, exitCode: code ?? -1, stdout, stderr });
      } else {
        reject(new CommandError({ command, exitCode: code, stdout, stderr, timedOut, signal }));
      }
    });
  });
}

/** The synchronous twin, for clean-up paths that run while the process is exiting. */
export function runSync(file: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const [cmd, argv] = wrap(file, args, opts.netns);
  const command = commandLine(cmd, argv);
  const r = spawnSync(cmd, argv, { input: opts.input ?? '', timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, encoding: 'utf8' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new HalfcloseError('HC_ERR_MISSING_TOOL', `\`${cmd}\` is not installed (run \`make setup\`, or install it with apt-get)`);
  }
  const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
  if (r.status !== 0 && (opts.reject !== false || timedOut)) {
    throw new CommandError({ command, exitCode: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', timedOut, signal: r.signal });
  }
  return { command, exitCode: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** True when `file` is on PATH. */
export function hasCommand(file: string): boolean {
  const r = spawnSync('sh', ['-c', `command -v ${file}`], { encoding: 'utf8' });
  return r.status === 0;
}
