// Applying: finds the iptables back end (nf_tables or legacy), reads the live tables with
// iptables-save, and feeds the reconcile script to `iptables-restore --noflush`, which commits
// each table atomically — a script that fails on any line leaves that table as it was.

import { CommandError, HalfcloseError } from '../errors.js';
import { requireNetns } from '../kernel/netns.js';
import { hasCommand, run } from '../kernel/run.js';
import type { Family, InterceptOptions } from './options.js';
import { plan, type FamilyPlan } from './plan.js';
import { countOurs, installScript, isPristine, parseSave, planFromSaved, splitTables, tablesWithOurs, uninstallScript, type Saved } from './reconcile.js';

export type Backend = 'nft' | 'legacy';

export interface Target {
  /** Named network namespace, or undefined for the current one. */
  netns?: string | undefined;
  /** `auto` (default) asks `iptables --version`. */
  backend?: Backend | 'auto' | undefined;
}

export interface Netfilter {
  readonly backend: Backend;
  /** The `iptables --version` line the back end was read from (or the forced choice). */
  readonly version: string;
  readonly netns: string | undefined;
  save(family: Family): Promise<{ text: string; warning: string | null }>;
  /** `iptables-restore --noflush`; throws HC_ERR_IPTABLES naming the line it rejected. */
  restore(family: Family, script: string, opts?: { flush?: boolean }): Promise<void>;
  has(family: Family): boolean;
}

const BASE: Record<Family, string> = { 4: 'iptables', 6: 'ip6tables' };

/** `iptables v1.8.9 (nf_tables)` -> nft; `(legacy)` or no suffix (before 1.8) -> legacy. */
export function backendFromVersion(line: string): Backend {
  return /nf_tables/.test(line) ? 'nft' : 'legacy';
}

/** The save/restore binary for a family and back end: the explicit variant when installed, else the generic name. */
function tool(family: Family, backend: Backend, what: 'save' | 'restore'): string {
  const explicit = `${BASE[family]}-${backend}-${what}`;
  return hasCommand(explicit) ? explicit : `${BASE[family]}-${what}`;
}

export async function openNetfilter(target: Target = {}): Promise<Netfilter> {
  if (target.netns !== undefined) requireNetns(target.netns);
  if (!hasCommand('iptables')) {
    throw new HalfcloseError('HC_ERR_MISSING_TOOL', '`iptables` is not installed (run `make setup`, or apt-get install iptables)');
  }
  let backend: Backend;
  let version: string;
  if (target.backend === undefined || target.backend === 'auto') {
    version = (await run('iptables', ['--version'])).stdout.trim();
    backend = backendFromVersion(version);
  } else {
    backend = target.backend;
    version = `forced by --backend ${backend}`;
  }
  const netns = target.netns;
  return {
    backend,
    version,
    netns,
    has(family) {
      return hasCommand(tool(family, backend, 'save')) && hasCommand(tool(family, backend, 'restore'));
    },
    async save(family) {
      const r = await run(tool(family, backend, 'save'), [], { netns });
      // iptables-nft-save warns when the other back end also holds rules: those would still apply.
      const warning = /legacy tables present|nft.*tables present/i.exec(r.stderr + r.stdout)?.[0] ?? null;
      return { text: r.stdout, warning };
    },
    async restore(family, script, opts = {}) {
      const file = tool(family, backend, 'restore');
      try {
        await run(file, [...(opts.flush ? [] : ['--noflush']), '-w', '5'], { netns, input: script });
      } catch (err) {
        if (err instanceof CommandError) {
          const at = /line:? (\d+)/i.exec(err.stderr)?.[1];
          const bad = at ? script.split('\n')[Number(at) - 1] : undefined;
          const why = err.stderr.trim().split('\n')[0] ?? `exit status ${err.exitCode}`;
          throw new HalfcloseError(
            'HC_ERR_IPTABLES',
            `${file} rejected the script${at ? ` at line ${at}${bad ? ` (${bad})` : ''}` : ''}: ${why}; the tables were left as they were`,
            { cause: err },
          );
        }
        throw err;
      }
    },
  };
}

