// Where a kernel reader looks: this process's network namespace, a named one (`ip netns exec`), or
// the namespace of a process (`nsenter --net=/proc/PID/ns/net`). Every command goes through run().

import { existsSync } from 'node:fs';
import { HalfcloseError } from '../errors.js';
import { run, type RunOptions, type RunResult } from './run.js';

/** At most one of netns and pid; neither means the caller's own namespace. */
export interface NsTarget {
  /** A named namespace (`ip netns list`). */
  netns?: string;
  /** Any process in the namespace; entered with `nsenter --net=/proc/PID/ns/net`. */
  pid?: number;
}

/** Runs a command inside the target's network namespace. */
export function runIn(target: NsTarget, file: string, args: readonly string[], opts: Omit<RunOptions, 'netns'> = {}): Promise<RunResult> {
  if (target.netns !== undefined && target.pid !== undefined) {
    throw new HalfcloseError('HC_ERR_USAGE', 'a namespace is given both by name and by pid; give one');
  }
  if (target.pid !== undefined) {
    const nsPath = `/proc/${target.pid}/ns/net`;
    if (!existsSync(nsPath)) throw new HalfcloseError('HC_ERR_NETNS', `--pid: process ${target.pid} does not exist (no ${nsPath})`);
    return run('nsenter', [`--net=${nsPath}`, '--', file, ...args], opts);
  }
  return run(file, args, { ...opts, netns: target.netns });
}

/** Reads a file as seen from inside the namespace (/proc/net/*, /proc/sys/net/*), or null if it is missing. */
export async function readNsFile(target: NsTarget, path: string): Promise<string | null> {
  const r = await runIn(target, 'cat', [path], { reject: false });
  return r.exitCode === 0 ? r.stdout : null;
}

/** `netns NAME`, `pid 123` or `this namespace`, for messages. */
export function describeTarget(target: NsTarget): string {
  if (target.netns !== undefined) return `netns ${target.netns}`;
  if (target.pid !== undefined) return `pid ${target.pid}`;
  return 'this namespace';
}
