// The two-namespace topology of the half-close problem: a "pod" namespace (application and
// sidecar) and a "service" namespace, joined by a veth pair, IPv4 and IPv6. Used by the lab and by
// the namespace tests. Everything it creates is removed by destroy(), also from an exit handler,
// so an interrupted run leaves no namespace or process behind.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createNetns, createVeth, deleteNetnsSync, uniqueName, writeSysctl } from './netns.js';
import { run } from './run.js';

export interface PodTopology {
  readonly id: string;
  /** Namespace names. */
  readonly pod: string;
  readonly svc: string;
  readonly podIp: string;
  readonly svcIp: string;
  readonly podIp6: string;
  readonly svcIp6: string;
  /** Interface name of the veth end inside the pod namespace. */
  readonly podIf: string;
  /** Starts a process inside a namespace (optionally as another uid), tracked for clean-up. */
  spawn(netns: string, cmd: string, args: string[], opts?: { uid?: number; gid?: number } & SpawnOptions): ChildProcess;
  /** Runs a command to completion inside a namespace. */
  exec(netns: string, cmd: string, args: string[]): Promise<string>;
  /** Kills every process, deletes both namespaces. Idempotent and synchronous. */
  destroy(): void;
}

export interface TopologyOptions {
  /** Prefix of the unique namespace names (at most 8 characters). Default `hc`. */
  prefix?: string;
  /** Lower the pod namespace's conntrack CLOSE_WAIT timeout to this many seconds. */
  closeWaitSec?: number;
}

const live = new Set<PodTopology>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const cleanAll = (): void => {
    for (const t of live) t.destroy();
  };
  process.on('exit', cleanAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanAll();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

export async function createPodTopology(opts: TopologyOptions = {}): Promise<PodTopology> {
  installExitHook();
  const id = uniqueName(opts.prefix ?? 'hc');
  const pod = `${id}-pod`;
  const svc = `${id}-svc`;
  const podIf = 'eth0';
  const children = new Set<ChildProcess>();
  let destroyed = false;
  const topo: PodTopology = {
    id,
    pod,
    svc,
    podIp: '10.77.0.1',
    svcIp: '10.77.0.2',
    podIp6: 'fd77::1',
    svcIp6: 'fd77::2',
    podIf,
    spawn(netns, cmd, args, o = {}) {
      const { uid, gid, ...spawnOpts } = o;
      const argv =
        uid === undefined
          ? ['netns', 'exec', netns, cmd, ...args]
          : ['netns', 'exec', netns, 'setpriv', `--reuid=${uid}`, `--regid=${gid ?? uid}`, '--clear-groups', '--', cmd, ...args];
      const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOpts });
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    async exec(netns, cmd, args) {
      return (await run(cmd, args, { netns })).stdout;
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      live.delete(topo);
      for (const c of children) c.kill('SIGKILL');
      deleteNetnsSync(pod);
      deleteNetnsSync(svc);
    },
  };
  live.add(topo);
  try {
    await createNetns(pod);
    await createNetns(svc);
    await createVeth({
      a: { netns: pod, ifname: podIf, addrs: [`${topo.podIp}/24`, `${topo.podIp6}/64`] },
      b: { netns: svc, ifname: podIf, addrs: [`${topo.svcIp}/24`, `${topo.svcIp6}/64`] },
    });
    if (opts.closeWaitSec !== undefined) await setCloseWait(pod, opts.closeWaitSec);
  } catch (err) {
    topo.destroy();
    throw err;
  }
  return topo;
}

/**
 * Loads conntrack in the namespace (a nat rule makes netfilter track connections there) and sets
 * its CLOSE_WAIT timeout. The sysctl only exists once conntrack is active in the namespace.
 */
export async function setCloseWait(netns: string, seconds: number): Promise<void> {
  await run('iptables', ['-t', 'nat', '-L', '-n'], { netns });
  await run('ip6tables', ['-t', 'nat', '-L', '-n'], { netns });
  await writeSysctl('net.netfilter.nf_conntrack_tcp_timeout_close_wait', seconds, netns);
}

/**
 * One REDIRECT rule per family, the minimal interception of DESIGN.md §1: TCP leaving through the
 * pod's veth, from any uid but the proxy's, goes to the proxy's port. (`halfclose iptables` installs
 * the full Istio-style layout; tests of the guard and the relay need only this.)
 */
export async function installRedirect(topo: PodTopology, port: number, proxyUid: number): Promise<void> {
  for (const cmd of ['iptables', 'ip6tables']) {
    await run(cmd, ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-o', topo.podIf, '-m', 'owner', '!', '--uid-owner', String(proxyUid), '-m', 'comment', '--comment', 'halfclose-test', '-j', 'REDIRECT', '--to-ports', String(port)], {
      netns: topo.pod,
    });
  }
}
