// The lab's HTML report (placeholder until the step diagrams land): the summary table as a page.

import type { LabResult } from './lab.js';
import { formatTable } from './table.js';

const esc = (s: string): string => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

export function renderReport(r: LabResult): string {
  return `<!doctype html><meta charset="utf-8"><title>halfclose lab</title><pre>${esc(formatTable(r))}</pre>\n`;
}
