// `halfclose scan`: find leaked half-closed connections of any sidecar (Envoy, HAProxy, nginx or
// ours) in a network namespace, live or from captured `ss` and conntrack text.

import { UsageError } from '../errors.js';
import { requireNetns } from '../kernel/netns.js';
import { analyze, DEFAULT_PROXY_PORTS, type ScanReport } from '../scan/analyze.js';
import { collectFiles, collectLive, labelOf, listHostNamespaces, namespaceExists, targetOf } from '../scan/collect.js';
import { FORMATS, formatChanges, formatJson, formatPrometheus, formatTable, type Format } from '../scan/format.js';
import { parseFlags, str, type FlagSpec } from './flags.js';

export const summary = 'find leaked half-closed connections of any proxy (ss + conntrack)';

const HELP = `Usage: halfclose scan [where] [flags]

Reads a network namespace's TCP sockets (ss -tanoeip) and conntrack table and reports the
half-closed connections a sidecar holds that can never finish. The sidecar is found by its
listener ports, not by name, so this works for Envoy, HAProxy, nginx and halfclose alike.

Findings:
  leaked       the sidecar's FIN-WAIT-2 socket towards the app whose conntrack entry is gone (the
               app's FIN can no longer be un-NATed back to it) or whose app socket no longer
               exists; shown with its partner, the sidecar's CLOSE-WAIT socket to the upstream.
  at risk      half-closed, conntrack entry in CLOSE_WAIT that will expire before any keepalive
               refreshes it: a leak as soon as the app closes late.
  port hazard  app ports held by leaked sockets: a new connection from one of them times out.

Where (default: this process's network namespace):
  --netns NAME          a named namespace (ip netns list)
  --pid PID             the namespace of process PID (entered with nsenter)
  --all-netns           every distinct network namespace on the host (/proc/*/ns/net, /run/netns)
  --ss FILE             offline: text a user captured with ss -tanoeip (also ss -tan, ss -naoep,
                        with or without header); - reads standard input
  --conntrack FILE      offline, with --ss: conntrack -L (with or without -o extended) or
                        /proc/net/nf_conntrack. Without it only the app's socket can tell.

Flags:
  --proxy-ports LIST    the sidecar's listener ports, comma separated. Default ${DEFAULT_PROXY_PORTS.join(',')}.
  --format FORMAT       table (default), json, or prometheus (text exposition for node_exporter's
                        textfile collector: halfclose_scan_leaked_sockets{netns,process,state} …)
  --json                the same as --format json
  --watch SECONDS       rescan every SECONDS and print what changed, until interrupted
  -h, --help            this help

Live scans need root: ss shows owning processes and conntrack lists entries only to root.

Exit status: 1 when anything leaked, 0 when nothing did (at-risk connections alone are 0),
2 on bad usage or unreadable input.
`;

