// `halfclose lab`: rebuild the half-close leak with real namespaces, iptables and conntrack and
// compare sidecars side by side; prints the matrix, optionally as JSON and as an HTML report.

import { writeFileSync } from 'node:fs';
import { UsageError } from '../errors.js';
import { runLab } from '../lab/lab.js';
import { SCENARIO_NAMES, type ScenarioName } from '../lab/scenarios.js';
import { SIDECAR_NAMES, SIDECARS, type SidecarName } from '../lab/sidecars.js';
import { formatProgress, formatTable } from '../lab/table.js';
import { parseFlags, str, type FlagSpec } from './flags.js';

export const summary = 'rebuild the half-close leak in namespaces and compare proxies side by side';

const HELP = `Usage: halfclose lab [--scenario NAME|all] [--proxy NAME|all] [flags]

Builds, per sidecar, a "pod" network namespace (app + sidecar, outbound TCP redirected to the
sidecar on 127.0.0.1:15001, the sidecar running as uid 1337) and a "service" namespace joined by a
veth pair, lowers the pod's conntrack CLOSE_WAIT timeout, plays each scenario and reports what the
kernel showed (ss and conntrack in the pod, what the service and the app received). Needs root.
Everything it creates is removed at the end, on failure and on Ctrl-C.

Scenarios (--scenario, comma-separated list or all; default all):
  seed          the service closes first; the app idles past the CLOSE_WAIT timeout, then
                closes with a bare FIN. Measured: sockets the sidecar still holds.
  late-message  as seed, but the app sends a message before its FIN. Measured: did the
                service receive it.
  port-reuse    after seed, the app connects again from the same source port. Measured:
                connect time or failure.
  entry-lost    the conntrack table is flushed during the half-close. Measured: when the
                sidecar's sockets are freed.
  control       everyone closes promptly. Nothing may leak here.

Sidecars (--proxy, comma-separated list or all; default all):
${SIDECAR_NAMES.map((s) => `  ${s.padEnd(12)} ${SIDECARS[s].summary}`).join('\n')}
  A sidecar whose program is not installed is reported as skipped.

Flags:
  --scenario NAME|all     scenarios to run. Default all.
  --proxy NAME|all        sidecars to compare. Default all.
  --close-wait SECONDS    the pod's nf_conntrack_tcp_timeout_close_wait, 1-60. Default 3.
  --parallel N            sidecars run at once, each in its own namespaces. Default: all.
  --json                  print the result as JSON instead of the table.
  --report FILE.html      also write a self-contained HTML report with a step diagram per cell.
  --keep                  leave each sidecar's namespaces up after its last scenario (sidecar, app
                          and service still running), print the commands to look inside, and
                          wait; Ctrl-C removes everything.
  --quiet                 no progress lines on stderr.
  -h, --help              this help.

Exit status: 0 when the lab ran (whatever the verdicts), 1 when a cell could not run (lab error),
2 on bad input, without root or when a system tool is missing, 130 after Ctrl-C.
`;

const FLAGS: FlagSpec = {
  scenario: { type: 'string' },
  proxy: { type: 'string' },
  'close-wait': { type: 'string' },
  parallel: { type: 'string' },
  json: { type: 'boolean' },
  report: { type: 'string' },
  quiet: { type: 'boolean' },
  keep: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

function pick<T extends string>(flag: string, value: string | undefined, all: readonly T[]): T[] {
  if (value === undefined || value === 'all') return [...all];
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new UsageError(`lab: ${flag} needs a name or "all"`);
  for (const n of names) {
    if (!(all as readonly string[]).includes(n)) throw new UsageError(`lab: ${flag} "${n}" is unknown; expected all or one of: ${all.join(', ')}`);
  }
  return all.filter((n) => names.includes(n));
}

function int(flag: string, value: string | undefined, def: number, min: number, max: number): number {
  if (value === undefined) return def;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) throw new UsageError(`lab: ${flag} must be a whole number from ${min} to ${max}, got "${value}"`);
  return Number(value);
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseFlags('lab', argv, FLAGS);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const scenarios: ScenarioName[] = pick('--scenario', str(values.scenario), SCENARIO_NAMES);
  const sidecars: SidecarName[] = pick('--proxy', str(values.proxy), SIDECAR_NAMES);
  const closeWaitSec = int('--close-wait', str(values['close-wait']), 3, 1, 60);
  const parallel = int('--parallel', str(values.parallel), sidecars.length, 1, 64);
  const report = str(values.report);
  if (report !== undefined && !/\.html?$/i.test(report)) throw new UsageError(`lab: --report needs a file name ending in .html, got "${report}"`);
  if (process.getuid?.() !== 0) throw new UsageError('lab: needs root (it creates network namespaces and iptables rules); run it with sudo');
  const quiet = values.quiet === true;
  if (!quiet) process.stderr.write(`lab: ${scenarios.length} scenarios x ${sidecars.length} sidecars, conntrack CLOSE_WAIT ${closeWaitSec} s\n`);
  const keep = values.keep === true;
  const result = await runLab({ scenarios, sidecars, closeWaitSec, parallel, keep, onCell: quiet ? undefined : (c) => process.stderr.write(`${formatProgress(c)}\n`) });
  if (report !== undefined) {
    const { renderReport } = await import('../lab/report.js');
    writeFileSync(report, renderReport(result));
    if (!quiet) process.stderr.write(`lab: report written to ${report}\n`);
  }
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : formatTable(result));
  if (keep && result.kept.length > 0) {
    const lines = ['', `lab: left up after "${scenarios.at(-1)}" — look inside, then press Ctrl-C to remove everything:`];
    for (const k of result.kept) {
      lines.push(`  ${k.sidecar}:`);
      lines.push(`    ip netns exec ${k.pod} ss -tanoeip`, `    ip netns exec ${k.pod} conntrack -L`, `    ip netns exec ${k.pod} iptables -t nat -S`, `    ip netns exec ${k.svc} ss -tanoeip`);
    }
    process.stderr.write(`${lines.join('\n')}\n`);
    // The topology's signal hook removes everything and exits; until then, keep the process alive.
    await new Promise<never>(() => setInterval(() => {}, 1 << 30));
  }
  return result.cells.some((c) => c.outcome === 'error') ? 1 : 0;
}
