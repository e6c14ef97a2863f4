// The sidecars the lab compares: halfclose itself, an Envoy-like halfclose, and real peers from
// Debian packages (HAProxy, nginx stream, socat) with generated configs. Each runs in the pod
// namespace under the sidecar uid and listens where the interception rule sends the app's traffic.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PodTopology } from '../kernel/topology.js';
import { commandLine, hasCommand, run } from '../kernel/run.js';
import { HalfcloseError } from '../errors.js';

export const SIDECAR_NAMES = ['halfclose', 'envoy-like', 'haproxy', 'haproxy-fin', 'nginx', 'socat'] as const;
export type SidecarName = (typeof SIDECAR_NAMES)[number];

/** Where the sidecar listens: the interception rule redirects the app's outbound TCP here. */
export const SIDECAR_PORT = 15001;
/** The uid the sidecar runs as; the interception rule lets this uid's own connections through. */
export const SIDECAR_UID = 1337;
/** The service's port in the service namespace. */
export const SERVICE_PORT = 7777;

/** nginx's stream module as Debian's libnginx-mod-stream installs it. */
export const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** HAProxy's `timeout client-fin`/`server-fin` in the haproxy-fin sidecar. */
const HAPROXY_FIN_TIMEOUT = '1s';

export interface SidecarSpec {
  name: SidecarName;
  /** One line on what it is and how it is configured. */
  summary: string;
  /** What eventually frees a connection it holds half-closed, from its configuration. */
  release: string;
  /** Why it cannot run here (missing binary or module), or null. */
  missing(): string | null;
  /** The command line, run inside the pod namespace as SIDECAR_UID. `dir` is a private work directory. */
  command(dir: string, service: { host: string; port: number }): { cmd: string; args: string[] };
}

/** bin/halfclose of this checkout, found from this module (src/lab or dist/src/lab). */
export function halfcloseBin(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && /"name":\s*"halfclose"/.test(readFileSync(pkg, 'utf8'))) {
      const main = path.join(dir, 'dist/src/cli/main.js');
      if (!existsSync(main)) throw new HalfcloseError('HC_ERR_LAB', `${main} is missing: run \`make build\` first`);
      return main;
    }
    dir = path.dirname(dir);
  }
  throw new HalfcloseError('HC_ERR_LAB', 'cannot find the halfclose checkout (package.json) above the lab module');
}

/** True when SIDECAR_UID can read `file` (every directory above it searchable): a checkout under /root is not. */
export function readableBySidecar(file: string): boolean {
  const r = spawnSync('setpriv', [`--reuid=${SIDECAR_UID}`, `--regid=${SIDECAR_UID}`, '--clear-groups', '--', 'test', '-r', file]);
  return r.status === 0;
}

/** Why halfclose itself cannot run as the sidecar here, or null. */
function halfcloseMissing(): string | null {
  let main: string;
  try {
    main = halfcloseBin();
  } catch (err) {
    return (err as Error).message;
  }
  return readableBySidecar(main) ? null : `uid ${SIDECAR_UID} cannot read ${main}: the checkout must be readable by the sidecar uid (chmod o+rX on it and the directories above it)`;
}

function halfclose(name: SidecarName, summary: string, release: string, extra: string[]): SidecarSpec {
  return {
    name,
    summary,
    release,
    missing: halfcloseMissing,
    command: () => ({
      cmd: process.execPath,
      args: [halfcloseBin(), 'proxy', '--outbound', `127.0.0.1:${SIDECAR_PORT}`, '--admin', 'off', '--log-level', 'warn', ...extra],
    }),
  };
}

function haproxyConfig(finTimeouts: boolean): string {
  // No `timeout client`/`server`: HAProxy then never times a connection out (it warns about it at
  // start-up). `server s 0.0.0.0:0` connects to the address the client aimed at, which HAProxy
  // reads with SO_ORIGINAL_DST on a redirected connection.
  return [
    'global',
    '  nbthread 1',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    ...(finTimeouts ? [`  timeout client-fin ${HAPROXY_FIN_TIMEOUT}`, `  timeout server-fin ${HAPROXY_FIN_TIMEOUT}`] : []),
    'frontend sidecar',
    `  bind 127.0.0.1:${SIDECAR_PORT}`,
    '  default_backend original_dst',
    'backend original_dst',
    '  server s 0.0.0.0:0',
    '',
  ].join('\n');
}

function haproxy(name: SidecarName, finTimeouts: boolean): SidecarSpec {
  return {
    name,
    summary: finTimeouts
      ? `HAProxy tcp mode, original destination, timeout client-fin/server-fin ${HAPROXY_FIN_TIMEOUT}`
      : 'HAProxy tcp mode, original destination (server 0.0.0.0:0), default timeouts',
    release: finTimeouts ? `timeout client-fin ${HAPROXY_FIN_TIMEOUT}` : 'nothing (no timeout client/server by default)',
    missing: () => (hasCommand('haproxy') ? null : 'haproxy is not installed (apt-get install haproxy)'),
    command(dir) {
      const cfg = path.join(dir, `${name}.cfg`);
      writeFileSync(cfg, haproxyConfig(finTimeouts));
      return { cmd: 'haproxy', args: ['-db', '-f', cfg] };
    },
  };
}

