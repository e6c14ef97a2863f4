// The lab's terminal table (scenarios down, sidecars across, each cell a short verdict) and the
// one-line progress note printed as each cell finishes.

import type { LabResult } from './lab.js';
import type { CellResult, Outcome } from './scenarios.js';

const MARK: Record<Outcome, string> = { ok: ' ', leak: '!', lost: '!', slow: '~', failed: '!', skipped: '-', error: '?' };

export function formatTable(r: LabResult): string {
  const sidecars = r.sidecars.map((s) => s.name);
  const head = ['scenario', ...sidecars];
  const rows = r.scenarios.map((sc) => [
    sc.name,
    ...sidecars.map((sd) => {
      const c = r.cells.find((x) => x.scenario === sc.name && x.sidecar === sd);
      if (!c) return '';
      const v = c.outcome === 'skipped' ? 'skipped' : c.outcome === 'error' ? 'lab error' : c.verdict;
      return `${MARK[c.outcome]}${v}`;
    }),
  ]);
  const widths = head.map((h, i) => Math.max(h.length + (i > 0 ? 1 : 0), ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  const out = [line(head.map((h, i) => (i > 0 ? ` ${h}` : h))), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
  const notes = [
    `! leaked or lost   ~ slow   ? lab error   conntrack CLOSE_WAIT timeout ${r.closeWaitSec} s, ${r.kernel}, ${(r.durationMs / 1000).toFixed(0)} s`,
  ];
  for (const c of r.cells.filter((x) => x.outcome === 'error')) notes.push(`lab error in ${c.scenario}/${c.sidecar}: ${c.verdict.replace(/^lab error: /, '')}`);
  for (const s of r.sidecars.filter((x) => x.skipped)) notes.push(`${s.name} skipped: ${s.skipped}`);
  return `${out.join('\n')}\n\n${notes.join('\n')}\n`;
}

export function formatProgress(c: CellResult): string {
  return `lab: ${c.scenario.padEnd(12)} ${c.sidecar.padEnd(11)} ${c.verdict} (${(c.durationMs / 1000).toFixed(1)} s)`;
}
