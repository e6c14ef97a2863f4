// Namespace test helpers: a pod/service topology torn down after each test, the built proxy run
// inside the pod under the sidecar uid, and tiny TCP peers (node scripts) run inside namespaces.

import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPodTopology, type PodTopology, type TopologyOptions } from '../../src/kernel/topology.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = path.join(ROOT, 'bin/halfclose');
export const PROXY_UID = 1337;

/** A topology removed when the test ends, pass or fail. */
export async function topology(t: TestContext, opts: TopologyOptions = {}): Promise<PodTopology> {
  const topo = await createPodTopology(opts);
  t.after(() => topo.destroy());
  return topo;
}

/** Collects a child's output; `waitLine(re)` resolves with the first stderr/stdout line matching. */
export function watch(child: ChildProcess): { out: () => string; waitLine(re: RegExp, timeoutMs?: number): Promise<string> } {
  let text = '';
  const listeners: (() => void)[] = [];
  const feed = (c: Buffer): void => {
    text += c.toString();
    for (const l of [...listeners]) l();
  };
  child.stdout?.on('data', feed);
  child.stderr?.on('data', feed);
  return {
    out: () => text,
    waitLine(re, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const line = text.split('\n').find((l) => re.test(l));
          if (line !== undefined) {
            listeners.splice(listeners.indexOf(check), 1);
            clearTimeout(timer);
            resolve(line);
            return true;
          }
          return false;
        };
        const timer = setTimeout(() => {
          listeners.splice(listeners.indexOf(check), 1);
          reject(new Error(`timed out waiting for ${re} in output:\n${text}`));
        }, timeoutMs);
        listeners.push(check);
        check();
        child.once('exit', (code) => {
          if (!check()) {
            clearTimeout(timer);
            reject(new Error(`process exited (${code}) before printing ${re}:\n${text}`));
          }
        });
      });
    },
  };
}

/** Starts `halfclose proxy ARGS` in the pod namespace as the sidecar uid and waits until it listens. */
export async function startNsProxy(topo: PodTopology, args: string[]): Promise<{ child: ChildProcess; output: () => string; stop(): Promise<void> }> {
  const child = topo.spawn(topo.pod, process.execPath, [BIN, 'proxy', '--admin', 'off', ...args], { uid: PROXY_UID });
  const w = watch(child);
  await w.waitLine(/"msg":"listening"/);
  return {
    child,
    output: w.out,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    },
  };
}

/** Runs a node script (ES module source) inside a namespace; its stdout lines are JSON events. */
export function nsNode(topo: PodTopology, netns: string, source: string, args: string[] = []): { child: ChildProcess; waitLine(re: RegExp, timeoutMs?: number): Promise<string>; out(): string } {
  const child = topo.spawn(netns, process.execPath, ['--input-type=module', '-e', source, ...args]);
  const w = watch(child);
  return { child, waitLine: w.waitLine, out: w.out };
}
