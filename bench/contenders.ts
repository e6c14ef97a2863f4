// The contenders: how each proxy is configured and started for the benchmark. Every proxy gets one
// core's worth of workers (HAProxy nbthread 1, nginx worker_processes 1, halfclose's one event
// loop; socat forks a process per connection, which is its only mode of serving many clients),
// and every proxy process (threads and forks included) is pinned to one CPU with taskset.

import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasCommand } from '../src/kernel/run.js';
import { childPids, pinned, rssBytes, treePssBytes, waitListening, type Child, type Procs } from './procs.js';

export interface Route {
  listen: number;
  upstream: number;
}

export interface RunningContender {
  /** Memory of the proxy, in bytes: RSS of its one process, or PSS of its process tree (socat). */
  memoryBytes(): number;
  readonly memoryKind: 'rss' | 'pss-tree';
  stop(): Promise<void>;
}

export interface Contender {
  readonly name: string;
  /** One line: what runs and with how many workers. */
  readonly describe: string;
  /** null when it can run here, else why not (a missing program). */
  unavailable(): string | null;
  /** Starts it with these routes (127.0.0.1:listen -> 127.0.0.1:upstream); `dir` is a private temp dir. */
  start(procs: Procs, routes: Route[], dir: string, tag: string): Promise<RunningContender>;
}

const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** The repository root (holds package.json), from bench/ or dist/bench/. */
export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(d, 'package.json'))) return d;
    d = resolve(d, '..');
  }
  throw new Error('bench: cannot find the repository root (package.json)');
}

function missing(cmd: string): string | null {
  return hasCommand(cmd) ? null : `\`${cmd}\` is not installed (make setup installs it)`;
}

function single(child: Child): RunningContender {
  return { memoryBytes: () => rssBytes(child.pid), memoryKind: 'rss', stop: () => child.stop() };
}

export const direct: Contender = {
  name: 'direct',
  describe: 'no proxy: the client connects straight to the upstream (the ceiling)',
  unavailable: () => null,
  async start() {
    throw new Error('direct has no process');
  },
};

export const halfclose: Contender = {
  name: 'halfclose',
  describe:
    '`halfclose proxy --route` as shipped (built bin: its event loop and the splice worker thread; guard, registry and admin server on; access log on, to its default target stdout, which is a file)',
  unavailable() {
    if (!existsSync(join(repoRoot(), 'dist/src/cli/main.js'))) return 'not built (run make build)';
    return null;
  },
  async start(procs, routes, dir, tag) {
    const args = [join(repoRoot(), 'bin/halfclose'), 'proxy'];
    for (const r of routes) args.push('--route', `127.0.0.1:${r.listen}=127.0.0.1:${r.upstream}`);
    // As shipped, except the admin port (0: any free one, so parallel runs do not collide). The
    // access log keeps its default target, stdout (one synchronous write per closed connection,
    // what a sidecar does under a container runtime); stdout is a file, so every line is really
    // written, and the harness never spends its own CPU reading it.
    args.push('--admin', '127.0.0.1:0');
    const [cmd, argv] = pinned(process.execPath, args);
    const child = procs.spawn(`halfclose-${tag}`, cmd, argv, {
      logFile: join(dir, `halfclose-${tag}.log`),
      stdoutFile: join(dir, `halfclose-${tag}-access.log`),
    });
    await waitListening(routes.map((r) => r.listen), child, 10_000, 'halfclose');
    return single(child);
  },
};

/**
 * HAProxy as the target is set against it: no logging. `logging`: the same proxy writing one
 * tcplog line per connection to stdout, a file, as halfclose writes its access log (a sidecar's
 * proxy logs its connections; a column for reference, not a target).
 */
