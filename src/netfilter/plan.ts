// Planning, pure: interception options -> the rules per address family, in the exact text
// iptables-save prints (so the plan can be compared with the live tables), rendered as an
// iptables-restore script. The chain layout is Istio's sidecar layout with our own chain names.

import { interceptOptions, type Cidr, type Family, type InterceptOptions } from './options.js';

export const CHAIN = {
  inbound: 'HALFCLOSE_INBOUND',
  redirect: 'HALFCLOSE_REDIRECT',
  inRedirect: 'HALFCLOSE_IN_REDIRECT',
  output: 'HALFCLOSE_OUTPUT',
} as const;

/** Our chains, in the order Istio declares its own. */
export const OUR_CHAINS: readonly string[] = [CHAIN.inbound, CHAIN.redirect, CHAIN.inRedirect, CHAIN.output];

/** Every rule we write carries a comment starting with this; uninstall finds our rules by it. */
export const COMMENT_PREFIX = 'halfclose:';

export type TableName = 'nat' | 'mangle';

export interface TablePlan {
  readonly table: TableName;
  /** User chains we own in this table (declared, hence created or flushed, by the script). */
  readonly chains: readonly string[];
  /** `-A CHAIN …` lines in order; those on built-in chains (OUTPUT, PREROUTING) are the hooks. */
  readonly rules: readonly string[];
}

export interface FamilyPlan {
  readonly family: Family;
  /** `iptables` or `ip6tables`. */
  readonly command: 'iptables' | 'ip6tables';
  readonly tables: readonly TablePlan[];
}

/** multiport takes at most 15 ports per rule. */
const MULTIPORT_MAX = 15;

function rule(chain: string, spec: string, comment: string, target: string): string {
  return `-A ${chain}${spec ? ` ${spec}` : ''} -m comment --comment "${COMMENT_PREFIX} ${comment}" -j ${target}`;
}

function chunks<T>(list: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += size) out.push(list.slice(i, i + size));
  return out;
}

function portMatch(ports: readonly number[]): string {
  return ports.length === 1 ? `-p tcp -m tcp --dport ${ports[0]}` : `-p tcp -m multiport --dports ${ports.join(',')}`;
}

function cidrsOf(list: readonly Cidr[], family: Family): string[] {
  return list.filter((c) => c.family === family).map((c) => c.text);
}

