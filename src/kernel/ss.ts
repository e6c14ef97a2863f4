// Parser of `ss` output (`ss -tanoeip`, `ss -tan`, `ss -naoep`, with or without header) into TCP
// sockets, and a live reader. Lines it cannot read are reported with their number and skipped.

import { HalfcloseError } from '../errors.js';
import { canonicalHost, type HostPort } from './inet.js';
import { describeTarget, runIn, type NsTarget } from './nstarget.js';

export type { HostPort } from './inet.js';

/** Socket states as `ss` prints them. */
export const TCP_STATES = [
  'ESTAB',
  'SYN-SENT',
  'SYN-RECV',
  'FIN-WAIT-1',
  'FIN-WAIT-2',
  'TIME-WAIT',
  'UNCONN',
  'CLOSE-WAIT',
  'LAST-ACK',
  'LISTEN',
  'CLOSING',
  'NEW-SYN-RECV',
  'BOUND',
  'UNKNOWN',
] as const;
export type TcpState = (typeof TCP_STATES)[number];
const STATE_SET = new Set<string>(TCP_STATES);

/** Socket kinds of the `Netid` column (`ss -a` without `-t`); only `tcp` rows become sockets. */
const NETIDS = new Set(['tcp', 'udp', 'raw', 'u_str', 'u_dgr', 'u_seq', 'p_raw', 'p_dgr', 'nl', 'v_str', 'v_dgr', 'xdp', 'mptcp', 'sctp', 'tipc', 'icmp6', 'dccp', 'unknown', '???']);

/** One process holding the socket: `users:(("envoy",pid=1,fd=3))`. */
export interface SocketOwner {
  name: string;
  pid: number;
  fd: number;
}

/** The `-o` timer: `timer:(keepalive,7.500ms,0)`. */
export interface SocketTimer {
  /** on (retransmit), keepalive, timewait, persist, unknown. */
  name: string;
  /** Time left until it fires, in milliseconds; null when ss printed no time. */
  expiresMs: number | null;
  /** Retransmits or keepalive probes sent so far. */
  retrans: number;
}

export interface TcpSocket {
  /** 1-based line number in the parsed text. */
  line: number;
  state: TcpState;
  recvQ: number;
  sendQ: number;
  local: HostPort;
  peer: HostPort;
  /** Processes that hold the socket (`-p`); empty when ss showed none (no `-p`, not root, orphan). */
  owners: SocketOwner[];
  timer?: SocketTimer;
  /** `-e`: uid of the socket's creator (ss omits it for uid 0). */
  uid?: number;
  /** `-e`: socket inode (0 for orphans and TIME-WAIT). */
  inode?: number;
  /** `-e`: kernel socket cookie, as printed (hex). */
  sk?: string;
  /** `-e`: shutdown marks: `<->` none, `-->` read side shut (FIN received), `<--` write side shut, `---` both. */
  shutdown?: string;
  /** `-i`: milliseconds since the last data sent, received, ack received. */
  lastsndMs?: number;
  lastrcvMs?: number;
  lastackMs?: number;
  /** `-i`: every other `key:value` of the detail line (cwnd, rtt, bytes_sent …) as printed. */
  info?: Record<string, string>;
}

/** A line that could not be read: its 1-based number, its text and why. */
export interface ParseProblem {
  line: number;
  text: string;
  why: string;
}

export interface SsParseResult {
  sockets: TcpSocket[];
  problems: ParseProblem[];
  /** Rows of other socket kinds (udp, unix, netlink …) that were skipped on purpose. */
  skipped: number;
}

const MAX_PROBLEM_TEXT = 200;

function problem(line: number, text: string, why: string): ParseProblem {
  return { line, text: text.length > MAX_PROBLEM_TEXT ? `${text.slice(0, MAX_PROBLEM_TEXT)}…` : text, why };
}

/** Parses `ADDR:PORT` as ss prints it: `10.0.0.1:80`, `[::1]:15001`, `*:*`, `[fe80::1]%eth0:22`, old `:::22`. */
export function parseSsAddress(text: string): HostPort | null {
  const i = text.lastIndexOf(':');
  if (i <= 0) return null;
  let hostText = text.slice(0, i);
  const portText = text.slice(i + 1);
  let port: number;
  if (portText === '*') port = 0;
  else if (/^\d{1,5}$/.test(portText) && Number(portText) <= 65535) port = Number(portText);
  else return null;
  let scope: string | undefined;
  // The scope follows the address, outside the brackets: `[fe80::1]%eth0` or `10.0.0.1%lo`.
  const pct = hostText.lastIndexOf('%');
  if (pct > 0 && !hostText.slice(pct).includes(']')) {
    scope = hostText.slice(pct + 1);
    hostText = hostText.slice(0, pct);
  }
  const host = canonicalHost(hostText);
  if (host === null) return null;
  return scope ? { host, port, scope } : { host, port };
}