export const SIDECARS: Record<SidecarName, SidecarSpec> = {
  halfclose: halfclose('halfclose', 'halfclose proxy, defaults (conntrack guard on)', 'the app\'s FIN (the guard keeps it deliverable)', []),
  'envoy-like': halfclose(
    'envoy-like',
    'halfclose proxy --keepalive off --idle-timeout 1h (Envoy tcp_proxy behaviour)',
    'idle timeout 1h',
    ['--keepalive', 'off', '--idle-timeout', '1h'],
  ),
  haproxy: haproxy('haproxy', false),
  'haproxy-fin': haproxy('haproxy-fin', true),
  nginx: {
    name: 'nginx',
    summary: 'nginx stream, proxy_half_close on, fixed upstream (nginx has no SO_ORIGINAL_DST)',
    release: 'proxy_timeout 10m',
    missing: () =>
      !hasCommand('nginx')
        ? 'nginx is not installed (apt-get install nginx-light libnginx-mod-stream)'
        : !existsSync(NGINX_STREAM_MODULE)
          ? `${NGINX_STREAM_MODULE} is missing (apt-get install libnginx-mod-stream)`
          : null,
    command(dir, service) {
      const cfg = path.join(dir, 'nginx.conf');
      // One process (no master): stopping it leaves no worker behind. Not root, so no `user`.
      writeFileSync(
        cfg,
        [
          `load_module ${NGINX_STREAM_MODULE};`,
          'daemon off;',
          'master_process off;',
          'worker_processes 1;',
          `pid ${path.join(dir, 'nginx.pid')};`,
          'error_log stderr warn;',
          'events { worker_connections 64; }',
          'stream {',
          '  server {',
          `    listen 127.0.0.1:${SIDECAR_PORT};`,
          `    proxy_pass ${service.host}:${service.port};`,
          '    proxy_half_close on;',
          '  }',
          '}',
          '',
        ].join('\n'),
      );
      return { cmd: 'nginx', args: ['-e', 'stderr', '-p', dir, '-c', cfg] };
    },
  },
  socat: {
    name: 'socat',
    summary: 'socat TCP-LISTEN,fork to a fixed upstream, default -t 0.5s',
    release: 'socat -t 0.5s after the first EOF',
    missing: () => (hasCommand('socat') ? null : 'socat is not installed (apt-get install socat)'),
    command: (_dir, service) => ({
      cmd: 'socat',
      args: [`TCP4-LISTEN:${SIDECAR_PORT},bind=127.0.0.1,reuseaddr,fork`, `TCP4:${service.host}:${service.port}`],
    }),
  },
};

export interface RunningSidecar {
  spec: SidecarSpec;
  /** The command line as run (its work directory shown as `<workdir>`), and its generated config file. */
  commandLine: string;
  config: string | null;
  /** What it printed (stdout and stderr), for the report and error messages. */
  output(): string;
  /** Kills every process of the sidecar uid in the pod namespace (socat forks one per connection). */
  stop(): Promise<void>;
}

/** Pids of processes inside `netns` that run as `uid`. */
export async function pidsOfUid(netns: string, uid: number): Promise<number[]> {
  const r = await run('ip', ['netns', 'pids', netns], { reject: false });
  const pids: number[] = [];
  for (const p of r.stdout.split(/\s+/).filter(Boolean)) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      const m = /^Uid:\s+(\d+)/m.exec(status);
      if (m && Number(m[1]) === uid) pids.push(Number(p));
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

async function listening(topo: PodTopology): Promise<boolean> {
  const r = await run('ss', ['-Htln', `sport = :${SIDECAR_PORT}`], { netns: topo.pod, reject: false });
  return r.stdout.trim().length > 0;
}

/** Starts the sidecar and waits until it listens on SIDECAR_PORT. */
export async function startSidecar(topo: PodTopology, spec: SidecarSpec, dir: string, service: { host: string; port: number }): Promise<RunningSidecar> {
  const { cmd, args } = spec.command(dir, service);
  const cfgFlag = args.findIndex((a) => a === '-f' || a === '-c');
  const config = cfgFlag >= 0 ? readFileSync(args[cfgFlag + 1]!, 'utf8').split(dir).join('<workdir>') : null;
  const shown = commandLine(cmd, args).split(dir).join('<workdir>');
  const child = topo.spawn(topo.pod, cmd, args, { uid: SIDECAR_UID, cwd: dir });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const stop = async (): Promise<void> => {
    for (let i = 0; i < 50; i++) {
      const pids = await pidsOfUid(topo.pod, SIDECAR_UID);
      if (pids.length === 0 && !(await listening(topo))) return;
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new HalfcloseError('HC_ERR_LAB', `${spec.name}: the sidecar does not stop`);
  };
  const deadline = Date.now() + 15_000;
  while (!(await listening(topo))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new HalfcloseError('HC_ERR_LAB', `${spec.name} did not start listening on 127.0.0.1:${SIDECAR_PORT}: ${out.trim().split('\n').slice(-3).join(' | ') || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { spec, commandLine: shown, config, output: () => out, stop };
}
