// The lab's HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched)
// with the summary table on top and, per scenario and sidecar, a diagram of every step — the app,
// sidecar and service with each socket's TCP state, the conntrack entry with its state and seconds
// left, FINs and messages as arrows (the ones that never arrived drawn as lost) — and the raw
// `ss`/conntrack text each diagram was drawn from.

import type { LabResult } from './lab.js';
import type { SocketView, Snapshot } from './observe.js';
import type { Arrow, Box, CellResult, Outcome, Step } from './scenarios.js';

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const OUTCOME_CLASS: Record<Outcome, string> = { ok: 'ok', leak: 'bad', lost: 'bad', failed: 'bad', slow: 'warn', skipped: 'skip', error: 'skip' };

const W = 760;
const BOX_W = 226;
const BOX_X: Record<Box, number> = { app: 10, sidecar: 267, service: 524 };
const BOX_Y = 10;
const BOX_H = 140;

function stateColor(state: string | undefined): string {
  if (state === undefined) return '#9aa0a6';
  if (state === 'ESTAB') return '#1e8e3e';
  if (state === 'TIME-WAIT') return '#5f6368';
  return '#c26401';
}

function socketLines(label: string, s: SocketView | null, x: number, y: number): string {
  const state = s?.state ?? 'no socket';
  const out = [
    `<text x="${x}" y="${y}" class="sl">${esc(label)}</text>`,
    `<text x="${x}" y="${y + 15}" class="st" fill="${stateColor(s?.state)}">${esc(state)}</text>`,
  ];
  if (s) {
    out.push(`<text x="${x}" y="${y + 28}" class="sa">${esc(`${s.local} ↔ ${s.peer}`)}</text>`);
    const extra = [s.owner ?? (s.state === 'TIME-WAIT' ? '' : 'no process (orphan)'), s.timer ?? ''].filter(Boolean).join(' · ');
    if (extra) out.push(`<text x="${x}" y="${y + 40}" class="sa">${esc(extra)}</text>`);
  }
  return out.join('');
}

function box(name: Box, title: string, body: string, alert: boolean): string {
  const x = BOX_X[name];
  return `<rect x="${x}" y="${BOX_Y}" width="${BOX_W}" height="${BOX_H}" rx="8" class="box${alert ? ' alert' : ''}"/><text x="${x + 10}" y="${BOX_Y + 20}" class="bt">${esc(title)}</text>${body}`;
}

function arrow(a: Arrow, y: number): string {
  // Arrows run between box centres in a lane under the boxes; a lost one stops short in a cross.
  const x1 = BOX_X[a.from] + BOX_W / 2;
  const xt = BOX_X[a.to] + BOX_W / 2;
  const right = xt > x1;
  const x2 = a.lost ? x1 + (xt - x1) * 0.6 : xt;
  const head = a.lost
    ? `<path d="M${x2 - 6} ${y - 6} L${x2 + 6} ${y + 6} M${x2 - 6} ${y + 6} L${x2 + 6} ${y - 6}" class="x"/>`
    : `<path d="M${x2} ${y} l${right ? -10 : 10} -5 v10 z" class="ah"/>`;
  return `<circle cx="${x1}" cy="${y}" r="3" class="ah${a.lost ? ' lostc' : ''}"/><line x1="${x1}" y1="${y}" x2="${x2}" y2="${y}" class="ar${a.lost ? ' lost' : ''}"/>${head}<text x="${(x1 + x2) / 2}" y="${y - 5}" class="al${a.lost ? ' lostt' : ''}" text-anchor="middle">${esc(a.label)}${a.lost ? ' — lost' : ''}</text>`;
}

function entryBand(s: Snapshot, y: number): string {
  const e = s.entry;
  const x = BOX_X.app;
  const w = BOX_X.service + BOX_W - x;
  const text = e
    ? `conntrack (pod): ${e.state}, ${e.timeoutSec} s left · ${e.orig} · reply ${e.reply}`
    : 'conntrack (pod): no entry — a bare FIN from the app would be INVALID and not redirected';
  return `<rect x="${x}" y="${y}" width="${w}" height="24" rx="5" class="${e ? 'ct' : 'ct gone'}"/><text x="${x + 8}" y="${y + 16}" class="ctt">${esc(text)}</text>`;
}

