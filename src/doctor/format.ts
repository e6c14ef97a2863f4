// `halfclose doctor`'s text output: the settings read, the findings with what to change, and the
// verdict last, where a reader's eye lands.

import { KERNEL_SETTINGS } from '../kernel/conntrack-settings.js';
import type { DoctorReport, FindingLevel } from './assess.js';

const TAG: Record<FindingLevel, string> = { leak: 'LEAK', warn: 'WARN', ok: 'OK  ', info: 'INFO' };

export function formatReport(r: DoctorReport): string {
  const out: string[] = [];
  out.push(`halfclose doctor: ${r.netns === null ? "this process's network namespace" : `network namespace ${r.netns}`}`);
  out.push(`proxy judged: ${r.target.description}`);
  out.push('');
  out.push('kernel settings:');
  const width = Math.max(...KERNEL_SETTINGS.map((n) => n.length));
  for (const name of KERNEL_SETTINGS) {
    const v = r.settings[name];
    out.push(`  ${name.padEnd(width)}  ${v === null ? '(absent)' : String(v)}`);
  }
  out.push('');
  out.push('findings:');
  for (const f of r.findings) {
    out.push(`  ${TAG[f.level]}  ${f.message}`);
    if (f.fix) out.push(`        fix: ${f.fix}`);
  }
  out.push('');
  out.push(`verdict: ${r.verdict}`);
  return out.join('\n') + '\n';
}