export interface FamilyReport {
  family: Family;
  /** installed, updated, unchanged, removed, absent (nothing of ours), skipped (no ip6tables). */
  action: 'installed' | 'updated' | 'unchanged' | 'removed' | 'absent' | 'skipped';
  /** The script applied (or that would be, under dry-run); null when nothing needed doing. */
  script: string | null;
  notes: string[];
}

const NAME: Record<Family, string> = { 4: 'IPv4', 6: 'IPv6' };

async function saved(nf: Netfilter, family: Family, notes: string[]): Promise<Saved> {
  const s = await nf.save(family);
  if (s.warning) notes.push(`warning from ${BASE[family]}-save: ${s.warning} (rules of the other back end still apply)`);
  return parseSave(s.text);
}

/**
 * Applies a script table by table (iptables-restore commits each table on its own). If a later
 * table fails, the tables already committed are put back to `before`, so a failed apply leaves
 * every table as it was, not only the one that failed.
 */
export async function applyScript(nf: Netfilter, family: Family, script: string, before: Saved): Promise<void> {
  const done: string[] = [];
  for (const section of splitTables(script)) {
    try {
      await nf.restore(family, section.text);
      done.push(section.table);
    } catch (err) {
      if (done.length > 0) {
        const now = await saved(nf, family, []);
        const back = planFromSaved(before, { family, command: family === 4 ? 'iptables' : 'ip6tables' });
        const rollback = installScript(new Map([...now].filter(([name]) => done.includes(name))), { ...back, tables: back.tables.filter((t) => done.includes(t.table)) });
        if (rollback !== null) await nf.restore(family, rollback);
        // A table the failed install brought into being (nft creates one on first use) goes too.
        if (nf.backend === 'nft') {
          const left = await saved(nf, family, []);
          for (const name of done) {
            const t = left.get(name);
            if (!before.has(name) && t && isPristine(t)) await nf.restore(family, `*${name}\nCOMMIT\n`, { flush: true });
          }
        }
      }
      if (err instanceof HalfcloseError && section.firstLine > 1) {
        // Line numbers from iptables-restore count from the start of the section.
        err.message = err.message.replace(/at line (\d+)/, (_m, n: string) => `at line ${Number(n) + section.firstLine - 1}`);
      }
      throw err;
    }
  }
}

/** The proxy's IPv6 inbound upstreams come from ::6 (as Istio's); the address must exist on lo to bind it. */
async function ensureInboundSource6(nf: Netfilter, dryRun: boolean, notes: string[]): Promise<void> {
  const have = await run('ip', ['-6', 'addr', 'show', 'dev', 'lo'], { netns: nf.netns });
  if (/inet6 ::6\/128/.test(have.stdout)) return;
  if (!dryRun) await run('ip', ['-6', 'addr', 'add', '::6/128', 'dev', 'lo'], { netns: nf.netns });
  notes.push(`${dryRun ? 'would add' : 'added'} ::6/128 to lo (source of the proxy's IPv6 inbound upstream connections)`);
}

async function removeInboundSource6(nf: Netfilter, dryRun: boolean, notes: string[]): Promise<void> {
  const have = await run('ip', ['-6', 'addr', 'show', 'dev', 'lo'], { netns: nf.netns, reject: false });
  if (!/inet6 ::6\/128/.test(have.stdout)) return;
  if (!dryRun) await run('ip', ['-6', 'addr', 'del', '::6/128', 'dev', 'lo'], { netns: nf.netns });
  notes.push(`${dryRun ? 'would remove' : 'removed'} ::6/128 from lo`);
}

/**
 * iptables-nft creates a table on first use; a table in which we had rules and that is now empty
 * (no rules, built-in chains only, policy ACCEPT) goes, as it came, so iptables-save prints what
 * it printed before install. The legacy back end cannot remove a table once used: it stays, empty.
 */
async function dropEmptiedTables(nf: Netfilter, family: Family, hadOurs: readonly string[], notes: string[]): Promise<void> {
  if (nf.backend !== 'nft' || hadOurs.length === 0) return;
  const after = await saved(nf, family, []);
  for (const name of hadOurs) {
    const t = after.get(name);
    if (t && isPristine(t)) {
      await nf.restore(family, `*${name}\nCOMMIT\n`, { flush: true });
      notes.push(`removed the now empty ${name} table`);
    }
  }
}