const FLAGS: FlagSpec = {
  netns: { type: 'string' },
  pid: { type: 'string' },
  'all-netns': { type: 'boolean' },
  ss: { type: 'string' },
  conntrack: { type: 'string' },
  'proxy-ports': { type: 'string' },
  format: { type: 'string' },
  json: { type: 'boolean' },
  watch: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

function parsePorts(text: string): number[] {
  const ports = text.split(',').map((p) => p.trim());
  if (ports.some((p) => !/^\d{1,5}$/.test(p) || Number(p) < 1 || Number(p) > 65535)) {
    throw new UsageError(`scan: --proxy-ports expects a comma-separated list of ports 1-65535, got "${text}"`);
  }
  return ports.map(Number);
}

/** Scans every namespace asked for once. */
type Scanner = () => Promise<ScanReport[]>;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseFlags('scan', argv, FLAGS);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const netns = str(values.netns);
  const pidText = str(values.pid);
  const all = values['all-netns'] === true;
  const ssFile = str(values.ss);
  const ctFile = str(values.conntrack);
  const wheres = [netns !== undefined, pidText !== undefined, all, ssFile !== undefined].filter(Boolean).length;
  if (wheres > 1) throw new UsageError('scan: give at most one of --netns, --pid, --all-netns, --ss');
  if (ctFile !== undefined && ssFile === undefined) throw new UsageError('scan: --conntrack needs --ss (offline scan of captured text)');
  if (pidText !== undefined && !/^[1-9]\d*$/.test(pidText)) throw new UsageError(`scan: --pid expects a process id, got "${pidText}"`);
  const proxyPortsText = str(values['proxy-ports']);
  const proxyPorts = proxyPortsText !== undefined ? parsePorts(proxyPortsText) : undefined;
  let format: Format = 'table';
  const formatText = str(values.format);
  if (formatText !== undefined) {
    if (!(FORMATS as readonly string[]).includes(formatText)) throw new UsageError(`scan: --format expects one of ${FORMATS.join(', ')}, got "${formatText}"`);
    format = formatText as Format;
  }
  if (values.json) {
    if (formatText !== undefined && formatText !== 'json') throw new UsageError('scan: --json contradicts --format ' + formatText);
    format = 'json';
  }
  const watchText = str(values.watch);
  let watchSec: number | undefined;
  if (watchText !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(watchText) || Number(watchText) <= 0) throw new UsageError(`scan: --watch expects a number of seconds above 0, got "${watchText}"`);
    if (ssFile !== undefined) throw new UsageError('scan: --watch rescans a live namespace; it cannot be used with --ss');
    watchSec = Number(watchText);
  }
  if (netns !== undefined) requireNetns(netns);

  let scan: Scanner;
  if (ssFile !== undefined) {
    scan = async () => [analyze(collectFiles(ssFile, ctFile, proxyPorts))];
  } else if (all) {
    scan = async () => {
      const reports: ScanReport[] = [];
      for (const ns of listHostNamespaces()) {
        try {
          const input = await collectLive(targetOf(ns), proxyPorts);
          input.where = labelOf(ns);
          reports.push(analyze(input));
        } catch (err) {
          // A namespace deleted (or a process exited) between listing and entering is not an error.
          if (!namespaceExists(ns)) continue;
          throw err;
        }
      }
      return reports;
    };
  } else {
    const target = netns !== undefined ? { netns } : pidText !== undefined ? { pid: Number(pidText) } : {};
    scan = async () => [analyze(await collectLive(target, proxyPorts))];
  }

  const many = all;
  const render = async (reports: ScanReport[]): Promise<string> => {
    if (format === 'json') return formatJson(reports, many);
    if (format === 'prometheus') return formatPrometheus(reports);
    return reports.map(formatTable).join('\n' + '='.repeat(72) + '\n\n');
  };
  const leaked = (reports: ScanReport[]): boolean => reports.some((r) => r.summary.leakedConnections > 0);

  let reports = await scan();
  process.stdout.write(await render(reports));
  if (watchSec === undefined) return leaked(reports) ? 1 : 0;

  // --watch: rescan until SIGINT/SIGTERM, print changes; exit with the last scan's status.
  let stop = false;
  let wake: (() => void) | null = null;
  let timer: NodeJS.Timeout | undefined;
  const onSignal = (): void => {
    stop = true;
    clearTimeout(timer);
    wake?.();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  while (!stop) {
    await new Promise<void>((r) => {
      wake = r;
      timer = setTimeout(r, watchSec * 1000);
    });
    if (stop) break;
    const next = await scan();
    const changes = formatChanges(reports, next);
    const stamp = new Date().toISOString();
    if (format === 'table') {
      process.stdout.write(changes.length ? changes.map((c) => `${stamp} ${c}\n`).join('') : '');
    } else {
      process.stdout.write(await render(next));
    }
    reports = next;
  }
  return leaked(reports) ? 1 : 0;
}