function diagram(step: Step, index: number, leakedAtEnd: boolean): string {
  const s = step.snapshot;
  const arrowsTop = BOX_Y + BOX_H + 28;
  const h = arrowsTop + step.arrows.length * 26 + 40;
  const held = s.sidecarHeld;
  const parts = [
    box('app', 'app (pod, uid 0)', socketLines('to 10.77.0.2:7777', s.app, BOX_X.app + 10, BOX_Y + 42), false),
    box(
      'sidecar',
      `sidecar (pod, uid 1337) · holds ${held}`,
      socketLines('to the app', s.sidecarDown, BOX_X.sidecar + 10, BOX_Y + 38) + socketLines('to the service', s.sidecarUp, BOX_X.sidecar + 10, BOX_Y + 90),
      leakedAtEnd && held > 0,
    ),
    box('service', 'service (svc ns)', socketLines('to the sidecar', s.service, BOX_X.service + 10, BOX_Y + 42), false),
    ...step.arrows.map((a, i) => arrow(a, arrowsTop + i * 26)),
    entryBand(s, h - 32),
  ];
  return `<svg class="step-diagram" data-step="${index + 1}" viewBox="0 0 ${W} ${h}" width="${W}" height="${h}" role="img" aria-label="${esc(step.title)}">${parts.join('')}</svg>`;
}

function raw(s: Snapshot): string {
  const pod = s.raw.podSs.split('\n').filter((l) => l.trim() && !/^LISTEN/.test(l) && !/^\s/.test(l)).join('\n');
  return `<details><summary>kernel snapshot at ${(s.atMs / 1000).toFixed(1)} s: ss and conntrack</summary>
<p class="cmd"># ip netns exec POD ss -tanoeip (listeners and -i lines left out here)</p><pre>${esc(pod || '(no connected socket)')}</pre>
<p class="cmd"># ip netns exec SVC ss -tanoeip</p><pre>${esc(s.raw.svcSs.split('\n').filter((l) => l.trim() && !/^\s/.test(l)).join('\n'))}</pre>
<p class="cmd"># ip netns exec POD conntrack -L -o extended</p><pre>${esc(s.raw.conntrack.trim() || '(empty)')}</pre></details>`;
}

