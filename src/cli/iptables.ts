// `halfclose iptables install|uninstall|print`: Istio-style interception rules for the proxy's
// --outbound and --inbound listeners. Planning (pure) is in src/netfilter/plan.ts, applying in apply.ts.

import { UsageError } from '../errors.js';
import { familyName, install, openNetfilter, uninstall, type Backend, type FamilyReport, type Netfilter } from '../netfilter/apply.js';
import { resolveOptions, type RawOptions } from '../netfilter/options.js';
import { plan, renderScript } from '../netfilter/plan.js';
import { list, parseFlags, str, type FlagSpec } from './flags.js';

export const summary = 'install, uninstall or print the interception rules (Istio layout)';

const HELP = `Usage: halfclose iptables install|uninstall|print [flags]

Interception rules for \`halfclose proxy --outbound … --inbound …\`, in the nat table, with the chain
layout of Istio's sidecar (our names, so both can be told apart):
  OUTPUT     -p tcp -j HALFCLOSE_OUTPUT       outbound: loopback, the proxy's own uid/gid, excluded
                                              ports and CIDRs RETURN; the rest -> HALFCLOSE_REDIRECT
  PREROUTING -p tcp -j HALFCLOSE_INBOUND      inbound: excluded ports RETURN, captured ports ->
                                              HALFCLOSE_IN_REDIRECT
  HALFCLOSE_REDIRECT     REDIRECT --to-ports <outbound port>
  HALFCLOSE_IN_REDIRECT  REDIRECT --to-ports <inbound port>
Every rule carries -m comment "halfclose: …". See docs/iptables.md for the layout rule by rule.

Actions:
  print       show the iptables-restore script for these options; touches nothing, needs no root
  install     apply it with iptables-restore --noflush (atomic per table; a failure leaves the
              tables as they were). Running it again with the same options changes nothing; with
              other options it replaces our chains in one step.
  uninstall   remove exactly our chains and the rules that jump to them, IPv4 and IPv6; every
              other rule stays. Nothing installed: says so and exits 0.

Options (install and print):
  --proxy-uid ID[,ID]        uid(s) of the proxy; their traffic is never captured. Default 1337.
  --proxy-gid ID[,ID]        gid(s) of the proxy, likewise. Default 1337.
  --outbound-port PORT       the proxy's --outbound listener port. Default 15001.
  --inbound-port PORT        the proxy's --inbound listener port. Default 15006. Listen on
                             --inbound 0.0.0.0:15006: connections from other hosts arrive at the
                             pod's address, the proxy's own calls to its pod address at 127.0.0.1.
                             IPv6 inbound needs a listener whose upstream source is ::6
                             (docs/iptables.md shows the config).
  --inbound-ports LIST       inbound destination ports to capture: * (default: all) or a comma
                             list; an empty value ('') captures no inbound traffic.
  --exclude-inbound-ports LIST   inbound ports never captured (e.g. 22). Default none.
  --exclude-outbound-ports LIST  outbound destination ports never captured. Default none.
  --include-outbound-cidrs LIST  outbound destinations to capture: * (default) or CIDRs; with a
                             list, a family without an entry is not captured at all.
  --exclude-outbound-cidrs LIST  outbound destinations never captured. Default none.
  --ipv6                     also program ip6tables with the same layout (::1, ::6), and add
                             ::6/128 to lo: the proxy's IPv6 inbound upstreams come from ::6.
                             Default: IPv4 only.
  --drop-invalid             also drop conntrack-INVALID TCP in mangle PREROUTING, as Istio's
                             optional rule. Note: this does NOT cure the half-close leak. The
                             leaked FIN is the application's own, sent after the conntrack entry
                             expired; dropping INVALID packets cannot bring that entry back. Only
                             keepalive on the half-closed sockets (halfclose proxy --keepalive auto)
                             keeps the entry alive. Default off.

Where and how (all actions but print):
  --netns NAME               act in the named network namespace (ip netns). Default: this one.
  --backend auto|nft|legacy  iptables back end. Default auto: what \`iptables --version\` reports.
  --dry-run                  show the script install/uninstall would apply here; change nothing.
  -h, --help                 this help.

Exit status: 0 done (or nothing to do), 2 bad input, a missing tool, or a rejected script (one line).
`;

