// `halfclose proxy`: flags and config file -> a running proxy; SIGTERM/SIGINT drain it.

import v8 from 'node:v8';
import YAML from 'yaml';
import { ProxyMetrics } from '../admin/metrics.js';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import { loadConfig } from '../config/load.js';
import { checkUpstreamSource, DEFAULT_INBOUND_SOURCE, describeConfig, isLoopback, parseBytes, parseKeepalive, type FileConfig } from '../config/schema.js';
import { UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { Proxy } from '../proxy/proxy.js';
import { formatEndpoint, parseEndpoint } from '../util/address.js';
import { parseDuration } from '../util/duration.js';
import { list, parseFlags, str, type FlagSpec } from './flags.js';

export const summary = 'relay TCP with exact half-close semantics (the sidecar data plane)';

const HELP = `Usage: halfclose proxy [--config FILE] [flags]

Relays TCP with exact half-close semantics: a FIN is forwarded as a write-side shutdown, an RST as
an RST. While a connection is half-closed, the conntrack guard keeps keepalive running below the
kernel's conntrack CLOSE_WAIT timeout, so the application's late FIN still reaches the proxy.

Listeners (any number; when given, they replace the config file's listeners):
  --outbound HOST:PORT      original-destination listener for redirected outbound traffic
                            (SO_ORIGINAL_DST, IPv4 and IPv6), e.g. 127.0.0.1:15001
  --inbound HOST:PORT       original-destination listener for redirected inbound traffic; its
                            upstream connections come from --upstream-source, e.g. 0.0.0.0:15006
  --route LISTEN=UPSTREAM   fixed upstream, like HAProxy tcp mode or nginx stream, repeatable,
                            e.g. 127.0.0.1:9000=127.0.0.1:6379
  --upstream-source ADDR[,ADDR]  source of inbound upstream connections, one per family; the one of
                            the destination's family is bound. Default 127.0.0.6,::6.

Timers (durations like 250ms, 30s, 5m, 1h; 0 disables):
  --connect-timeout DUR     upstream connect timeout; the client is reset on failure. Default 5s.
  --idle-timeout DUR        no bytes either way for this long ends the connection. Default 1h
                            (as Envoy's tcp_proxy). 0 disables it: a dead peer may then hold its
                            sockets forever.
  --half-close-timeout DUR  half-closed and idle for this long ends the connection. Default 0 (off):
                            the guard keeps legitimate half-closed connections and reclaims dead ones.
  --max-duration DUR        any connection older than this ends. Default 0 (off).
  --drain-timeout DUR       on SIGTERM, time for connections to finish before they are reset.
                            Default 30s.

Conntrack guard and socket options:
  --keepalive MODE          keepalive on half-closed connections: auto (default: idle and interval
                            a third of the namespace's conntrack CLOSE_WAIT timeout), off (behave
                            like Envoy's tcp_proxy, which can leak), or IDLE:INTERVAL:COUNT (20s:20s:3)
  --keepalive-established MODE   keepalive on established connections too: off (default) or
                            IDLE:INTERVAL:COUNT
  --user-timeout DUR        TCP_USER_TIMEOUT on both sockets. Default 0 (kernel default).
  --buffer-limit SIZE       unsent bytes per direction before reading pauses. Default 1MiB, at
                            least 16KiB.
  --relay splice|copy       who carries connections: splice (default) a worker thread that
                            accepts, connects and moves the bytes kernel to kernel with splice(2),
                            or copy: Node accepts, connects and copies through its buffers. Same
                            semantics. A host-name listen address or route upstream copies.

Operations:
  --admin HOST:PORT|off     admin HTTP server (metrics, connections, drain). Default 127.0.0.1:15000.
  --admin-allow-non-loopback  allow --admin on a non-loopback address.
  --access-log TARGET       off, stdout (default) or a file path: one JSON line per closed connection.
  --log-level LEVEL         debug, info (default), warn, error, silent. Operational log on stderr.
  --config FILE             YAML config file (see docs/config.md); flags override it.
  --print-config            print the resulting configuration as YAML and exit.
  -h, --help                this help.

Exit status: 0 after a clean drain, 2 on bad input (one line naming the flag or key).
`;

const FLAGS: FlagSpec = {
  config: { type: 'string' },
  outbound: { type: 'string', multiple: true },
  inbound: { type: 'string', multiple: true },
  route: { type: 'string', multiple: true },
  'upstream-source': { type: 'string' },
  'connect-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'half-close-timeout': { type: 'string' },
  'max-duration': { type: 'string' },
  'drain-timeout': { type: 'string' },
  keepalive: { type: 'string' },
  'keepalive-established': { type: 'string' },
  'user-timeout': { type: 'string' },
  'buffer-limit': { type: 'string' },
  relay: { type: 'string' },
  admin: { type: 'string' },
  'admin-allow-non-loopback': { type: 'boolean' },
  'access-log': { type: 'string' },
  'log-level': { type: 'string' },
  'print-config': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

/** Flags -> the same shape as the config file, each value checked here so errors name the flag. */
export function flagsToFileConfig(values: ReturnType<typeof parseFlags>['values']): FileConfig {
  const out: FileConfig = {};
  const listeners: NonNullable<FileConfig['listeners']> = [];
  const source = str(values['upstream-source']);
  if (source !== undefined) checkUpstreamSource(source, '--upstream-source');
  for (const v of list(values.outbound)) {
    parseEndpoint(v, '--outbound', { allowPortZero: true });
    listeners.push({ kind: 'outbound', listen: v, ...(listeners.some((l) => l.kind === 'outbound') ? { name: `outbound-${listeners.length}` } : {}) });
  }
  for (const v of list(values.inbound)) {
    parseEndpoint(v, '--inbound', { allowPortZero: true });
    listeners.push({ kind: 'inbound', listen: v, upstreamSource: source ?? DEFAULT_INBOUND_SOURCE, ...(listeners.some((l) => l.kind === 'inbound') ? { name: `inbound-${listeners.length}` } : {}) });
  }
  for (const [i, v] of list(values.route).entries()) {
    const eq = v.indexOf('=');
    if (eq < 0) throw new UsageError(`--route: expected LISTEN=UPSTREAM (e.g. 127.0.0.1:9000=127.0.0.1:6379), got "${v}"`);
    const listen = v.slice(0, eq);
    const upstream = v.slice(eq + 1);
    parseEndpoint(listen, '--route LISTEN', { allowPortZero: true });
    parseEndpoint(upstream, '--route UPSTREAM');
    listeners.push({ kind: 'route', name: `route-${i}`, listen, upstream });
  }
  if (listeners.length > 0) out.listeners = listeners;
  const timeouts: NonNullable<FileConfig['timeouts']> = {};
  const dur = (flag: string, key: keyof typeof timeouts): void => {
    const v = str(values[flag]);
    if (v !== undefined) {
      parseDuration(v, `--${flag}`);
      timeouts[key] = v;
    }
  };
  dur('connect-timeout', 'connect');
  dur('idle-timeout', 'idle');
  dur('half-close-timeout', 'halfClose');
  dur('max-duration', 'maxDuration');
  dur('drain-timeout', 'drain');
  out.timeouts = timeouts;
  const keepalive: NonNullable<FileConfig['keepalive']> = {};
  const ka = str(values.keepalive);
  if (ka !== undefined) keepalive.halfClosed = (parseKeepalive(ka, '--keepalive'), ka);
  const kae = str(values['keepalive-established']);
  if (kae !== undefined) keepalive.established = (parseKeepalive(kae, '--keepalive-established', false), kae);
  const ut = str(values['user-timeout']);
  if (ut !== undefined) keepalive.userTimeout = (parseDuration(ut, '--user-timeout'), ut);
  out.keepalive = keepalive;
  const bl = str(values['buffer-limit']);
  if (bl !== undefined) out.bufferLimit = (parseBytes(bl, '--buffer-limit'), bl);
  const admin = str(values.admin);
  if (admin !== undefined) {
    if (admin !== 'off') parseEndpoint(admin, '--admin', { allowPortZero: true });
    out.admin = { address: admin };
  }
  if (values['admin-allow-non-loopback'] === true) out.admin = { ...out.admin, allowNonLoopback: true };
  const al = str(values['access-log']);
  if (al !== undefined) out.accessLog = al;
  const relay = str(values.relay);
  if (relay !== undefined) {
    if (relay !== 'splice' && relay !== 'copy') throw new UsageError(`--relay: expected splice or copy, got "${relay}"`);
    out.relay = relay;
  }
  const level = str(values['log-level']);
  if (level !== undefined) {
    if (!['debug', 'info', 'warn', 'error', 'silent'].includes(level)) throw new UsageError(`--log-level: expected debug, info, warn, error or silent, got "${level}"`);
    out.logLevel = level as NonNullable<FileConfig['logLevel']>;
  }
  return out;
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseFlags('proxy', argv, FLAGS);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const config = loadConfig(str(values.config), flagsToFileConfig(values));
  if (values['print-config']) {
    process.stdout.write(YAML.stringify(describeConfig(config)));
    return 0;
  }
  if (config.listeners.length === 0) {
    throw new UsageError('proxy: no listeners; give --outbound, --inbound or --route, or listeners in --config');
  }
  const logger = createLogger(config.logLevel);
  // A proxy holds many long-lived connections: each burst of accepts has a high survival rate,
  // and V8 then doubles its young generation (16 -> 32 MiB of semi-spaces, resident for good:
  // about 3 KiB per idle connection with 5,000 held, docs/bench.md). Growth factor 1 keeps it at
  // its size. A process-wide GC setting, so it is made here, where the process is ours, and not
  // in the Proxy class that embedders (and the tests) run inside their own processes.
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  const proxy = new Proxy(config, { logger });
  // The admin server binds first, so a busy admin port fails with one line before any listener
  // is up (/ready says false until the listeners are bound); metrics then see the first accept.
  let requestStop = (_why: string): void => {};
  const admin: AdminServer | null = config.admin
    ? await startAdminServer(proxy, { address: config.admin, logger, metrics: new ProxyMetrics(proxy), onDrain: () => requestStop('POST /drain') })
    : null;
  if (admin && !isLoopback(admin.address.host)) {
    logger.warn({ admin: admin.url }, `admin API listens on NON-LOOPBACK ${formatEndpoint(admin.address)}: anyone who can reach it can read every connection and the config (POST /drain still needs a loopback peer)`);
  }
  try {
    await proxy.start();
  } catch (err) {
    await admin?.close();
    throw err;
  }
  // Made again once the splice relay's worker thread is up: with only the first call, 5,000 idle
  // connections left the young generation at 32 MiB again (10.4 KiB per connection against 8.7
  // with this second call; bench/relay-cost.sh idle, docs/bench.md).
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  logger.info(
    { listeners: proxy.listeners().map((l) => ({ name: l.name, kind: l.kind, address: formatEndpoint(l.address) })), admin: admin ? admin.url : 'off' },
    'listening',
  );
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: resetting every connection now');
        void proxy.drain(0);
        return;
      }
      stopping = true;
      logger.info({ signal, drainTimeoutMs: config.drainTimeoutMs }, 'draining');
      void proxy.drain().then(resolve);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    requestStop = stop;
  });
  await admin?.close();
  logger.info('drained; exiting');
  return 0;
}