function cellSection(c: CellResult): string {
  const steps = c.steps
    .map((st, i) => {
      const last = i === c.steps.length - 1;
      return `<div class="step"><h4>${i + 1}. ${esc(st.title)} <span class="at">t=${(st.snapshot.atMs / 1000).toFixed(1)} s</span></h4>
${diagram(st, i, last && c.outcome === 'leak')}
${st.notes.length ? `<ul class="notes">${st.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : ''}
${raw(st.snapshot)}</div>`;
    })
    .join('\n');
  return `<section class="cell" id="${esc(`${c.scenario}--${c.sidecar}`)}">
<h3>${esc(c.scenario)} × ${esc(c.sidecar)} <span class="v ${OUTCOME_CLASS[c.outcome]}">${esc(c.verdict)}</span></h3>
${c.facts.length ? `<ul class="facts">${c.facts.map((f) => `<li>${esc(f)}</li>`).join('')}</ul>` : ''}
${steps}
</section>`;
}

function summaryTable(r: LabResult): string {
  const head = `<tr><th>scenario</th>${r.sidecars.map((s) => `<th>${esc(s.name)}</th>`).join('')}</tr>`;
  const rows = r.scenarios.map((sc) => {
    const cells = r.sidecars.map((sd) => {
      const c = r.cells.find((x) => x.scenario === sc.name && x.sidecar === sd.name);
      if (!c) return '<td></td>';
      return `<td class="${OUTCOME_CLASS[c.outcome]}"><a href="#${esc(`${c.scenario}--${c.sidecar}`)}">${esc(c.verdict)}</a></td>`;
    });
    return `<tr><th title="${esc(sc.summary)}">${esc(sc.name)}</th>${cells.join('')}</tr>`;
  });
  return `<table class="summary">${head}${rows.join('')}</table>`;
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#202124;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{margin-top:36px;border-bottom:1px solid #dadce0;padding-bottom:4px}
.meta{color:#5f6368}
table.summary{border-collapse:collapse;margin:16px 0}
table.summary th,table.summary td{border:1px solid #dadce0;padding:6px 10px;text-align:left}
table.summary td a{color:inherit;text-decoration:none}
td.ok{background:#e6f4ea}td.bad{background:#fce8e6;font-weight:600}td.warn{background:#fef7e0}td.skip{background:#f1f3f4;color:#5f6368}
.v{font-size:13px;padding:2px 8px;border-radius:10px;margin-left:8px}.v.ok{background:#e6f4ea}.v.bad{background:#fce8e6}.v.warn{background:#fef7e0}.v.skip{background:#f1f3f4}
.cell{border:1px solid #dadce0;border-radius:10px;padding:4px 16px 12px;margin:18px 0}
.step h4{margin:14px 0 4px;font-size:14px}.at{color:#5f6368;font-weight:400}
ul.facts,ul.notes{margin:4px 0 8px;padding-left:20px}ul.notes{color:#3c4043}
pre{background:#f8f9fa;border:1px solid #eee;padding:6px;overflow-x:auto;font-size:11px;margin:2px 0 6px}
p.cmd{margin:6px 0 0;font:11px monospace;color:#5f6368}
details summary{cursor:pointer;color:#1a73e8;font-size:12px}
svg .box{fill:#fff;stroke:#80868b;stroke-width:1.2}svg .box.alert{fill:#fce8e6;stroke:#d93025;stroke-width:2}
svg .bt{font:600 13px system-ui,sans-serif;fill:#202124}
svg .sl{font:11px system-ui,sans-serif;fill:#5f6368}svg .st{font:600 13px monospace}svg .sa{font:10px monospace;fill:#3c4043}
svg .ar{stroke:#1a73e8;stroke-width:2}svg .ar.lost{stroke:#d93025;stroke-dasharray:6 4}svg .ah{fill:#1a73e8}
svg .x{stroke:#d93025;stroke-width:3}svg .lostc{fill:#d93025}svg .al{font:12px system-ui,sans-serif;fill:#1a73e8}svg .al.lostt{fill:#d93025;font-weight:600}
svg .ct{fill:#e8f0fe;stroke:#8ab4f8}svg .ct.gone{fill:#fce8e6;stroke:#f28b82}svg .ctt{font:10px monospace;fill:#202124}
`;

/** The whole report as one HTML string. */
export function renderReport(r: LabResult): string {
  const sections = r.scenarios
    .map((sc) => {
      const cells = r.cells.filter((c) => c.scenario === sc.name && c.outcome !== 'skipped');
      return `<h2 id="${esc(sc.name)}">${esc(sc.name)}</h2><p>${esc(sc.summary)}.</p>${cells.map(cellSection).join('\n')}`;
    })
    .join('\n');
  const sidecars = r.sidecars
    .map((s) => {
      const how = s.commandLine
        ? `<details><summary>command line${s.config ? ' and generated config' : ''}</summary><pre>${esc(s.commandLine)}</pre>${s.config ? `<pre>${esc(s.config)}</pre>` : ''}</details>`
        : '';
      return `<li><b>${esc(s.name)}</b>: ${esc(s.summary)}; frees a half-closed connection on: ${esc(s.release)}${s.skipped ? ` — <i>skipped: ${esc(s.skipped)}</i>` : ''}${how}</li>`;
    })
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>halfclose lab report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${CSS}</style></head>
<body>
<h1>halfclose lab</h1>
<p class="meta">${esc(r.kernel)} · pod conntrack CLOSE_WAIT timeout ${r.closeWaitSec} s · ${esc(r.startedAt)} · ${(r.durationMs / 1000).toFixed(0)} s.
Every cell is measured during the run: <code>ss -tanoeip</code> and <code>conntrack -L</code> in the pod and service namespaces, and what the app and the service received.</p>
${summaryTable(r)}
<p class="meta">Each sidecar runs in its own pod namespace (app + sidecar, outbound TCP redirected to 127.0.0.1:15001 by the Istio-layout rules of <code>halfclose iptables</code>, the sidecar as uid 1337) joined by a veth pair to a service namespace (10.77.0.2:7777). Click a cell for its steps.</p>
<ul>${sidecars}</ul>
${sections}
</body></html>
`;
}