const FLAGS: FlagSpec = {
  'proxy-uid': { type: 'string', multiple: true },
  'proxy-gid': { type: 'string', multiple: true },
  'outbound-port': { type: 'string' },
  'inbound-port': { type: 'string' },
  'inbound-ports': { type: 'string', multiple: true },
  'exclude-inbound-ports': { type: 'string', multiple: true },
  'exclude-outbound-ports': { type: 'string', multiple: true },
  'include-outbound-cidrs': { type: 'string', multiple: true },
  'exclude-outbound-cidrs': { type: 'string', multiple: true },
  ipv6: { type: 'boolean' },
  'drop-invalid': { type: 'boolean' },
  netns: { type: 'string' },
  backend: { type: 'string' },
  'dry-run': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const PLAN_FLAGS = Object.keys(FLAGS).filter((f) => !['netns', 'backend', 'dry-run', 'help'].includes(f));
const TARGET_FLAGS = ['netns', 'backend', 'dry-run'];

function rawOptions(values: ReturnType<typeof parseFlags>['values']): RawOptions {
  const many = (k: string): string[] | undefined => (values[k] === undefined ? undefined : list(values[k]));
  return {
    proxyUid: many('proxy-uid'),
    proxyGid: many('proxy-gid'),
    outboundPort: str(values['outbound-port']),
    inboundPort: str(values['inbound-port']),
    inboundPorts: many('inbound-ports'),
    excludeInboundPorts: many('exclude-inbound-ports'),
    excludeOutboundPorts: many('exclude-outbound-ports'),
    includeOutboundCidrs: many('include-outbound-cidrs'),
    excludeOutboundCidrs: many('exclude-outbound-cidrs'),
    ipv6: values.ipv6 === true,
    dropInvalid: values['drop-invalid'] === true,
  };
}

function describeTarget(nf: Netfilter): string {
  return `back end ${nf.backend} (${nf.version}), ${nf.netns ? `namespace ${nf.netns}` : 'current namespace'}`;
}

function report(r: FamilyReport, dryRun: boolean): string {
  const name = familyName(r.family);
  const would = dryRun ? 'would be ' : '';
  const head = {
    installed: `${name}: ${would}installed`,
    updated: `${name}: ${would}updated to these options (our chains replaced in one step)`,
    unchanged: `${name}: already installed with these options; nothing changed`,
    removed: `${name}: ${would}removed`,
    absent: `${name}: nothing of halfclose is installed; nothing to do`,
    skipped: `${name}: skipped`,
  }[r.action];
  const lines = [head, ...r.notes.map((n) => `  ${n}`)];
  if (dryRun && r.script) lines.push(...r.script.trimEnd().split('\n').map((l) => `  | ${l}`));
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags('iptables', argv, FLAGS, true);
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const [action, ...extra] = positionals;
  if (action === undefined) throw new UsageError('iptables: expected an action: install, uninstall or print (see `halfclose iptables --help`)');
  if (!['install', 'uninstall', 'print'].includes(action)) {
    throw new UsageError(`iptables: unknown action "${action}"; expected install, uninstall or print`);
  }
  if (extra.length > 0) throw new UsageError(`iptables: unexpected argument "${extra[0]}" after ${action}`);
  const given = (flags: string[]): string | undefined => flags.find((f) => values[f] !== undefined);
  if (action === 'print') {
    const f = given(TARGET_FLAGS);
    if (f) throw new UsageError(`iptables print: --${f} does not apply; print only shows the plan (use install --dry-run to see what would change in a namespace)`);
  }
  if (action === 'uninstall') {
    const f = given(PLAN_FLAGS);
    if (f) throw new UsageError(`iptables uninstall: --${f} does not apply; uninstall removes every halfclose chain and rule, IPv4 and IPv6`);
  }
  const backend = str(values.backend);
  if (backend !== undefined && !['auto', 'nft', 'legacy'].includes(backend)) {
    throw new UsageError(`--backend: expected auto, nft or legacy, got "${backend}"`);
  }

  if (action === 'print') {
    const o = resolveOptions(rawOptions(values));
    const parts = plan(o).map((p) => `# halfclose iptables plan, ${familyName(p.family)}: input of ${p.command}-restore --noflush\n${renderScript(p)}`);
    process.stdout.write(parts.join(''));
    return 0;
  }

  const o = action === 'install' ? resolveOptions(rawOptions(values)) : null;
  const nf = await openNetfilter({ netns: str(values.netns), backend: backend as Backend | 'auto' | undefined });
  const dryRun = values['dry-run'] === true;
  const reports = o ? await install(nf, o, { dryRun }) : await uninstall(nf, { dryRun });
  process.stdout.write(`halfclose iptables ${action}${dryRun ? ' --dry-run' : ''}: ${describeTarget(nf)}\n${reports.map((r) => report(r, dryRun)).join('\n')}\n`);
  return 0;
}
