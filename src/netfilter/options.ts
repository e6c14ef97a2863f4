// Options of `halfclose iptables`, parsed and validated once: ports, CIDRs (canonicalised the way
// iptables-save prints them, so a plan can be compared with the live tables), uids and gids.

import net from 'node:net';
import { UsageError } from '../errors.js';
import { formatIPv6, ipv6Bytes } from '../kernel/inet.js';

export type Family = 4 | 6;

/** A network in canonical form: network address (host bits cleared) and prefix, as iptables-save prints it. */
export interface Cidr {
  readonly family: Family;
  /** `10.0.0.0/8`, `2001:db8::/32`, `10.1.2.3/32`. */
  readonly text: string;
}

export interface InterceptOptions {
  /** Owners whose traffic is the proxy's own and is never captured. Default [1337]. */
  readonly proxyUids: readonly number[];
  /** Default [1337]. */
  readonly proxyGids: readonly number[];
  /** Port of the proxy's `--outbound` listener. Default 15001. */
  readonly outboundPort: number;
  /** Port of the proxy's `--inbound` listener. Default 15006. */
  readonly inboundPort: number;
  /** Inbound destination ports to capture: `*` (default) for all, or a list (empty: no inbound capture). */
  readonly inboundPorts: '*' | readonly number[];
  /** Inbound destination ports never captured. Default none. */
  readonly excludeInboundPorts: readonly number[];
  /** Outbound destination ports never captured. Default none. */
  readonly excludeOutboundPorts: readonly number[];
  /** Outbound destinations to capture: `*` (default) or a list of networks (per family; none: no capture). */
  readonly includeOutboundCidrs: '*' | readonly Cidr[];
  /** Outbound destinations never captured. Default none. */
  readonly excludeOutboundCidrs: readonly Cidr[];
  /** Also program ip6tables with the same layout. Default false. */
  readonly ipv6: boolean;
  /** Drop conntrack-INVALID TCP in mangle PREROUTING, as Istio's optional rule. Default false. */
  readonly dropInvalid: boolean;
}

export const DEFAULT_OPTIONS: InterceptOptions = Object.freeze({
  proxyUids: [1337],
  proxyGids: [1337],
  outboundPort: 15001,
  inboundPort: 15006,
  inboundPorts: '*',
  excludeInboundPorts: [],
  excludeOutboundPorts: [],
  includeOutboundCidrs: '*',
  excludeOutboundCidrs: [],
  ipv6: false,
  dropInvalid: false,
});

/**
 * Options for programmatic callers (the lab, tests): defaults filled in, numbers and CIDR text
 * checked the same way the command line's are. `interceptOptions({ proxyUids: [0] })`.
 */
export function interceptOptions(partial: Partial<Omit<InterceptOptions, 'includeOutboundCidrs' | 'excludeOutboundCidrs'>> & { includeOutboundCidrs?: '*' | readonly string[]; excludeOutboundCidrs?: readonly string[] } = {}): InterceptOptions {
  const list = (v: readonly number[] | undefined): string[] | undefined => (v === undefined ? undefined : v.length === 0 ? [''] : [v.join(',')]);
  const inbound = partial.inboundPorts;
  const include = partial.includeOutboundCidrs;
  return resolveOptions({
    proxyUid: list(partial.proxyUids),
    proxyGid: list(partial.proxyGids),
    outboundPort: partial.outboundPort === undefined ? undefined : String(partial.outboundPort),
    inboundPort: partial.inboundPort === undefined ? undefined : String(partial.inboundPort),
    inboundPorts: inbound === undefined ? undefined : inbound === '*' ? ['*'] : list(inbound),
    excludeInboundPorts: partial.excludeInboundPorts?.map(String),
    excludeOutboundPorts: partial.excludeOutboundPorts?.map(String),
    includeOutboundCidrs: include === undefined ? undefined : include === '*' ? ['*'] : include.length === 0 ? [''] : [...include],
    excludeOutboundCidrs: partial.excludeOutboundCidrs === undefined ? undefined : [...partial.excludeOutboundCidrs],
    ipv6: partial.ipv6,
    dropInvalid: partial.dropInvalid,
  });
}

/** Raw option text as given on the command line (lists already joined per flag). */
export interface RawOptions {
  proxyUid?: string[];
  proxyGid?: string[];
  outboundPort?: string;
  inboundPort?: string;
  inboundPorts?: string[];
  excludeInboundPorts?: string[];
  excludeOutboundPorts?: string[];
  includeOutboundCidrs?: string[];
  excludeOutboundCidrs?: string[];
  ipv6?: boolean;
  dropInvalid?: boolean;
}

/** Splits repeated and comma-separated values: `--x 1,2 --x 3` -> ['1','2','3']. */
function items(values: readonly string[]): string[] {
  return values.flatMap((v) => v.split(',')).map((s) => s.trim());
}

export function parsePort(text: string, flag: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`${flag}: expected a port number 1-65535, got "${text}"`);
  const n = Number(text);
  if (n < 1 || n > 65535) throw new UsageError(`${flag}: port ${n} is out of range 1-65535`);
  return n;
}

function parsePorts(values: readonly string[], flag: string): number[] {
  const out: number[] = [];
  for (const s of items(values)) {
    if (s === '') throw new UsageError(`${flag}: empty entry in port list "${values.join(',')}"`);
    const p = parsePort(s, flag);
    if (!out.includes(p)) out.push(p);
  }
  return out;
}

