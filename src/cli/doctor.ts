// `halfclose doctor`: reads the kernel settings that decide whether a proxy behind REDIRECT can
// leak half-closed connections, and says in plain words whether the leak can happen and what to change.

import { loadConfig } from '../config/load.js';
import { UsageError } from '../errors.js';
import { readKernelSettings } from '../kernel/conntrack-settings.js';
import { requireNetns } from '../kernel/netns.js';
import { assess, type DoctorTarget } from '../doctor/assess.js';
import { formatReport } from '../doctor/format.js';
import { parseDuration } from '../util/duration.js';
import { parseFlags, str, type FlagSpec } from './flags.js';

export const summary = 'check the kernel settings that decide whether a proxy can leak';

const HELP = `Usage: halfclose doctor [--config FILE | --keepalive MODE | --idle-timeout DUR] [--netns NAME] [--json]

Reads the kernel settings that decide whether a sidecar behind iptables REDIRECT can leak
half-closed connections (conntrack TCP timeouts, nf_conntrack_tcp_loose, be_liberal,
ignore_invalid_rst, nf_conntrack_max and count, tcp_keepalive_*, tcp_fin_timeout) and says
whether the leak can happen with the proxy you run, and what to change.

The proxy judged (default: halfclose with its defaults, as \`halfclose proxy\` would run here):
  --config FILE         a halfclose config file (its keepalive, idle and half-close timeouts)
  --keepalive MODE      halfclose with this --keepalive: auto, off or IDLE:INTERVAL:COUNT
                        (over --config when both are given)
  --idle-timeout DUR    instead an Envoy-like proxy: half-close propagated, no keepalive, and
                        this idle timeout (Envoy's tcp_proxy idle_timeout, 1h by default; 0 = none)

Where (default: this process's network namespace):
  --netns NAME          a named namespace (ip netns list); needs root

Output:
  --json                one JSON object: settings, findings (id, level, message, fix), verdict
  -h, --help            this help

Exit status: 1 when the leak can happen, 0 when it cannot, 2 on bad usage or an unreadable
config or namespace.
`;

const FLAGS: FlagSpec = {
  config: { type: 'string' },
  keepalive: { type: 'string' },
  'idle-timeout': { type: 'string' },
  netns: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

function targetOf(values: ReturnType<typeof parseFlags>['values']): DoctorTarget {
  const idle = str(values['idle-timeout']);
  const config = str(values.config);
  const keepalive = str(values.keepalive);
  if (idle !== undefined) {
    if (config !== undefined || keepalive !== undefined) {
      throw new UsageError('doctor: --idle-timeout judges an Envoy-like proxy; it cannot be combined with --config or --keepalive (halfclose)');
    }
    return { kind: 'envoy-like', idleTimeoutMs: parseDuration(idle, '--idle-timeout') };
  }
  const resolved = loadConfig(config, keepalive !== undefined ? { keepalive: { halfClosed: keepalive } } : {});
  const source = config ?? (keepalive !== undefined ? 'flags' : 'defaults');
  return { kind: 'halfclose', config: resolved, source };
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseFlags('doctor', argv, FLAGS);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const target = targetOf(values);
  const netns = str(values.netns);
  if (netns !== undefined) requireNetns(netns);
  const settings = await readKernelSettings(netns);
  const report = assess(settings, target, netns ?? null);
  process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
  return report.leakPossible ? 1 : 0;
}
