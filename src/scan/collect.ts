// Gathers what the scanner judges: live from a network namespace (ss, conntrack, /proc/net/netstat,
// the CLOSE_WAIT sysctl), from files a user captured elsewhere, or from every namespace on the host.

import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { HalfcloseError } from '../errors.js';
import { parseConntrack, readConntrack } from '../kernel/conntrack.js';
import { readCloseWaitTimeout, readNetstat, SCAN_COUNTERS } from '../kernel/netstat.js';
import { describeTarget, runIn, type NsTarget } from '../kernel/nstarget.js';
import { parseProblemError, parseSs, readSockets } from '../kernel/ss.js';
import type { ScanInput } from './analyze.js';

/** True when the namespace's nat table redirects or DNATs anything: then conntrack is tracking it. */
async function natInUse(target: NsTarget): Promise<boolean | null> {
  try {
    const out = (await runIn(target, 'iptables-save', ['-t', 'nat'], { reject: false })).stdout;
    const out6 = (await runIn(target, 'ip6tables-save', ['-t', 'nat'], { reject: false })).stdout;
    return /-j (REDIRECT|DNAT)\b/.test(out + out6);
  } catch {
    return null; // iptables not installed: cannot tell
  }
}

/** Reads one namespace live. Root is needed for owners (`ss -p`) and for conntrack. */
export async function collectLive(target: NsTarget, proxyPorts?: readonly number[]): Promise<ScanInput> {
  const where = describeTarget(target);
  const ss = await readSockets(target);
  let conntrack: ScanInput['conntrack'] = null;
  let conntrackNote: string | undefined;
  const problems: ScanInput['problems'] = ss.problems.map((p) => ({ ...p, source: 'ss' }));
  try {
    const ct = await readConntrack(target);
    problems.push(...ct.problems.map((p) => ({ ...p, source: 'conntrack' })));
    const tcp = ct.entries.filter((e) => e.proto === 'tcp');
    // An empty table in a namespace without NAT means conntrack is not looking at it at all, which
    // is different from "the entry expired": then only the app's socket can tell.
    if (tcp.length === 0 && (await natInUse(target)) === false) {
      conntrackNote = 'the table is empty and no REDIRECT/DNAT rule is installed, so conntrack is not tracking this namespace';
    } else {
      conntrack = ct.entries;
    }
  } catch (err) {
    if (!(err instanceof HalfcloseError) || (err.code !== 'HC_ERR_COMMAND' && err.code !== 'HC_ERR_MISSING_TOOL')) throw err;
    conntrackNote = err.message;
  }
  const [counters, closeWaitTimeoutSec] = await Promise.all([readNetstat(target), readCloseWaitTimeout(target)]);
  const picked: Record<string, number> = {};
  for (const c of SCAN_COUNTERS) if (counters[c] !== undefined) picked[c] = counters[c]!;
  const input: ScanInput = { where, sockets: ss.sockets, conntrack, closeWaitTimeoutSec, counters: picked, problems };
  if (proxyPorts) input.proxyPorts = proxyPorts;
  if (conntrackNote) input.conntrackNote = conntrackNote;
  return input;
}

