// The live admin page served at GET /: one self-contained HTML document (inline CSS and script,
// no build step, no external requests) that polls /stats and /connections once a second.

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>halfclose admin</title>
<style>
  :root {
    --bg: #f6f7f9; --card: #fff; --ink: #1d2430; --dim: #6b7380; --line: #e2e5ea;
    --ok: #1f7a4d; --warn: #b35c00; --bad: #b3261e; --hc: #fff4dc; --hc-edge: #e89a1c; --accent: #2856b6;
  }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--ink); }
  header { display: flex; align-items: center; gap: 16px; padding: 12px 20px; background: #1d2430; color: #fff; }
  header h1 { font-size: 17px; margin: 0; font-weight: 600; letter-spacing: .2px; }
  header .listeners { color: #c9d1dc; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
  header .spacer { flex: 1; }
  header .updated { color: #c9d1dc; font-size: 12.5px; }
  .pill { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 12px; font-weight: 600; }
  .pill.ready { background: #d8f3e4; color: var(--ok); }
  .pill.draining { background: #ffe7c2; color: var(--warn); }
  .pill.down { background: #fbd9d6; color: var(--bad); }
  main { padding: 16px 20px 28px; display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .6px; color: var(--dim); margin: 0 0 8px; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 4px 8px 4px 0; vertical-align: top; }
  th { font-size: 12px; color: var(--dim); font-weight: 600; border-bottom: 1px solid var(--line); }
  .kv td:first-child { color: var(--dim); width: 50%; }
  #guard td:first-child { width: 37%; }
  .kv td + td { overflow-wrap: anywhere; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
  .mono.small { font-size: 11px; }
  .zero { color: #b3b9c2; }
  .big { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
  .states { display: grid; grid-template-columns: repeat(5, 1fr); gap: 8px; }
  .states div { text-align: center; }
  .states .label { font-size: 11.5px; color: var(--dim); }
  .states .hc .big { color: var(--warn); }
  .states .big.zero { color: #b3b9c2; }
  .reasons { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 2px 28px; }
  .reasons div { display: flex; justify-content: space-between; padding: 3px 0; border-bottom: 1px solid var(--line); }
  #conns tbody tr { border-top: 1px solid var(--line); }
  #conns tbody tr.half-closed { background: var(--hc); box-shadow: inset 4px 0 0 var(--hc-edge); }
  #conns tbody tr.half-closed td:first-child { padding-left: 10px; }
  #conns td:first-child, #conns th:first-child { padding-left: 10px; }
  .st { display: inline-block; padding: 0 7px; border-radius: 4px; font-size: 12px; font-weight: 600; white-space: nowrap; }
  .st-open { background: #e3edff; color: var(--accent); }
  .st-fin-received, .st-fin-forwarded { background: #ffe7c2; color: var(--warn); }
  .st-reset { background: #fbd9d6; color: var(--bad); }
  .st-half-closed-client, .st-half-closed-server { background: var(--hc-edge); color: #fff; }
  .st-closing, .st-connecting { background: #eceef2; color: var(--dim); }
  .bytes { color: var(--dim); font-size: 12px; margin-left: 6px; }
  .warnings { color: var(--warn); margin: 6px 0 0; padding-left: 18px; }
  .empty { color: var(--dim); padding: 10px; }
  .toolbar { display: flex; gap: 14px; align-items: center; margin-bottom: 6px; }
  .toolbar h2 { margin: 0; }
  .toolbar label { font-size: 12.5px; color: var(--dim); }
  body.down main { opacity: .55; }
</style>
</head>
<body>
<header>
  <h1>halfclose</h1>
  <span id="status" class="pill">loading</span>
  <span id="listeners" class="listeners"></span>
  <span class="spacer"></span>
  <span id="updated" class="updated"></span>
</header>
<main>
  <section>
    <h2>Active connections</h2>
    <div class="states" id="active"></div>
  </section>
  <section>
    <h2>Traffic</h2>
    <table class="kv"><tbody id="traffic"></tbody></table>
  </section>
  <section>
    <h2>Conntrack guard</h2>
    <table class="kv"><tbody id="guard"></tbody></table>
    <ul id="guard-warnings" class="warnings"></ul>
  </section>
  <section class="wide">
    <div class="toolbar">
      <h2>Live connections <span id="conn-count"></span></h2>
      <label><input type="checkbox" id="only-hc"> half-closed only</label>
    </div>
    <table id="conns">
      <thead><tr>
        <th>#</th><th>listener</th><th>client</th><th>destination</th><th>state</th>
        <th>client &rarr; server</th><th>server &rarr; client</th>
        <th class="num">age</th><th class="num">half-closed for</th><th class="num">idle</th><th>keepalive</th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <div id="no-conns" class="empty" hidden>No live connections.</div>
  </section>
  <section class="wide">
    <h2>Closed, by reason</h2>
    <div class="reasons" id="reasons"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const STATES = [["open", "open"], ["half-closed-client", "half-closed by client"], ["half-closed-server", "half-closed by server"], ["closing", "closing"], ["connecting", "connecting"]];

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v; else if (k === "data") Object.assign(e.dataset, v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function dur(ms) {
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  if (h < 1) return m + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
  return h + " h " + String(m % 60).padStart(2, "0") + " m";
}
function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}
function addr(e) { return e ? (e.host.includes(":") ? "[" + e.host + "]" : e.host) + ":" + e.port : "\\u2014"; }
function badge(state) { return el("span", { class: "st st-" + state }, state); }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function kv(k, v, cls) { return el("tr", {}, el("td", {}, k), el("td", { class: cls || "" }, v)); }

function renderStats(s) {
  document.body.classList.remove("down");
  $("status").textContent = s.draining ? "draining" : "ready";
  $("status").className = "pill " + (s.draining ? "draining" : "ready");
  $("listeners").textContent = s.listeners.map((l) => l.name + " " + l.address).join("   ");
  $("updated").textContent = "updated " + new Date(s.time).toLocaleTimeString();
  $("active").replaceChildren(...STATES.map(([k, label]) => {
    const n = s.activeByState[k] || 0;
    return el("div", { class: k.startsWith("half-closed") ? "hc" : "", data: { state: k } }, el("div", { class: "big" + (n ? "" : " zero") }, n), el("div", { class: "label" }, label));
  }));
  const accepted = Object.values(s.acceptedByListener).reduce((a, b) => a + b, 0);
  const hc = s.halfCloseDurations;
  fill($("traffic"), [
    kv("accepted", accepted, "num"),
    kv("bytes client \\u2192 server", bytes(s.bytesByDirection["client-to-server"] || 0), "num"),
    kv("bytes server \\u2192 client", bytes(s.bytesByDirection["server-to-client"] || 0), "num"),
    kv("half-closed, then closed", hc.count, "num"),
    kv("mean time half-closed", hc.count ? dur(Math.round(hc.sumSeconds / hc.count * 1000)) : "\\u2014", "num"),
    kv("uptime", dur(Date.parse(s.time) - Date.parse(s.startedAt)), "num"),
  ]);
  const g = s.guard;
  const ka = (k) => k ? "idle " + k.idleSec + " s, every " + k.intervalSec + " s, " + k.count + " probes" : "off";
  fill($("guard"), g ? [
    kv("mode", g.mode, "mono"),
    kv("conntrack CLOSE_WAIT", g.closeWaitSec === null ? "unknown" : g.closeWaitSec + " s"),
    kv("read from", g.source === "sysctl" ? "nf_conntrack_tcp_timeout_close_wait" : g.source === "default" ? "kernel default (conntrack not loaded)" : g.source, g.source === "sysctl" ? "mono small" : ""),
    kv("keepalive when half-closed", ka(g.halfClosed)),
    kv("keepalive when established", ka(g.established)),
    kv("TCP_USER_TIMEOUT", g.userTimeoutMs ? dur(g.userTimeoutMs) : "kernel default"),
  ] : [kv("status", "not running")]);
  $("guard-warnings").replaceChildren(...(g ? g.warnings : []).map((w) => el("li", {}, w)));
  const reasons = Object.entries(s.closedByReason).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  fill($("reasons"), reasons.map(([r, n]) => el("div", { class: n ? "" : "zero", data: { reason: r } }, el("span", { class: "mono" }, r), el("span", { class: "num" }, n))));
}

function renderConnections(data) {
  $("conn-count").textContent = "(" + data.count + ")";
  const rows = data.connections.map((c) => {
    const half = c.state === "half-closed-client" || c.state === "half-closed-server";
    const dir = (d, col) => el("td", { data: { col } }, badge(d.state), el("span", { class: "bytes" }, bytes(d.bytes)));
    return el("tr", { class: half ? "half-closed" : "", data: { id: c.id, state: c.state } },
      el("td", { class: "mono" }, c.id),
      el("td", {}, c.listener),
      el("td", { class: "mono" }, addr(c.client)),
      el("td", { class: "mono" }, addr(c.originalDst || c.target)),
      el("td", { data: { col: "state" } }, badge(c.state)),
      dir(c.clientToServer, "c2s"),
      dir(c.serverToClient, "s2c"),
      el("td", { class: "num" }, dur(c.ageMs)),
      el("td", { class: "num", data: { col: "half-closed-for" } }, c.halfClosedMs ? dur(c.halfClosedMs) : "\\u2014"),
      el("td", { class: "num" }, dur(c.idleMs)),
      el("td", { class: "mono" }, c.keepalive || "\\u2014"));
  });
  fill(document.querySelector("#conns tbody"), rows);
  $("no-conns").hidden = rows.length > 0;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

let timer = 0;
async function tick() {
  try {
    const [stats, conns] = await Promise.all([getJSON("stats"), getJSON("connections" + ($("only-hc").checked ? "?state=half-closed" : ""))]);
    renderStats(stats);
    renderConnections(conns);
  } catch (err) {
    document.body.classList.add("down");
    $("status").textContent = "unreachable";
    $("status").className = "pill down";
  } finally {
    // Whichever refresh finishes last owns the single pending timer.
    clearTimeout(timer);
    timer = setTimeout(tick, 1000);
  }
}
$("only-hc").addEventListener("change", tick);
tick();
</script>
</body>
</html>
`;