/** The rules of one family. IPv6 differs only in its loopback (::1) and inbound source (::6). */
export function planFamily(o: InterceptOptions, family: Family): FamilyPlan {
  const loopback = family === 4 ? '127.0.0.1/32' : '::1/128';
  const inboundSource = family === 4 ? '127.0.0.6/32' : '::6/128';
  const nat: string[] = [];

  nat.push(rule(CHAIN.redirect, '-p tcp', 'outbound capture: to the proxy outbound port', `REDIRECT --to-ports ${o.outboundPort}`));
  nat.push(rule(CHAIN.inRedirect, '-p tcp', 'inbound capture: to the proxy inbound port', `REDIRECT --to-ports ${o.inboundPort}`));

  // Inbound: PREROUTING sees connections arriving from other hosts (never our own local ones).
  const captureInbound = o.inboundPorts === '*' || o.inboundPorts.length > 0;
  if (captureInbound) {
    nat.push(rule('PREROUTING', '-p tcp', `inbound TCP to ${CHAIN.inbound}`, CHAIN.inbound));
    for (const c of chunks(o.excludeInboundPorts, MULTIPORT_MAX)) {
      nat.push(rule(CHAIN.inbound, portMatch(c), 'excluded inbound port (--exclude-inbound-ports)', 'RETURN'));
    }
    if (o.inboundPorts === '*') {
      nat.push(rule(CHAIN.inbound, '-p tcp', 'inbound, every other port (--inbound-ports *)', CHAIN.inRedirect));
    } else {
      for (const c of chunks(o.inboundPorts, MULTIPORT_MAX)) {
        nat.push(rule(CHAIN.inbound, portMatch(c), 'captured inbound port (--inbound-ports)', CHAIN.inRedirect));
      }
    }
  }

  // Outbound: OUTPUT sees everything this namespace's processes send, the proxy's own included.
  nat.push(rule('OUTPUT', '-p tcp', `outbound TCP to ${CHAIN.output}`, CHAIN.output));
  for (const c of chunks(o.excludeOutboundPorts, MULTIPORT_MAX)) {
    nat.push(rule(CHAIN.output, portMatch(c), 'excluded outbound port (--exclude-outbound-ports)', 'RETURN'));
  }
  // The inbound listener's upstream connections come from this source: never capture them again.
  nat.push(rule(CHAIN.output, `-s ${inboundSource} -o lo`, `inbound upstream from ${inboundSource.split('/')[0]} passes`, 'RETURN'));
  const owners: ['uid' | 'gid', number][] = [...o.proxyUids.map((u) => ['uid', u] as ['uid', number]), ...o.proxyGids.map((g) => ['gid', g] as ['gid', number])];
  for (const [kind, id] of owners) {
    const m = `-m owner --${kind}-owner ${id}`;
    const neg = `-m owner ! --${kind}-owner ${id}`;
    // The proxy dialling a local non-loopback address (its own pod IP) is inbound traffic for this pod.
    nat.push(rule(CHAIN.output, `! -d ${loopback} -o lo ${m}`, `proxy ${kind} ${id} to a local address: inbound`, CHAIN.inRedirect));
    // Other processes talking over loopback (to 127.0.0.1 or to the pod IP) stay local.
    nat.push(rule(CHAIN.output, `-o lo ${neg}`, `loopback traffic of ${kind}s other than ${id} passes`, 'RETURN'));
    // The proxy's upstream connections: never redirected back to the proxy.
    nat.push(rule(CHAIN.output, m, `traffic of the proxy (${kind} ${id}) passes`, 'RETURN'));
  }
  nat.push(rule(CHAIN.output, `-d ${loopback}`, `loopback ${loopback.split('/')[0]} passes`, 'RETURN'));
  for (const cidr of cidrsOf(o.excludeOutboundCidrs, family)) {
    nat.push(rule(CHAIN.output, `-d ${cidr}`, 'excluded destination (--exclude-outbound-cidrs)', 'RETURN'));
  }
  if (o.includeOutboundCidrs === '*') {
    nat.push(rule(CHAIN.output, '', 'everything else to the outbound port', CHAIN.redirect));
  } else {
    for (const cidr of cidrsOf(o.includeOutboundCidrs, family)) {
      nat.push(rule(CHAIN.output, `-d ${cidr}`, 'captured destination (--include-outbound-cidrs)', CHAIN.redirect));
    }
    nat.push(rule(CHAIN.output, '', 'not in --include-outbound-cidrs: passes', 'RETURN'));
  }

  const tables: TablePlan[] = [{ table: 'nat', chains: OUR_CHAINS, rules: nat }];
  if (o.dropInvalid) {
    tables.unshift({
      table: 'mangle',
      chains: [],
      rules: [rule('PREROUTING', '-p tcp -m conntrack --ctstate INVALID', 'drop conntrack-INVALID TCP (--drop-invalid)', 'DROP')],
    });
  }
  return { family, command: family === 4 ? 'iptables' : 'ip6tables', tables };
}

/** IPv4, and IPv6 when `--ipv6` is given. */
export function plan(o: InterceptOptions): FamilyPlan[] {
  return o.ipv6 ? [planFamily(o, 4), planFamily(o, 6)] : [planFamily(o, 4)];
}

/**
 * The entry point for programmatic callers: options (defaults filled in and checked) -> one plan
 * per family. `planInterception({ proxyUids: [1337], ipv6: true })`.
 */
export function planInterception(partial: Parameters<typeof interceptOptions>[0] = {}): FamilyPlan[] {
  return plan(interceptOptions(partial));
}

/** The whole plan of one family as an `iptables-restore --noflush` script. */
export function renderScript(p: FamilyPlan): string {
  const out: string[] = [];
  for (const t of p.tables) {
    out.push(`*${t.table}`);
    for (const c of t.chains) out.push(`:${c} - [0:0]`);
    out.push(...t.rules, 'COMMIT');
  }
  return `${out.join('\n')}\n`;
}
