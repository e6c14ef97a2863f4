// The proxy's configuration: the YAML file's shape (validated with zod, unknown keys rejected)
// and the resolved, frozen form the proxy runs with (durations in ms, addresses parsed).

import net from 'node:net';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { formatDuration, parseDuration } from '../util/duration.js';
import { parseEndpoint, type Endpoint } from '../util/address.js';

const duration = z.union([z.string(), z.number()]);

const listenerSchema = z.strictObject({
  /** Used in metrics and logs; defaults to the kind (`outbound`, `inbound`) or `route-<port>`. */
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, "_", "." or "-"').optional(),
  kind: z.enum(['outbound', 'inbound', 'route']),
  listen: z.string(),
  /** Only for kind `route`: the fixed upstream HOST:PORT. */
  upstream: z.string().optional(),
  /**
   * Source addresses of upstream connections, at most one per family, comma-separated; the one of
   * the destination's family is bound. Default `127.0.0.6,::6` for `inbound` (the addresses the
   * interception rules let through, as Istio does), none otherwise.
   */
  upstreamSource: z.string().optional(),
});

export const fileSchema = z.strictObject({
  listeners: z.array(listenerSchema).optional(),
  timeouts: z
    .strictObject({
      connect: duration.optional(),
      idle: duration.optional(),
      halfClose: duration.optional(),
      maxDuration: duration.optional(),
      drain: duration.optional(),
    })
    .optional(),
  /** Per connection and direction: unsent bytes above which reading from the other side pauses. */
  bufferLimit: z.union([z.number().int().positive(), z.string()]).optional(),
  keepalive: z
    .strictObject({
      halfClosed: z.string().optional(),
      established: z.string().optional(),
      userTimeout: duration.optional(),
    })
    .optional(),
  admin: z
    .strictObject({
      address: z.string().optional(),
      allowNonLoopback: z.boolean().optional(),
    })
    .optional(),
  accessLog: z.string().optional(),
  relay: z.enum(['splice', 'copy']).optional(),
  logLevel: z.enum(['debug', 'info', 'warn', 'error', 'silent']).optional(),
});

export type FileConfig = z.infer<typeof fileSchema>;

/** Keys that were renamed or that users of other proxies will try, with what to write instead. */
const RENAMED: Record<string, string> = {
  idle_timeout: 'timeouts.idle',
  idleTimeout: 'timeouts.idle',
  connect_timeout: 'timeouts.connect',
  connectTimeout: 'timeouts.connect',
  halfCloseTimeout: 'timeouts.halfClose',
  drainTimeout: 'timeouts.drain',
  max_connection_duration: 'timeouts.maxDuration',
  routes: 'listeners (kind: route)',
};

export type ListenerKind = 'outbound' | 'inbound' | 'route';

export interface ListenerConfig {
  readonly name: string;
  readonly kind: ListenerKind;
  readonly listen: Endpoint;
  readonly upstream: Endpoint | null;
  readonly upstreamSource: string | null;
}

export type KeepaliveMode = { mode: 'auto' } | { mode: 'off' } | { mode: 'fixed'; idleSec: number; intervalSec: number; count: number };

export interface ProxyConfig {
  readonly listeners: readonly ListenerConfig[];
  /** Upstream connect timeout. Default 5 s; 0 waits for the kernel's own SYN retries. */
  readonly connectTimeoutMs: number;
  /** No bytes either way for this long ends the connection (`idle-timeout`). Default 1 h; 0 disables (leaks may never end). */
  readonly idleTimeoutMs: number;
  /** Half-closed and idle for this long ends the connection (`half-close-timeout`). Default 0 (off): the guard makes it unnecessary. */
  readonly halfCloseTimeoutMs: number;
  /** Any connection older than this ends (`max-duration`). Default 0 (off). */
  readonly maxDurationMs: number;
  /** On SIGTERM, how long connections may finish before they are reset (`drain`). Default 30 s. */
  readonly drainTimeoutMs: number;
  /** Per-direction unsent-bytes limit before reading pauses. Default 1 MiB. */
  readonly bufferLimitBytes: number;
  /** The conntrack guard: keepalive on half-closed connections. Default auto. */
  readonly keepaliveHalfClosed: KeepaliveMode;
  /** Keepalive on established (not half-closed) connections. Default off. */
  readonly keepaliveEstablished: KeepaliveMode;
  /** TCP_USER_TIMEOUT on both sockets. Default 0 (kernel default). */
  readonly userTimeoutMs: number;
  /** Admin HTTP address, or null when off. Default 127.0.0.1:15000. */
  readonly admin: Endpoint | null;
  readonly adminAllowNonLoopback: boolean;
  /** `stdout`, `off`, or a file path. Default stdout. */
  readonly accessLog: string;
  /**
   * How bytes are moved: `splice` (default) kernel to kernel with splice(2) on a worker thread,
   * `copy` through the event loop's buffers. Same semantics; see docs/lifecycle.md.
   */
  readonly relay: 'splice' | 'copy';
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
}

