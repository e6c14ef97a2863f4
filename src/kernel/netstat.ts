// Per-namespace TCP counters from /proc/net/netstat (named as nstat does: `TcpExtTCPChallengeACK`)
// and the conntrack timeouts that decide whether a half-closed connection survives.

import { readNsFile, type NsTarget } from './nstarget.js';

/**
 * Parses /proc/net/netstat or /proc/net/snmp: pairs of lines `TcpExt: Name1 Name2 …` /
 * `TcpExt: 1 2 …`. Keys are prefix + name (`TcpExtTCPChallengeACK`). Never throws; a pair whose
 * lengths differ is skipped.
 */
export function parseNetstat(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  const lines = String(text).split('\n').filter((l) => l.trim() !== '');
  for (let i = 0; i + 1 < lines.length; i++) {
    const names = lines[i]!.trim().split(/\s+/);
    const values = lines[i + 1]!.trim().split(/\s+/);
    const prefix = names[0];
    if (!prefix?.endsWith(':') || values[0] !== prefix) continue;
    if (names.slice(1).every((n) => /^-?\d+$/.test(n))) continue; // a value line, not a header
    if (names.length !== values.length) continue;
    for (let j = 1; j < names.length; j++) {
      if (/^-?\d+$/.test(values[j]!)) out[prefix.slice(0, -1) + names[j]] = Number(values[j]);
    }
    i++;
  }
  return out;
}

/** The counters the scanner shows: challenge ACKs are what a reused port hitting a stale socket produces. */
export const SCAN_COUNTERS = ['TcpExtTCPChallengeACK', 'TcpExtTCPSYNChallenge'] as const;

/** Reads /proc/net/netstat in the namespace; an empty record when it cannot be read. */
export async function readNetstat(target: NsTarget = {}): Promise<Record<string, number>> {
  const text = await readNsFile(target, '/proc/net/netstat');
  return text === null ? {} : parseNetstat(text);
}

/**
 * The namespace's `net.netfilter.nf_conntrack_tcp_timeout_close_wait` in seconds, or null when
 * conntrack is not active there (the sysctl only exists once it is).
 */
export async function readCloseWaitTimeout(target: NsTarget = {}): Promise<number | null> {
  const text = await readNsFile(target, '/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait');
  if (text === null || !/^\d+$/.test(text.trim())) return null;
  return Number(text.trim());
}