/** ss's timer text: `7.500ms` (7.5 s), `200ms`, `59sec`, `1min23sec`, `119min`, `1h2min`, or empty. */
export function parseSsDuration(text: string): number | null {
  if (text === '') return null;
  const m = /^(?:(\d+)h)?(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)\.(\d+)ms|(\d+)ms)?$/.exec(text);
  if (!m || text.length === 0) return null;
  const [, h, min, sec, dotSec, dotMs, ms] = m;
  let total = 0;
  if (h) total += Number(h) * 3_600_000;
  if (min) total += Number(min) * 60_000;
  if (sec) total += Number(sec) * 1000;
  if (dotSec) total += Number(dotSec) * 1000 + Number(dotMs!.padEnd(3, '0').slice(0, 3));
  if (ms) total += Number(ms);
  return total;
}

/** Reads `users:(("a",pid=1,fd=3),("b",pid=2,fd=4))` starting at `start`; returns owners and the end index. */
function parseUsers(text: string, start: number): { owners: SocketOwner[]; end: number } | null {
  let i = start + 'users:('.length;
  const owners: SocketOwner[] = [];
  const entry = /\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)/y;
  for (;;) {
    entry.lastIndex = i;
    const m = entry.exec(text);
    if (!m) return null;
    owners.push({ name: m[1]!.replace(/\\(.)/g, '$1'), pid: Number(m[2]), fd: Number(m[3]) });
    i = entry.lastIndex;
    if (text[i] === ',') {
      i++;
      continue;
    }
    if (text[i] === ')') return { owners, end: i + 1 };
    return null;
  }
}

/** Applies the `-e`/`-o`/`-p` columns after the peer address. Returns a reason when something is malformed. */
function applyExtras(sock: TcpSocket, rest: string): string | null {
  let text = rest;
  const u = text.indexOf('users:(');
  if (u >= 0) {
    const r = parseUsers(text, u);
    if (!r) return 'malformed users:(…) owner list';
    sock.owners = r.owners;
    text = text.slice(0, u) + ' ' + text.slice(r.end);
  }
  for (const tok of text.split(/\s+/)) {
    if (tok === '') continue;
    if (tok === '<->' || tok === '-->' || tok === '<--' || tok === '---') {
      sock.shutdown = tok;
      continue;
    }
    const t = /^timer:\(([a-z_]+),([^,]*),(\d+)\)$/.exec(tok);
    if (t) {
      sock.timer = { name: t[1]!, expiresMs: parseSsDuration(t[2]!), retrans: Number(t[3]) };
      continue;
    }
    if (tok.startsWith('timer:')) return `malformed timer "${tok}"`;
    const kv = /^(uid|ino|sk):(\S+)$/.exec(tok);
    if (kv) {
      if (kv[1] === 'sk') sock.sk = kv[2]!;
      else if (/^\d+$/.test(kv[2]!)) sock[kv[1] === 'uid' ? 'uid' : 'inode'] = Number(kv[2]);
      else return `malformed ${kv[1]}:${kv[2]}`;
    }
    // Other -e fields (cgroup:, fwmark:, v6only:, tos …) are not needed by any finding.
  }
  return null;
}

/** Applies an `-i` detail line (`ts sack cubic wscale:7,7 rto:204 … lastsnd:928 lastrcv:928 lastack:612 …`). */
function applyInfo(sock: TcpSocket, text: string): void {
  const info = sock.info ?? {};
  const toks = text.trim().split(/\s+/);
  for (let k = 0; k < toks.length; k++) {
    const tok = toks[k]!;
    const c = tok.indexOf(':');
    if (c > 0) {
      info[tok.slice(0, c)] = tok.slice(c + 1);
    } else if (/^[a-z_]+$/.test(tok) && k + 1 < toks.length && /^[\d.]+[KMG]?bps$/.test(toks[k + 1]!)) {
      // `send 1612962025bps`, `pacing_rate …`, `delivery_rate …`: a name and its value.
      info[tok] = toks[++k]!;
    } else if (tok.length > 0) {
      info[tok] = 'true';
    }
  }
  for (const [key, field] of [
    ['lastsnd', 'lastsndMs'],
    ['lastrcv', 'lastrcvMs'],
    ['lastack', 'lastackMs'],
  ] as const) {
    const v = info[key];
    if (v !== undefined && /^\d+$/.test(v)) sock[field] = Number(v);
  }
  sock.info = info;
}

function isHeader(line: string): boolean {
  return /^\s*(Netid\s+)?State\s+Recv-Q\s+Send-Q/.test(line) || /^\s*Recv-Q\s+Send-Q\s+Local/.test(line);
}

export interface ParseOptions {
  /**
   * Throw a HalfcloseError (HC_ERR_PARSE) naming the first unreadable line instead of reporting it
   * in `problems`. Default false: a scan of a live host must not stop at one odd line.
   */
  strict?: boolean;
}

/** The HC_ERR_PARSE error for a problem line: `ss output, line 3: too few columns …: "ESTAB 0 0"`. */
export function parseProblemError(what: string, p: ParseProblem): HalfcloseError {
  return new HalfcloseError('HC_ERR_PARSE', `${what}, line ${p.line}: ${p.why}: "${p.text}"`);
}