function haproxyContender(name: string, logging: boolean): Contender {
  return {
    name,
    describe: logging
      ? 'HAProxy as above, with one log line per connection (option tcplog, to stdout, which is a file): for reference'
      : 'HAProxy, mode tcp, nbthread 1, no logging',
    unavailable: () => missing('haproxy'),
    async start(procs, routes, dir, tag) {
      const cfg = join(dir, `${name}-${tag}.cfg`);
      const lines = [
        'global',
        '  nbthread 1',
        // 5,000 proxied connections need 10,000 fds; the machine allows 20,000 per process.
        '  maxconn 9000',
        'defaults',
        '  mode tcp',
        '  maxconn 9000',
        '  timeout connect 5s',
        '  timeout client 1h',
        '  timeout server 1h',
        ...(logging ? ['  log stdout format raw local0', '  log global', '  option tcplog'] : []),
      ];
      routes.forEach((r, i) => lines.push(`listen r${i}`, `  bind 127.0.0.1:${r.listen}`, `  server up 127.0.0.1:${r.upstream}`));
      writeFileSync(cfg, lines.join('\n') + '\n');
      const [cmd, argv] = pinned('haproxy', ['-db', '-f', cfg]);
      const child = procs.spawn(`${name}-${tag}`, cmd, argv, {
        logFile: join(dir, `${name}-${tag}.log`),
        ...(logging ? { stdoutFile: join(dir, `${name}-${tag}-access.log`) } : {}),
      });
      await waitListening(routes.map((r) => r.listen), child, 10_000, name);
      return single(child);
    },
  };
}

export const haproxy = haproxyContender('haproxy', false);
export const haproxyLog = haproxyContender('haproxy-log', true);

export const nginx: Contender = {
  name: 'nginx',
  describe: 'nginx stream, worker_processes 1 (master_process off: the one process is the worker)',
  unavailable() {
    const m = missing('nginx');
    if (m) return m;
    if (!existsSync(NGINX_STREAM_MODULE)) return `the nginx stream module is missing (${NGINX_STREAM_MODULE}; make setup installs libnginx-mod-stream)`;
    return null;
  },
  async start(procs, routes, dir, tag) {
    const cfg = join(dir, `nginx-${tag}.conf`);
    const lines = [
      `load_module ${NGINX_STREAM_MODULE};`,
      'daemon off;',
      'master_process off;',
      'worker_processes 1;',
      'worker_rlimit_nofile 19000;',
      `pid ${join(dir, `nginx-${tag}.pid`)};`,
      `error_log ${join(dir, `nginx-${tag}-error.log`)} warn;`,
      'events { worker_connections 12000; }',
      'stream {',
      ...routes.map((r) => `  server { listen 127.0.0.1:${r.listen}; proxy_pass 127.0.0.1:${r.upstream}; }`),
      '}',
    ];
    writeFileSync(cfg, lines.join('\n') + '\n');
    const [cmd, argv] = pinned('nginx', ['-p', dir, '-e', join(dir, `nginx-${tag}-error.log`), '-c', cfg]);
    const child = procs.spawn(`nginx-${tag}`, cmd, argv, { logFile: join(dir, `nginx-${tag}.log`) });
    await waitListening(routes.map((r) => r.listen), child, 10_000, 'nginx');
    return single(child);
  },
};

export const socat: Contender = {
  name: 'socat',
  describe: 'socat TCP-LISTEN fork (one process per connection; memory is the PSS of the process tree)',
  unavailable: () => missing('socat'),
  async start(procs, routes, dir, tag) {
    const children = routes.map((r, i) => {
      const [cmd, argv] = pinned('socat', [`TCP-LISTEN:${r.listen},bind=127.0.0.1,reuseaddr,fork,backlog=1024`, `TCP:127.0.0.1:${r.upstream}`]);
      return procs.spawn(`socat-${tag}-${i}`, cmd, argv, { logFile: join(dir, `socat-${tag}-${i}.log`) });
    });
    await waitListening(routes.map((r) => r.listen), null, 10_000, 'socat');
    return {
      // The first route's listener is the one the memory run uses.
      memoryBytes: () => treePssBytes(children[0]!.pid),
      memoryKind: 'pss-tree',
      stop: async () => {
        // Forked children serve their connection on their own; they go with the listener.
        const forks = children.flatMap((c) => (c.exited ? [] : safeChildPids(c.pid)));
        await Promise.all(children.map((c) => c.stop()));
        for (const pid of forks) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      },
    };
  },
};

function safeChildPids(pid: number): number[] {
  try {
    return childPids(pid);
  } catch {
    return [];
  }
}

export const CONTENDERS: readonly Contender[] = [direct, halfclose, haproxy, haproxyLog, nginx, socat];
