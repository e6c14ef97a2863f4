// Process plumbing for the benchmark: every child is tracked and killed at the end (also when the
// harness fails or is interrupted), readiness is read from /proc/net/tcp (no probe connection that
// an upstream such as iperf3 would mistake for a client), memory from /proc/PID.

import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { hasCommand } from '../src/kernel/run.js';

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Resolves with the first stdout line that parses as JSON. */
  firstJson<T = Record<string, unknown>>(timeoutMs: number): Promise<T>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
  readonly exited: boolean;
}

export class Procs {
  private readonly live = new Set<Child>();
  private readonly onExit = (): void => this.killAllSync();

  constructor() {
    process.on('exit', this.onExit);
  }

  /**
   * Starts `cmd`. stdout is piped (for JSON lines) unless `stdoutFile` is given; stderr goes to
   * `logFile` when given, else is discarded. stdin stays a pipe we never write to: workers exit
   * when it closes.
   */
  spawn(name: string, cmd: string, args: string[], opts: { logFile?: string; stdoutFile?: string; env?: NodeJS.ProcessEnv } = {}): Child {
    const errFd = opts.logFile ? openSync(opts.logFile, 'a') : 'ignore';
    const outFd = opts.stdoutFile ? openSync(opts.stdoutFile, 'a') : 'pipe';
    const proc = spawn(cmd, args, { stdio: ['pipe', outFd, errFd], env: opts.env ?? process.env });
    if (typeof errFd === 'number') closeSync(errFd);
    if (typeof outFd === 'number') closeSync(outFd);
    if (proc.pid === undefined) {
      // spawn reports ENOENT asynchronously; give a clear message instead of a pid-less child.
      throw new Error(`${name}: cannot start ${cmd}`);
    }
    proc.on('error', () => {});
    proc.stdin!.on('error', () => {});
    let exited = false;
    const exitP = new Promise<void>((r) => proc.once('exit', () => r()));
    let buf = '';
    const lines: string[] = [];
    const waiters: ((l: string) => void)[] = [];
    proc.stdout?.setEncoding('utf8');
    proc.stdout?.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const w = waiters.shift();
        if (w) w(line);
        else lines.push(line);
      }
    });
    const child: Child = {
      name,
      proc,
      pid: proc.pid,
      get exited() {
        return exited;
      },
      firstJson: <T>(timeoutMs: number) =>
        new Promise<T>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`${name}: no result within ${timeoutMs} ms`)), timeoutMs);
          const take = (line: string): void => {
            try {
              const v = JSON.parse(line) as T;
              clearTimeout(timer);
              resolve(v);
            } catch {
              waiters.push(take);
            }
          };
          void exitP.then(() => {
            // Lines still in flight arrive before 'exit' resolves only most of the time; wait a tick.
            setTimeout(() => {
              if (lines.length === 0) {
                clearTimeout(timer);
                reject(new Error(`${name}: exited (code ${proc.exitCode ?? proc.signalCode}) without a result`));
              }
            }, 50);
          });
          const l = lines.shift();
          if (l !== undefined) take(l);
          else waiters.push(take);
        }),
      stop: async (graceMs = 2000) => {
        if (exited) return;
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
        await exitP;
        clearTimeout(t);
      },
    };
    void exitP.then(() => {
      exited = true;
      this.live.delete(child);
    });
    this.live.add(child);
    return child;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live].map((c) => c.stop(1000)));
    process.removeListener('exit', this.onExit);
  }

  private killAllSync(): void {
    for (const c of this.live) {
      try {
        c.proc.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}

/** How to run a bench/ worker: compiled JS with node, or the .ts source through tsx (dev loop). */
export function workerCommand(): [string, string[]] {
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith('.ts')) return [process.execPath, ['--import', 'tsx', self.replace(/procs\.ts$/, 'workers.ts')]];
  return [process.execPath, [self.replace(/procs\.js$/, 'workers.js')]];
}

/** A free TCP port on 127.0.0.1 (bound and released; the kernel will not hand it out again soon). */
/**
 * Ports for the bench's own listeners: outside the kernel's ephemeral range, so nothing that
 * binds port 0 meanwhile (a test running beside the smoke test, any client's source port) can be
 * handed the same port between this check and the contender's bind, and then answer in its place.
 */
function portRange(): [number, number] {
  let lo = 32768;
  let hi = 60999;
  try {
    [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number) as [number, number];
  } catch {
    // not Linux: the defaults
  }
  return hi <= 64535 ? [hi + 1, 65535] : [Math.max(1024, lo - 8000), lo - 1];
}

function tryListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Every port handed out in this process: two calls before either port is bound must not get the same one. */
const handedOut = new Set<number>();

export async function freePort(): Promise<number> {
  const [lo, hi] = portRange();
  for (let i = 0; i < 200; i++) {
    const port = lo + Math.floor(Math.random() * (hi - lo + 1));
    if (handedOut.has(port) || !(await tryListen(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port in ${lo}-${hi}`);
}

/** True when something LISTENs on 127.0.0.1:`port` (or 0.0.0.0), read from /proc/net/tcp. */
export function isListening(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const text = readFileSync('/proc/net/tcp', 'utf8');
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[3] === '0A' && (f[1] === `0100007F:${hex}` || f[1] === `00000000:${hex}`)) return true;
  }
  return false;
}

export async function waitListening(ports: number[], child: Child | null, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (ports.every(isListening)) return;
    if (child?.exited) throw new Error(`${what} exited before listening (see its log)`);
    if (Date.now() > until) throw new Error(`${what} is not listening on ${ports.join(', ')} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * The CPU every proxy is pinned to (the last one), and the command prefix that pins it: each proxy
 * gets one core, threads and forked children included (Node's GC and libuv threads, socat's
 * forks), so the comparison is per core. null when taskset is missing or there is one CPU.
 */
export function proxyCpu(): number | null {
  const n = os.availableParallelism();
  return n > 1 && hasCommand('taskset') ? n - 1 : null;
}

/** `cmd args` pinned to proxyCpu() through taskset, or unchanged when there is no pinning. */
export function pinned(cmd: string, args: string[]): [string, string[]] {
  const cpu = proxyCpu();
  return cpu === null ? [cmd, args] : ['taskset', ['-c', String(cpu), cmd, ...args]];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resident set size of one process, in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Child pids of `pid` (all threads' children). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim();
      if (text) out.push(...text.split(/\s+/).map(Number));
    } catch {
      /* thread gone */
    }
  }
  return out;
}

/**
 * Proportional set size of a process and all its descendants, in bytes. For forking proxies
 * (socat) RSS would count the shared pages once per child; PSS splits them.
 */
export function treePssBytes(pid: number): number {
  let total = 0;
  const stack = [pid];
  while (stack.length > 0) {
    const p = stack.pop()!;
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'));
      if (m) total += Number(m[1]) * 1024;
      stack.push(...childPids(p));
    } catch {
      /* exited meanwhile */
    }
  }
  return total;
}