/**
 * Parses ss output. Unreadable lines land in `problems` (or throw HC_ERR_PARSE with `strict`),
 * other socket kinds in `skipped`. Throws nothing else, whatever the input.
 */
export function parseSs(text: string, opts: ParseOptions = {}): SsParseResult {
  const result = parseSsLenient(text);
  if (opts.strict && result.problems.length > 0) throw parseProblemError('ss output', result.problems[0]!);
  return result;
}

function parseSsLenient(text: string): SsParseResult {
  const sockets: TcpSocket[] = [];
  const problems: ParseProblem[] = [];
  let skipped = 0;
  // The socket that an indented `-i` detail line belongs to; null after a skipped row.
  let last: TcpSocket | null = null;
  let lastWasSkipped = false;
  const lines = String(text).split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const raw = lines[n]!;
    const lineNo = n + 1;
    const line = raw.replace(/\s+$/, '');
    if (line.trim() === '') continue;
    if (isHeader(line)) continue;
    const toks = line.trim().split(/\s+/);
    let k = 0;
    let netid: string | undefined;
    if (NETIDS.has(toks[0]!) && toks.length > 1 && STATE_SET.has(toks[1]!)) {
      netid = toks[0];
      k = 1;
    }
    const state = toks[k]!;
    if (!STATE_SET.has(state)) {
      if (/^\s/.test(raw)) {
        // An indented continuation: the -i detail of the row above.
        if (last) applyInfo(last, line);
        else if (!lastWasSkipped) problems.push(problem(lineNo, line, 'detail line without a socket line before it'));
        continue;
      }
      problems.push(problem(lineNo, line, `unknown socket state "${state.slice(0, 20)}"`));
      last = null;
      lastWasSkipped = true;
      continue;
    }
    if (netid !== undefined && netid !== 'tcp') {
      skipped++;
      last = null;
      lastWasSkipped = true;
      continue;
    }
    if (toks.length < k + 5) {
      problems.push(problem(lineNo, line, 'too few columns (expected State Recv-Q Send-Q Local Peer)'));
      last = null;
      lastWasSkipped = true;
      continue;
    }
    const [recvQ, sendQ, localText, peerText] = toks.slice(k + 1, k + 5) as [string, string, string, string];
    if (!/^\d+$/.test(recvQ) || !/^\d+$/.test(sendQ)) {
      problems.push(problem(lineNo, line, 'Recv-Q/Send-Q are not numbers'));
      last = null;
      lastWasSkipped = true;
      continue;
    }
    const local = parseSsAddress(localText);
    const peer = parseSsAddress(peerText);
    if (!local || !peer) {
      const bad = !local ? localText : peerText;
      const why = /:[a-z][\w-]*$/i.test(bad) ? `port is a service name in "${bad}" (capture with ss -n)` : `unreadable address "${bad.slice(0, 60)}"`;
      problems.push(problem(lineNo, line, why));
      last = null;
      lastWasSkipped = true;
      continue;
    }
    const sock: TcpSocket = { line: lineNo, state: state as TcpState, recvQ: Number(recvQ), sendQ: Number(sendQ), local, peer, owners: [] };
    // The rest of the row, from the first character after the peer address (keeps quoted names intact).
    const rest = afterTokens(line, k + 5);
    const why = applyExtras(sock, rest);
    if (why) {
      problems.push(problem(lineNo, line, why));
      last = null;
      lastWasSkipped = true;
      continue;
    }
    sockets.push(sock);
    last = sock;
    lastWasSkipped = false;
  }
  return { sockets, problems, skipped };
}

/** The text of `line` after its first `count` whitespace-separated tokens. */
function afterTokens(line: string, count: number): string {
  const re = /\S+/g;
  let end = 0;
  for (let i = 0; i < count; i++) {
    const m = re.exec(line);
    if (!m) return '';
    end = m.index + m[0].length;
  }
  return line.slice(end);
}

/** The arguments the live reader passes to ss: all TCP sockets, numeric, timers, -e, -i, -p. */
export const SS_ARGS = ['-tanoeip'] as const;

export interface SocketSnapshot extends SsParseResult {
  /** The command that produced it, e.g. `ip netns exec pod ss -tanoeip`. */
  command: string;
  /** Where it was read (`netns pod`, `pid 123`, `this namespace`). */
  where: string;
  /** Epoch milliseconds when the command returned. */
  takenAt: number;
  /** The raw text, so it can be saved as a fixture or shown. */
  text: string;
}

/** Reads every TCP socket of a network namespace with `ss -tanoeip` (root needed for owners). */
export async function readSockets(target: NsTarget = {}): Promise<SocketSnapshot> {
  const r = await runIn(target, 'ss', SS_ARGS);
  return { ...parseSs(r.stdout), command: r.command, where: describeTarget(target), takenAt: Date.now(), text: r.stdout };
}