function parseIds(values: readonly string[], flag: string): number[] {
  const out: number[] = [];
  for (const s of items(values)) {
    // Names would be resolved by iptables in whatever /etc/passwd it sees; numbers mean the same everywhere.
    if (!/^\d+$/.test(s)) throw new UsageError(`${flag}: expected a numeric id (e.g. 1337), got "${s}"`);
    const n = Number(s);
    if (n > 4294967294) throw new UsageError(`${flag}: ${n} is out of range 0-4294967294`);
    if (!out.includes(n)) out.push(n);
  }
  if (out.length === 0) throw new UsageError(`${flag}: expected at least one id`);
  return out;
}

function v4ToBytes(addr: string): number[] {
  return addr.split('.').map(Number);
}

/** `10.1.2.3/8` -> `10.0.0.0/8`; a bare address is a /32 or /128. `flag` names the option in errors. */
export function parseCidr(text: string, flag: string): Cidr {
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(text.trim());
  const addr = m?.[1] ?? '';
  const family: Family | 0 = net.isIPv4(addr) ? 4 : net.isIPv6(addr) ? 6 : 0;
  if (!m || family === 0) throw new UsageError(`${flag}: "${text}" is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)`);
  const max = family === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) throw new UsageError(`${flag}: prefix /${prefix} of "${text}" is out of range 0-${max}`);
  if (prefix === 0) throw new UsageError(`${flag}: "${text}" matches every address; use * for all (--include-outbound-cidrs) or leave the exclusion out`);
  const bytes = family === 4 ? v4ToBytes(addr) : ipv6Bytes(addr);
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefix - i * 8));
    bytes[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  const host = family === 4 ? bytes.join('.') : formatIPv6(bytes);
  return { family, text: `${host}/${prefix}` };
}

function parseCidrs(values: readonly string[], flag: string): Cidr[] {
  const out: Cidr[] = [];
  for (const s of items(values)) {
    if (s === '') throw new UsageError(`${flag}: empty entry in CIDR list "${values.join(',')}"`);
    const c = parseCidr(s, flag);
    if (!out.some((o) => o.text === c.text)) out.push(c);
  }
  return out;
}

function isStar(values: readonly string[] | undefined): boolean {
  return values !== undefined && items(values).length === 1 && items(values)[0] === '*';
}

/** Raw flag values -> validated options; every error is one line naming the flag. */
export function resolveOptions(raw: RawOptions): InterceptOptions {
  const d = DEFAULT_OPTIONS;
  const ipv6 = raw.ipv6 === true;
  const outboundPort = raw.outboundPort === undefined ? d.outboundPort : parsePort(raw.outboundPort, '--outbound-port');
  const inboundPort = raw.inboundPort === undefined ? d.inboundPort : parsePort(raw.inboundPort, '--inbound-port');
  if (outboundPort === inboundPort) throw new UsageError(`--inbound-port: must differ from --outbound-port (both ${inboundPort})`);
  let inboundPorts: InterceptOptions['inboundPorts'] = d.inboundPorts;
  if (raw.inboundPorts !== undefined && !isStar(raw.inboundPorts)) {
    // An empty value turns inbound capture off, as Istio's empty includeInboundPorts does.
    inboundPorts = items(raw.inboundPorts).every((s) => s === '') ? [] : parsePorts(raw.inboundPorts, '--inbound-ports');
  }
  let includeOutboundCidrs: InterceptOptions['includeOutboundCidrs'] = d.includeOutboundCidrs;
  if (raw.includeOutboundCidrs !== undefined && !isStar(raw.includeOutboundCidrs)) {
    includeOutboundCidrs = items(raw.includeOutboundCidrs).every((s) => s === '') ? [] : parseCidrs(raw.includeOutboundCidrs, '--include-outbound-cidrs');
  }
  const excludeOutboundCidrs = parseCidrs(raw.excludeOutboundCidrs ?? [], '--exclude-outbound-cidrs');
  if (!ipv6) {
    for (const [flag, list] of [
      ['--include-outbound-cidrs', includeOutboundCidrs === '*' ? [] : includeOutboundCidrs],
      ['--exclude-outbound-cidrs', excludeOutboundCidrs],
    ] as const) {
      const v6 = list.find((c) => c.family === 6);
      if (v6) throw new UsageError(`${flag}: ${v6.text} is IPv6; add --ipv6 to program ip6tables too`);
    }
  }
  return Object.freeze({
    proxyUids: raw.proxyUid === undefined ? d.proxyUids : parseIds(raw.proxyUid, '--proxy-uid'),
    proxyGids: raw.proxyGid === undefined ? d.proxyGids : parseIds(raw.proxyGid, '--proxy-gid'),
    outboundPort,
    inboundPort,
    inboundPorts,
    excludeInboundPorts: parsePorts(raw.excludeInboundPorts ?? [], '--exclude-inbound-ports'),
    excludeOutboundPorts: parsePorts(raw.excludeOutboundPorts ?? [], '--exclude-outbound-ports'),
    includeOutboundCidrs,
    excludeOutboundCidrs,
    ipv6,
    dropInvalid: raw.dropInvalid === true,
  });
}