export const DEFAULTS = {
  connect: '5s',
  idle: '1h',
  halfClose: '0',
  maxDuration: '0',
  drain: '30s',
  bufferLimit: 1 << 20,
  keepaliveHalfClosed: 'auto',
  keepaliveEstablished: 'off',
  userTimeout: '0',
  admin: '127.0.0.1:15000',
  accessLog: 'stdout',
  relay: 'splice',
  logLevel: 'info',
} as const;

/** `auto`, `off`, or `IDLE:INTERVAL:COUNT` with durations (`20s:20s:3`) or plain seconds (`20:20:3`). */
export function parseKeepalive(text: string, what: string, allowAuto = true): KeepaliveMode {
  const s = text.trim();
  if (s === 'off' || s === '0') return { mode: 'off' };
  if (s === 'auto' && allowAuto) return { mode: 'auto' };
  const parts = s.split(':');
  const expected = `${allowAuto ? 'auto, ' : ''}off, or IDLE:INTERVAL:COUNT (e.g. 20s:20s:3)`;
  if (parts.length !== 3) throw new ConfigError(`${what}: expected ${expected}, got "${text}"`);
  const seconds = (p: string, part: string): number => {
    const ms = /^\d+$/.test(p) ? Number(p) * 1000 : parseDuration(p, `${what} ${part}`);
    if (ms < 1000 || ms % 1000 !== 0) throw new ConfigError(`${what}: ${part} must be whole seconds, at least 1s, got "${p}"`);
    return ms / 1000;
  };
  const count = Number(parts[2]);
  if (!/^\d+$/.test(parts[2]!) || count < 1 || count > 127) throw new ConfigError(`${what}: COUNT must be 1-127, got "${parts[2]}"`);
  return { mode: 'fixed', idleSec: seconds(parts[0]!, 'IDLE'), intervalSec: seconds(parts[1]!, 'INTERVAL'), count };
}

export function formatKeepalive(k: KeepaliveMode): string {
  return k.mode === 'fixed' ? `${k.idleSec}s:${k.intervalSec}s:${k.count}` : k.mode;
}

/** `1048576`, `64KiB`, `1MiB`, `512k`. */
export function parseBytes(v: number | string, what: string): number {
  let n: number;
  if (typeof v === 'number') {
    n = v; // a YAML number: the schema checked it is a positive integer; the minimum applies too
  } else {
    const m = /^(\d+)\s*(|b|k|kb|kib|m|mb|mib)$/i.exec(v.trim());
    if (!m) throw new ConfigError(`${what}: expected a size such as 65536, 64KiB or 1MiB, got "${v}"`);
    const unit = m[2]!.toLowerCase();
    const mul = unit.startsWith('k') ? 1024 : unit.startsWith('m') ? 1 << 20 : 1;
    n = Number(m[1]) * mul;
  }
  if (n < 16384) throw new ConfigError(`${what}: must be at least 16KiB (the socket stream's own buffer), got "${v}"`);
  return n;
}

function describePath(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('') || '(top level)';
}

/** Validates raw YAML data; throws a ConfigError naming the first bad key. */
export function validateFile(data: unknown, source: string): FileConfig {
  if (data === null || data === undefined) return {};
  const r = fileSchema.safeParse(data);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const where = describePath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0]!;
    const full = issue.path.length ? `${where}.${key}` : key;
    const hint = RENAMED[key] ? `; use ${RENAMED[key]} instead` : '';
    throw new ConfigError(`${source}: unknown key "${full}"${hint}`);
  }
  throw new ConfigError(`${source}: ${where}: ${issue.message}`);
}

/** Inbound upstream connections come from these, so the interception rules do not capture them again. */
export const DEFAULT_INBOUND_SOURCE = '127.0.0.6,::6';

/** `ADDR[,ADDR]`: IP addresses, at most one IPv4 and one IPv6. */
export function checkUpstreamSource(value: string, where: string): void {
  const seen = new Set<number>();
  for (const part of value.split(',')) {
    const family = net.isIP(part.trim());
    if (family === 0) throw new ConfigError(`${where}: expected an IP address or IPv4,IPv6 pair (e.g. 127.0.0.6,::6), got "${value}"`);
    if (seen.has(family)) throw new ConfigError(`${where}: at most one IPv${family} address, got "${value}"`);
    seen.add(family);
  }
}

/** The source of `sources` (comma-separated) that has the family of `host`; null: let the kernel choose. */
export function upstreamSourceFor(sources: string | null, host: string): string | null {
  if (sources === null) return null;
  const family = net.isIP(host);
  return sources.split(',').map((s) => s.trim()).find((s) => net.isIP(s) === family) ?? null;
}

