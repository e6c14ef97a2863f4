// Parser of the conntrack table as `conntrack -L` prints it (with or without `-o extended`) and as
// /proc/net/nf_conntrack shows it, and a live reader. Unreadable lines are reported and skipped.

import { canonicalHost, endpointKey } from './inet.js';
import { describeTarget, readNsFile, runIn, type NsTarget } from './nstarget.js';
import { parseProblemError, type ParseOptions, type ParseProblem } from './ss.js';

export type { ParseOptions, ParseProblem } from './ss.js';

/** One direction of a conntrack entry. Ports are 0 for protocols without them (icmp). */
export interface ConntrackTuple {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  /** With `nf_conntrack_acct` on. */
  packets?: number;
  bytes?: number;
}

export interface ConntrackEntry {
  /** 1-based line number in the parsed text. */
  line: number;
  family: 4 | 6;
  /** `tcp`, `udp`, `icmp`, … as printed. */
  proto: string;
  protoNum: number;
  /** Seconds until the entry expires, as of the capture. */
  timeoutSec: number;
  /** TCP state (`ESTABLISHED`, `CLOSE_WAIT`, `TIME_WAIT` …); undefined for protocols without one. */
  state?: string;
  /** The original direction (the connection's initiator) and the expected reply (after NAT). */
  orig: ConntrackTuple;
  reply: ConntrackTuple;
  unreplied: boolean;
  assured: boolean;
  zone?: number;
  mark?: number;
  use?: number;
  /** Flow id (`-o id`). */
  id?: number;
  /** Every other `key=value` and `[FLAG]` printed, e.g. `{ OFFLOAD: 'true', secctx: '…' }`. */
  extra?: Record<string, string>;
}

export interface ConntrackParseResult {
  entries: ConntrackEntry[];
  problems: ParseProblem[];
}

const PROTO_NUMS: Record<string, number> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58, sctp: 132, dccp: 33, udplite: 136, gre: 47 };
const PORT_PROTOS = new Set(['tcp', 'udp', 'udplite', 'sctp', 'dccp']);
const KEYS_OF_TUPLE = new Set(['src', 'dst', 'sport', 'dport', 'packets', 'bytes', 'type', 'code']);

function problem(line: number, text: string, why: string): ParseProblem {
  return { line, text: text.length > 200 ? `${text.slice(0, 200)}…` : text, why };
}

function num(s: string | undefined): number | null {
  return s !== undefined && /^\d+$/.test(s) ? Number(s) : null;
}

/**
 * Parses conntrack text. Unreadable lines land in `problems` (or throw HC_ERR_PARSE with `strict`);
 * throws nothing else. Summary lines (`… flow entries have been shown.`) are ignored.
 */
export function parseConntrack(text: string, opts: ParseOptions = {}): ConntrackParseResult {
  const result = parseConntrackLenient(text);
  if (opts.strict && result.problems.length > 0) throw parseProblemError('conntrack output', result.problems[0]!);
  return result;
}

function parseConntrackLenient(text: string): ConntrackParseResult {
  const entries: ConntrackEntry[] = [];
  const problems: ParseProblem[] = [];
  const lines = String(text).split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim();
    if (line === '') continue;
    if (/^conntrack v[\d.]+ \(conntrack-tools\)/.test(line)) continue;
    const r = parseLine(line, n + 1);
    if (typeof r === 'string') problems.push(problem(n + 1, line, r));
    else entries.push(r);
  }
  return { entries, problems };
}