function readInput(flag: string, file: string): string {
  try {
    return file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
  } catch (err) {
    throw new HalfcloseError('HC_ERR_USAGE', `${flag}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * Reads captured `ss` (and optionally conntrack) text. A file with unreadable lines only is not
 * the output we expect: that is an HC_ERR_PARSE naming its first line rather than an empty scan.
 */
export function collectFiles(ssFile: string, conntrackFile: string | undefined, proxyPorts?: readonly number[]): ScanInput {
  const ssText = readInput('--ss', ssFile);
  const ss = parseSs(ssText);
  if (ss.sockets.length === 0 && ss.problems.length > 0) throw parseProblemError(`--ss ${ssFile}: not ss output`, ss.problems[0]!);
  const problems: ScanInput['problems'] = ss.problems.map((p) => ({ ...p, source: 'ss' }));
  let conntrack: ScanInput['conntrack'] = null;
  if (conntrackFile !== undefined) {
    const ctText = readInput('--conntrack', conntrackFile);
    const ct = parseConntrack(ctText);
    if (ct.entries.length === 0 && ct.problems.length > 0) throw parseProblemError(`--conntrack ${conntrackFile}: not conntrack output`, ct.problems[0]!);
    problems.push(...ct.problems.map((p) => ({ ...p, source: 'conntrack' })));
    conntrack = ct.entries;
  }
  const input: ScanInput = {
    where: `files ${ssFile}${conntrackFile !== undefined ? `, ${conntrackFile}` : ''}`,
    sockets: ss.sockets,
    conntrack,
    closeWaitTimeoutSec: null,
    counters: {},
    problems,
  };
  if (proxyPorts) input.proxyPorts = proxyPorts;
  if (conntrackFile === undefined) input.conntrackNote = 'no --conntrack file given';
  return input;
}

/** A distinct network namespace on the host, with a process to enter it by and the names of the processes in it. */
export interface HostNamespace {
  inode: number;
  /** `ip netns` name when it has one. */
  name: string | null;
  /** A process inside; null for a named namespace without processes (entered by name instead). */
  pid: number | null;
  /** Distinct process names in it, for display (`envoy, app`). */
  processes: string[];
}

/** Every distinct network namespace on the host: those of /proc/*\/ns/net, plus named ones in /run/netns. */
export function listHostNamespaces(): HostNamespace[] {
  const byInode = new Map<number, HostNamespace>();
  for (const ent of readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue;
    let inode: number;
    try {
      const m = /^net:\[(\d+)\]$/.exec(readlinkSync(`/proc/${ent}/ns/net`));
      if (!m) continue;
      inode = Number(m[1]);
    } catch {
      continue; // exited, or a kernel thread we may not read
    }
    let comm = '?';
    try {
      // Kernel threads (empty cmdline) all live in the host namespace; they would only crowd its name.
      if (readFileSync(`/proc/${ent}/cmdline`).length === 0) continue;
      comm = readFileSync(`/proc/${ent}/comm`, 'utf8').trim();
    } catch {
      continue; // exited meanwhile
    }
    const ns = byInode.get(inode) ?? { inode, name: null, pid: Number(ent), processes: [] };
    if (!ns.processes.includes(comm)) ns.processes.push(comm);
    byInode.set(inode, ns);
  }
  let named: string[] = [];
  try {
    named = readdirSync('/run/netns');
  } catch {
    /* no named namespaces */
  }
  for (const name of named) {
    try {
      const inode = statSync(`/run/netns/${name}`).ino;
      const ns = byInode.get(inode) ?? { inode, name: null, pid: null, processes: [] };
      ns.name = name;
      byInode.set(inode, ns);
    } catch {
      /* deleted meanwhile */
    }
  }
  return [...byInode.values()].sort((a, b) => a.inode - b.inode);
}

/** The target to enter a host namespace by: its name when it has one, else a process in it. */
export function targetOf(ns: HostNamespace): NsTarget {
  return ns.name !== null ? { netns: ns.name } : { pid: ns.pid! };
}

/** How a host namespace is named in reports: `netns pod-1 (envoy, app)` or `net:[4026532281] (envoy)`. */
export function labelOf(ns: HostNamespace): string {
  const procs = ns.processes.length ? ` (${ns.processes.slice(0, 4).join(', ')}${ns.processes.length > 4 ? ', …' : ''})` : '';
  return `${ns.name !== null ? `netns ${ns.name}` : `net:[${ns.inode}] pid ${ns.pid}`}${procs}`;
}

/**
 * Whether a listed namespace can still be entered the way targetOf() enters it. `ip netns del`
 * unmounts before it unlinks, so a name that still exists may no longer be that namespace (its
 * file is then a plain empty file with another inode): compare inodes, not existence.
 */
export function namespaceExists(ns: HostNamespace): boolean {
  try {
    if (ns.name !== null) return statSync(`/run/netns/${ns.name}`).ino === ns.inode;
    return readlinkSync(`/proc/${ns.pid}/ns/net`) === `net:[${ns.inode}]`;
  } catch {
    return false;
  }
}