/** Installs (or updates to) the plan; a second run with the same options changes nothing. */
export async function install(nf: Netfilter, o: InterceptOptions, opts: { dryRun?: boolean } = {}): Promise<FamilyReport[]> {
  return installPlans(nf, plan(o), opts);
}

export async function installPlans(nf: Netfilter, plans: readonly FamilyPlan[], opts: { dryRun?: boolean } = {}): Promise<FamilyReport[]> {
  const reports: FamilyReport[] = [];
  for (const p of plans) reports.push(await installFamily(nf, p, opts.dryRun === true));
  return reports;
}

/**
 * For programmatic callers (the lab, tests): `applyInterception(planInterception({ ipv6: true }),
 * { netns: 'pod' })`. Idempotent; the reports say per family what changed.
 */
export async function applyInterception(plans: readonly FamilyPlan[], target: Target & { dryRun?: boolean } = {}): Promise<FamilyReport[]> {
  return installPlans(await openNetfilter(target), plans, { dryRun: target.dryRun });
}

/** Removes every chain and rule of ours (IPv4 and IPv6) in the target namespace; nothing installed is not an error. */
export async function removeInterception(target: Target & { dryRun?: boolean } = {}): Promise<FamilyReport[]> {
  return uninstall(await openNetfilter(target), { dryRun: target.dryRun });
}

async function installFamily(nf: Netfilter, p: FamilyPlan, dryRun: boolean): Promise<FamilyReport> {
  const notes: string[] = [];
  if (!nf.has(p.family)) {
    throw new HalfcloseError('HC_ERR_MISSING_TOOL', `${BASE[p.family]}-save / ${BASE[p.family]}-restore are not installed (needed for ${NAME[p.family]})`);
  }
  const before = await saved(nf, p.family, notes);
  const script = installScript(before, p);
  if (p.family === 6) await ensureInboundSource6(nf, dryRun, notes);
  if (script === null) return { family: p.family, action: 'unchanged', script: null, notes };
  const action = tablesWithOurs(before).length > 0 ? 'updated' : 'installed';
  if (dryRun) return { family: p.family, action, script, notes };
  await applyScript(nf, p.family, script, before);
  // With other options, a table may be left with nothing in it (mangle without --drop-invalid).
  await dropEmptiedTables(nf, p.family, tablesWithOurs(before).filter((name) => !p.tables.some((t) => t.table === name)), notes);
  // Read back: the plan is written in iptables-save's own form, so the live tables must now match it.
  const after = await saved(nf, p.family, []);
  if (installScript(after, p) !== null) {
    notes.push(`warning: ${BASE[p.family]}-save prints the rules differently from the plan; they are in place, but a re-run will apply them again`);
  }
  return { family: p.family, action, script, notes };
}

/**
 * Removes exactly our chains and the rules pointing into them (or carrying our comment), both
 * families, leaving every other rule where it is. A table that only we used and that is now
 * empty is removed too on nf_tables, so iptables-save prints what it printed before install.
 */
export async function uninstall(nf: Netfilter, opts: { dryRun?: boolean } = {}): Promise<FamilyReport[]> {
  const reports: FamilyReport[] = [];
  for (const family of [4, 6] as Family[]) {
    const notes: string[] = [];
    if (!nf.has(family)) {
      if (family === 6) {
        reports.push({ family, action: 'skipped', script: null, notes: ['ip6tables is not installed'] });
        continue;
      }
      throw new HalfcloseError('HC_ERR_MISSING_TOOL', `${BASE[family]}-save / ${BASE[family]}-restore are not installed`);
    }
    const before = await saved(nf, family, notes);
    const script = uninstallScript(before);
    if (script === null) {
      reports.push({ family, action: 'absent', script: null, notes });
      continue;
    }
    const touched = tablesWithOurs(before);
    const { chains, rules } = countOurs(before);
    notes.push(`${chains} chains and ${rules} rules of ours in ${touched.join(', ')}`);
    if (!opts.dryRun) {
      await applyScript(nf, family, script, before);
      await dropEmptiedTables(nf, family, touched, notes);
    }
    if (family === 6) await removeInboundSource6(nf, opts.dryRun === true, notes);
    reports.push({ family, action: 'removed', script, notes });
  }
  return reports;
}

/** For messages: "IPv4", "IPv6". */
export function familyName(f: Family): string {
  return NAME[f];
}
