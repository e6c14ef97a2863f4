// Pure: reads iptables-save text and turns "what is there" plus "what is planned" into the
// smallest iptables-restore --noflush script: nothing when already installed, only our chains and
// our hook rules otherwise. Uninstall removes exactly those, never other rules in the same tables.

import { COMMENT_PREFIX, OUR_CHAINS, type FamilyPlan } from './plan.js';

export interface SavedTable {
  readonly name: string;
  /** Chain name -> policy (`ACCEPT`, `DROP`, or `-` for a user chain), in save order. */
  readonly chains: Map<string, string>;
  /** `-A CHAIN …` lines, in order. */
  readonly rules: string[];
}

export type Saved = Map<string, SavedTable>;

/** Parses `iptables-save` output (comments and counters ignored). */
export function parseSave(text: string): Saved {
  const tables: Saved = new Map();
  let cur: SavedTable | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      cur = { name: line.slice(1), chains: new Map(), rules: [] };
      tables.set(cur.name, cur);
    } else if (line === 'COMMIT') {
      cur = null;
    } else if (cur && line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(/\s+/);
      cur.chains.set(name!, policy ?? '-');
    } else if (cur && line.startsWith('-A ')) {
      cur.rules.push(line);
    }
  }
  return tables;
}

/** iptables-save text with what legitimately changes between two saves removed: header/footer comments and counters. */
export function normaliseSave(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#') && l.trim() !== '')
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'))
    .join('\n');
}

const OUR_JUMP = new RegExp(` -(j|g) (${OUR_CHAINS.join('|')})( |$)`);

function chainOf(rule: string): string {
  return rule.split(' ')[1]!;
}

/** A rule outside our chains that is ours (comment) or that points into our chains (it must go before they can). */
export function isHook(rule: string): boolean {
  return !OUR_CHAINS.includes(chainOf(rule)) && (rule.includes(`--comment "${COMMENT_PREFIX}`) || rule.includes(`--comment ${COMMENT_PREFIX}`) || OUR_JUMP.test(rule));
}

interface OursInTable {
  chains: Map<string, string[]>;
  hooks: string[];
}

/** Our chains (with their rules) and hook rules found in a table. */
export function oursIn(t: SavedTable): OursInTable {
  const chains = new Map<string, string[]>();
  for (const c of t.chains.keys()) if (OUR_CHAINS.includes(c)) chains.set(c, []);
  const hooks: string[] = [];
  for (const r of t.rules) {
    const c = chainOf(r);
    if (chains.has(c)) chains.get(c)!.push(r);
    else if (isHook(r)) hooks.push(r);
  }
  return { chains, hooks };
}

function hasOurs(o: OursInTable): boolean {
  return o.chains.size > 0 || o.hooks.length > 0;
}

const toDelete = (rule: string): string => `-D${rule.slice(2)}`;

/**
 * The script that turns `saved` into the plan, or null when the plan is already in place (so a
 * second install changes nothing, counters included). Chains whose rules already match are left
 * alone; a declared chain is created or flushed; hook rules already present keep their place.
 */