export function resolveListener(raw: z.infer<typeof listenerSchema>, where: string, index: number): ListenerConfig {
  const listen = parseEndpoint(raw.listen, `${where}.listen`, { allowPortZero: true });
  let upstream: Endpoint | null = null;
  if (raw.kind === 'route') {
    if (!raw.upstream) throw new ConfigError(`${where}.upstream: a route listener needs a fixed upstream HOST:PORT`);
    upstream = parseEndpoint(raw.upstream, `${where}.upstream`);
  } else if (raw.upstream) {
    throw new ConfigError(`${where}.upstream: only route listeners have a fixed upstream; ${raw.kind} uses the original destination`);
  }
  const upstreamSource = raw.upstreamSource ?? (raw.kind === 'inbound' ? DEFAULT_INBOUND_SOURCE : null);
  if (upstreamSource !== null) checkUpstreamSource(upstreamSource, `${where}.upstreamSource`);
  const name = raw.name ?? (raw.kind === 'route' ? `route-${listen.port || index}` : raw.kind);
  return { name, kind: raw.kind, listen, upstream, upstreamSource };
}

/** Turns validated file data into the frozen config the proxy runs with. */
export function resolveConfig(file: FileConfig, source: string): ProxyConfig {
  const t = file.timeouts ?? {};
  const k = file.keepalive ?? {};
  const listeners = (file.listeners ?? []).map((l, i) => resolveListener(l, `${source}: listeners[${i}]`, i));
  const names = new Set<string>();
  for (const l of listeners) {
    if (names.has(l.name)) throw new ConfigError(`${source}: two listeners are named "${l.name}"; give each a unique name`);
    names.add(l.name);
  }
  const adminText = file.admin?.address ?? DEFAULTS.admin;
  const admin = adminText === 'off' ? null : parseEndpoint(adminText, `${source}: admin.address`, { allowPortZero: true });
  const cfg: ProxyConfig = {
    listeners,
    connectTimeoutMs: parseDuration(t.connect ?? DEFAULTS.connect, `${source}: timeouts.connect`),
    idleTimeoutMs: parseDuration(t.idle ?? DEFAULTS.idle, `${source}: timeouts.idle`),
    halfCloseTimeoutMs: parseDuration(t.halfClose ?? DEFAULTS.halfClose, `${source}: timeouts.halfClose`),
    maxDurationMs: parseDuration(t.maxDuration ?? DEFAULTS.maxDuration, `${source}: timeouts.maxDuration`),
    drainTimeoutMs: parseDuration(t.drain ?? DEFAULTS.drain, `${source}: timeouts.drain`),
    bufferLimitBytes: parseBytes(file.bufferLimit ?? DEFAULTS.bufferLimit, `${source}: bufferLimit`),
    keepaliveHalfClosed: parseKeepalive(k.halfClosed ?? DEFAULTS.keepaliveHalfClosed, `${source}: keepalive.halfClosed`),
    keepaliveEstablished: parseKeepalive(k.established ?? DEFAULTS.keepaliveEstablished, `${source}: keepalive.established`, false),
    userTimeoutMs: parseDuration(k.userTimeout ?? DEFAULTS.userTimeout, `${source}: keepalive.userTimeout`),
    admin,
    adminAllowNonLoopback: file.admin?.allowNonLoopback ?? false,
    accessLog: file.accessLog ?? DEFAULTS.accessLog,
    relay: file.relay ?? DEFAULTS.relay,
    logLevel: file.logLevel ?? DEFAULTS.logLevel,
  };
  if (cfg.admin && !cfg.adminAllowNonLoopback && !isLoopback(cfg.admin.host)) {
    throw new ConfigError(
      `${source}: admin.address ${cfg.admin.host} is not a loopback address; the admin API can drain the proxy, so binding it elsewhere needs admin.allowNonLoopback: true (--admin-allow-non-loopback)`,
    );
  }
  return Object.freeze(cfg);
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** The config as YAML-shaped data, for --print-config and GET /config. */
export function describeConfig(cfg: ProxyConfig): Record<string, unknown> {
  const fmt = (e: Endpoint | null): string | null => (e ? (e.family === 6 ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`) : null);
  const dur = formatDuration;
  return {
    listeners: cfg.listeners.map((l) => ({
      name: l.name,
      kind: l.kind,
      listen: fmt(l.listen),
      ...(l.upstream ? { upstream: fmt(l.upstream) } : {}),
      ...(l.upstreamSource ? { upstreamSource: l.upstreamSource } : {}),
    })),
    timeouts: {
      connect: dur(cfg.connectTimeoutMs),
      idle: dur(cfg.idleTimeoutMs),
      halfClose: dur(cfg.halfCloseTimeoutMs),
      maxDuration: dur(cfg.maxDurationMs),
      drain: dur(cfg.drainTimeoutMs),
    },
    bufferLimit: cfg.bufferLimitBytes,
    keepalive: {
      halfClosed: formatKeepalive(cfg.keepaliveHalfClosed),
      established: formatKeepalive(cfg.keepaliveEstablished),
      userTimeout: dur(cfg.userTimeoutMs),
    },
    admin: { address: cfg.admin ? fmt(cfg.admin) : 'off', allowNonLoopback: cfg.adminAllowNonLoopback },
    accessLog: cfg.accessLog,
    relay: cfg.relay,
    logLevel: cfg.logLevel,
  };
}
