// The kernel settings that decide whether a proxy behind REDIRECT can leak half-closed
// connections: conntrack's TCP timeouts and flags, and the TCP keepalive / FIN defaults. Read in
// this process's namespace (the guard, `halfclose doctor`) or in a named one (`doctor --netns`).

import { readFileSync } from 'node:fs';
import { requireNetns } from './netns.js';
import { run } from './run.js';

/** The conntrack sysctl that decides how long a half-closed connection's entry lives without traffic. */
export const CLOSE_WAIT_SYSCTL = 'net.netfilter.nf_conntrack_tcp_timeout_close_wait';
export const CLOSE_WAIT_PATH = sysctlPath(CLOSE_WAIT_SYSCTL);
/** What the kernel ships, used when conntrack is not loaded (the sysctl is then absent). */
export const DEFAULT_CLOSE_WAIT_SEC = 60;

/** Every conntrack TCP state timeout the kernel has (seconds). */
export const CONNTRACK_TCP_TIMEOUTS = [
  'syn_sent',
  'syn_recv',
  'established',
  'fin_wait',
  'close_wait',
  'last_ack',
  'time_wait',
  'close',
  'max_retrans',
  'unacknowledged',
] as const;

/** The sysctls `halfclose doctor` reads, in the order it prints them. */
export const KERNEL_SETTINGS = [
  ...CONNTRACK_TCP_TIMEOUTS.map((t) => `net.netfilter.nf_conntrack_tcp_timeout_${t}`),
  'net.netfilter.nf_conntrack_tcp_loose',
  'net.netfilter.nf_conntrack_tcp_be_liberal',
  'net.netfilter.nf_conntrack_tcp_ignore_invalid_rst',
  'net.netfilter.nf_conntrack_max',
  'net.netfilter.nf_conntrack_count',
  'net.ipv4.tcp_keepalive_time',
  'net.ipv4.tcp_keepalive_intvl',
  'net.ipv4.tcp_keepalive_probes',
  'net.ipv4.tcp_fin_timeout',
] as const;

export type KernelSettingName = (typeof KERNEL_SETTINGS)[number];

/** Sysctl name -> integer value, or null when the sysctl does not exist there (conntrack not loaded). */
export type KernelSettings = Record<KernelSettingName, number | null>;

export function sysctlPath(name: string): string {
  return `/proc/sys/${name.replace(/\./g, '/')}`;
}

function toInt(text: string | null | undefined): number | null {
  if (text === null || text === undefined) return null;
  const n = Number(text.trim());
  return Number.isInteger(n) ? n : null;
}

/** The conntrack CLOSE_WAIT timeout of this process's namespace in seconds, or null when conntrack is not loaded. */
export function readCloseWaitSec(path = CLOSE_WAIT_PATH): number | null {
  try {
    return toInt(readFileSync(path, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * Reads every KERNEL_SETTINGS entry. In another namespace this is one `ip netns exec NAME grep -s -H
 * '' FILE…` through the runner: grep prints `path:value` for each file that exists and skips the
 * missing ones (cat would print bare values and lose which is which).
 */
export async function readKernelSettings(netns?: string): Promise<KernelSettings> {
  const out = {} as KernelSettings;
  if (netns === undefined) {
    for (const name of KERNEL_SETTINGS) {
      try {
        out[name] = toInt(readFileSync(sysctlPath(name), 'utf8'));
      } catch {
        out[name] = null;
      }
    }
    return out;
  }
  requireNetns(netns);
  const paths = KERNEL_SETTINGS.map(sysctlPath);
  // Exit status 2 only means some file is missing (conntrack not loaded); the output is still right.
  const r = await run('grep', ['-s', '-H', '', ...paths], { netns, reject: false });
  const byPath = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const i = line.lastIndexOf(':');
    if (i > 0) byPath.set(line.slice(0, i), line.slice(i + 1));
  }
  for (const name of KERNEL_SETTINGS) out[name] = toInt(byPath.get(sysctlPath(name)));
  return out;
}

/**
 * Re-reads the CLOSE_WAIT timeout and calls `onChange` when it differs from the last value.
 * Polled, not watched: inotify on /proc/sys is no part of the sysctl ABI (on Linux 6.18 it does
 * report a write made through the file, but nothing promises that), and it cannot watch a sysctl
 * that only appears once conntrack is loaded after the proxy started. A read every few seconds
 * costs nothing and covers every case.
 * The timer is unref'd: it never keeps the process alive by itself.
 */
export class CloseWaitWatcher {
  private timer: NodeJS.Timeout | null = null;
  private last: number | null;

  constructor(
    private readonly onChange: (sec: number | null, previous: number | null) => void,
    private readonly read: () => number | null = () => readCloseWaitSec(),
    /** How often to re-read. Default 5 s. */
    private readonly pollMs = 5000,
    initial?: number | null,
  ) {
    this.last = initial === undefined ? this.read() : initial;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.check(), this.pollMs);
    this.timer.unref();
  }

  /** Reads once now; exposed so tests need not wait for the timer. */
  check(): void {
    const now = this.read();
    if (now !== this.last) {
      const prev = this.last;
      this.last = now;
      this.onChange(now, prev);
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