export function installScript(saved: Saved, p: FamilyPlan): string | null {
  const names = new Set<string>([...p.tables.map((t) => t.table), ...[...saved.values()].filter((t) => hasOurs(oursIn(t))).map((t) => t.name)]);
  const out: string[] = [];
  for (const name of names) {
    const want: { chains: readonly string[]; rules: readonly string[] } = p.tables.find((t) => t.table === name) ?? { chains: [], rules: [] };
    const have = saved.has(name) ? oursIn(saved.get(name)!) : { chains: new Map<string, string[]>(), hooks: [] };
    const wantChainRules = new Map<string, string[]>(want.chains.map((c) => [c, want.rules.filter((r) => chainOf(r) === c)]));
    const wantHooks = want.rules.filter((r) => !want.chains.includes(chainOf(r)));
    const declare = [...wantChainRules].filter(([c, rules]) => have.chains.get(c)?.join('\n') !== rules.join('\n')).map(([c]) => c);
    const stale = [...have.chains.keys()].filter((c) => !wantChainRules.has(c));
    const unmatched = [...wantHooks];
    const dropHooks: string[] = [];
    for (const h of have.hooks) {
      const i = unmatched.indexOf(h);
      if (i >= 0) unmatched.splice(i, 1);
      else dropHooks.push(h);
    }
    if (declare.length === 0 && stale.length === 0 && dropHooks.length === 0 && unmatched.length === 0) continue;
    out.push(`*${name}`);
    for (const c of declare) out.push(`:${c} - [0:0]`);
    for (const h of dropHooks) out.push(toDelete(h));
    for (const c of stale) out.push(`-F ${c}`);
    for (const c of stale) out.push(`-X ${c}`);
    // Our chains' rules first, so a hook never points at a chain still being filled.
    for (const c of declare) out.push(...wantChainRules.get(c)!);
    out.push(...unmatched);
    out.push('COMMIT');
  }
  return out.length === 0 ? null : `${out.join('\n')}\n`;
}

/** The script removing every rule and chain of ours, or null when there is none. */
export function uninstallScript(saved: Saved): string | null {
  const out: string[] = [];
  for (const t of saved.values()) {
    const o = oursIn(t);
    if (!hasOurs(o)) continue;
    out.push(`*${t.name}`);
    for (const h of o.hooks) out.push(toDelete(h));
    for (const c of o.chains.keys()) out.push(`-F ${c}`);
    for (const c of o.chains.keys()) out.push(`-X ${c}`);
    out.push('COMMIT');
  }
  return out.length === 0 ? null : `${out.join('\n')}\n`;
}

/** Tables where we have something (for reporting and for the post-uninstall clean-up). */
export function tablesWithOurs(saved: Saved): string[] {
  return [...saved.values()].filter((t) => hasOurs(oursIn(t))).map((t) => t.name);
}

/** A table with no rules and only built-in chains at policy ACCEPT: what iptables-nft creates on first use. */
export function isPristine(t: SavedTable): boolean {
  return t.rules.length === 0 && [...t.chains.values()].every((p) => p === 'ACCEPT');
}

/** Counts for messages: chains and rules of ours per table. */
export function countOurs(saved: Saved): { chains: number; rules: number } {
  let chains = 0;
  let rules = 0;
  for (const t of saved.values()) {
    const o = oursIn(t);
    chains += o.chains.size;
    rules += o.hooks.length + [...o.chains.values()].reduce((n, r) => n + r.length, 0);
  }
  return { chains, rules };
}

/** What of ours `saved` holds, as a plan: installScript(now, planFromSaved(before)) rolls back to `before`. */
export function planFromSaved(saved: Saved, base: Pick<FamilyPlan, 'family' | 'command'>): FamilyPlan {
  const tables = [...saved.values()]
    .map((t) => ({ t, o: oursIn(t) }))
    .filter(({ o }) => hasOurs(o))
    .map(({ t, o }) => ({
      table: t.name as FamilyPlan['tables'][number]['table'],
      chains: [...o.chains.keys()],
      // Hooks last, as the plan orders them: a hook may point into one of the chains.
      rules: [...[...o.chains.values()].flat(), ...o.hooks],
    }));
  return { ...base, tables };
}

/** Splits an iptables-restore script into its table sections (`*table` … `COMMIT`). */
export function splitTables(script: string): { table: string; text: string; firstLine: number }[] {
  const out: { table: string; text: string; firstLine: number }[] = [];
  const lines = script.split('\n');
  let cur: { table: string; lines: string[]; firstLine: number } | null = null;
  lines.forEach((l, i) => {
    if (l.startsWith('*')) cur = { table: l.slice(1), lines: [], firstLine: i + 1 };
    if (cur) cur.lines.push(l);
    if (cur && l === 'COMMIT') {
      out.push({ table: cur.table, text: `${cur.lines.join('\n')}\n`, firstLine: cur.firstLine });
      cur = null;
    }
  });
  return out;
}