function parseLine(line: string, lineNo: number): ConntrackEntry | string {
  const toks = line.split(/\s+/);
  let k = 0;
  let l3: 4 | 6 | undefined;
  // `-o extended` and /proc/net/nf_conntrack start with the layer-3 name and number.
  if (toks[0] === 'ipv4' || toks[0] === 'ipv6') {
    l3 = toks[0] === 'ipv4' ? 4 : 6;
    if (num(toks[1]) === null) return 'layer-3 number missing after ' + toks[0];
    k = 2;
  }
  const proto = toks[k];
  const protoNum = num(toks[k + 1]);
  if (proto === undefined || !/^[a-z0-9-]+$/.test(proto) || protoNum === null) return 'expected PROTO NUMBER at the start (e.g. "tcp 6")';
  if (PROTO_NUMS[proto] !== undefined && PROTO_NUMS[proto] !== protoNum) return `protocol number ${protoNum} does not match ${proto}`;
  k += 2;
  const timeout = num(toks[k]);
  if (timeout === null) return 'timeout (seconds) missing after the protocol';
  k++;
  let state: string | undefined;
  if (toks[k] !== undefined && /^[A-Z][A-Z_0-9]*$/.test(toks[k]!)) state = toks[k++];
  const tuples: Record<string, string>[] = [{}];
  const extra: Record<string, string> = {};
  let unreplied = false;
  let assured = false;
  let zone: number | undefined;
  let mark: number | undefined;
  let use: number | undefined;
  let id: number | undefined;
  for (; k < toks.length; k++) {
    const tok = toks[k]!;
    const flag = /^\[([A-Z_]+)\]$/.exec(tok);
    if (flag) {
      if (flag[1] === 'UNREPLIED') unreplied = true;
      else if (flag[1] === 'ASSURED') assured = true;
      else extra[flag[1]!] = 'true';
      continue;
    }
    const eq = tok.indexOf('=');
    if (eq <= 0) return `unexpected token "${tok.slice(0, 40)}"`;
    const key = tok.slice(0, eq);
    const value = tok.slice(eq + 1);
    const cur = tuples[tuples.length - 1]!;
    // `id=` is part of an icmp tuple (after type= code=), otherwise the flow id of `-o id`.
    const inTuple = key === 'id' ? cur.type !== undefined && cur.id === undefined : KEYS_OF_TUPLE.has(key);
    if (inTuple) {
      // A second `src=` starts the reply tuple.
      if (key === 'src' && cur.src !== undefined) {
        if (tuples.length === 2) return 'more than two tuples';
        tuples.push({});
      }
      const t = tuples[tuples.length - 1]!;
      if (t[key] !== undefined) return `"${key}" repeated within one tuple`;
      t[key] = value;
      continue;
    }
    const v = num(value);
    if (key === 'zone' || key === 'mark' || key === 'use' || key === 'id') {
      const parsed = v ?? (key === 'mark' && /^0x[0-9a-f]+$/i.test(value) ? parseInt(value, 16) : null);
      if (parsed === null) return `${key}= is not a number`;
      if (key === 'zone') zone = parsed;
      else if (key === 'mark') mark = parsed;
      else if (key === 'use') use = parsed;
      else id = parsed;
      continue;
    }
    extra[key] = value;
  }
  if (tuples.length !== 2) return 'expected two tuples (original and reply)';
  const out: ConntrackTuple[] = [];
  for (const t of tuples) {
    const src = t.src !== undefined ? canonicalHost(t.src) : null;
    const dst = t.dst !== undefined ? canonicalHost(t.dst) : null;
    if (!src || !dst || src === '*' || dst === '*') return 'a tuple lacks a valid src= or dst= address';
    const hasPorts = PORT_PROTOS.has(proto) || t.sport !== undefined || t.dport !== undefined;
    const sport = hasPorts ? num(t.sport) : 0;
    const dport = hasPorts ? num(t.dport) : 0;
    if (sport === null || dport === null || sport > 65535 || dport > 65535) return 'a tuple has a missing or invalid port';
    const tuple: ConntrackTuple = { src, dst, sport, dport };
    const packets = num(t.packets);
    const bytes = num(t.bytes);
    if (packets !== null) tuple.packets = packets;
    if (bytes !== null) tuple.bytes = bytes;
    out.push(tuple);
  }
  const family: 4 | 6 = l3 ?? (out[0]!.src.includes(':') && !out[0]!.src.startsWith('::ffff:') ? 6 : 4);
  const e: ConntrackEntry = { line: lineNo, family, proto, protoNum, timeoutSec: timeout, orig: out[0]!, reply: out[1]!, unreplied, assured };
  if (state !== undefined) e.state = state;
  if (zone !== undefined) e.zone = zone;
  if (mark !== undefined) e.mark = mark;
  if (use !== undefined) e.use = use;
  if (id !== undefined) e.id = id;
  if (Object.keys(extra).length > 0) e.extra = extra;
  return e;
}

/** Key of a conntrack tuple's source or destination endpoint, comparable with `endpointKey` of a socket. */
export function tupleKeys(t: ConntrackTuple): { src: string; dst: string } {
  return { src: endpointKey(t.src, t.sport), dst: endpointKey(t.dst, t.dport) };
}

export interface ConntrackSnapshot extends ConntrackParseResult {
  /** `conntrack -L -o extended` or `/proc/net/nf_conntrack`. */
  source: string;
  where: string;
  takenAt: number;
  text: string;
}

/**
 * Reads a namespace's conntrack table with `conntrack -L -o extended` (IPv4 and IPv6); without the
 * conntrack tool it falls back to /proc/net/nf_conntrack. An empty table is not an error.
 */
export async function readConntrack(target: NsTarget = {}): Promise<ConntrackSnapshot> {
  const where = describeTarget(target);
  try {
    const r = await runIn(target, 'conntrack', ['-L', '-o', 'extended']);
    return { ...parseConntrack(r.stdout), source: r.command, where, takenAt: Date.now(), text: r.stdout };
  } catch (err) {
    if ((err as { code?: string }).code !== 'HC_ERR_MISSING_TOOL') throw err;
    const text = await readNsFile(target, '/proc/net/nf_conntrack');
    if (text === null) throw err;
    return { ...parseConntrack(text), source: '/proc/net/nf_conntrack', where, takenAt: Date.now(), text };
  }
}
