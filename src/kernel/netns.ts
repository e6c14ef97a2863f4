// Named network namespaces (`ip netns`), veth pairs and sysctls inside them.
// Shared by the lab, the scanner and the namespace tests; the proxy never needs it.

import { existsSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { HalfcloseError } from '../errors.js';
import { run, runSync } from './run.js';

/** A short unique name such as `hc-lab-3f9a1c` (namespace and interface names are limited to 15 bytes). */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}

export function netnsExists(name: string): boolean {
  return existsSync(`/run/netns/${name}`);
}

export async function listNetns(): Promise<string[]> {
  const r = await run('ip', ['netns', 'list']);
  return r.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter((n) => n.length > 0);
}

export async function createNetns(name: string): Promise<void> {
  await run('ip', ['netns', 'add', name]);
  await run('ip', ['link', 'set', 'lo', 'up'], { netns: name });
}

/** Kills every process left in the namespace, then deletes it. Safe to call twice. */
export function deleteNetnsSync(name: string): void {
  if (!netnsExists(name)) return;
  const pids = runSync('ip', ['netns', 'pids', name], { reject: false }).stdout.split(/\s+/).filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  runSync('ip', ['netns', 'delete', name], { reject: false });
}

export async function deleteNetns(name: string): Promise<void> {
  deleteNetnsSync(name);
}

/** Assert that a namespace given on the command line exists. */
export function requireNetns(name: string, flag = '--netns'): void {
  if (!netnsExists(name)) {
    throw new HalfcloseError('HC_ERR_NETNS', `${flag}: network namespace "${name}" does not exist (see \`ip netns list\`)`);
  }
}

export interface VethSpec {
  /** Namespace and interface name of each end, and its address with prefix (10.77.0.1/24, fd77::1/64). */
  a: { netns: string; ifname: string; addrs: string[] };
  b: { netns: string; ifname: string; addrs: string[] };
}

/** Creates a veth pair between two namespaces, assigns the addresses and brings both ends up. */
export async function createVeth(spec: VethSpec): Promise<void> {
  await run('ip', ['link', 'add', spec.a.ifname, 'netns', spec.a.netns, 'type', 'veth', 'peer', 'name', spec.b.ifname, 'netns', spec.b.netns]);
  for (const end of [spec.a, spec.b]) {
    for (const addr of end.addrs) {
      const v6 = addr.includes(':');
      await run('ip', [...(v6 ? ['-6'] : []), 'addr', 'add', addr, 'dev', end.ifname, ...(v6 ? ['nodad'] : [])], { netns: end.netns });
    }
    await run('ip', ['link', 'set', end.ifname, 'up'], { netns: end.netns });
  }
}

/** Reads a sysctl as text (`net.netfilter.nf_conntrack_tcp_timeout_close_wait`), or null when it does not exist. */
export async function readSysctl(key: string, netns?: string): Promise<string | null> {
  const path = `/proc/sys/${key.replace(/\./g, '/')}`;
  if (!netns) {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      return null;
    }
  }
  const r = await run('cat', [path], { netns, reject: false });
  return r.exitCode === 0 ? r.stdout.trim() : null;
}

export async function writeSysctl(key: string, value: string | number, netns?: string): Promise<void> {
  await run('sysctl', ['-q', '-w', `${key}=${value}`], { netns });
}
