// The lab's scenarios: each drives the app and the service through one version of the half-close
// story of DESIGN.md §1, records a kernel snapshot after every step, and turns what the kernel and
// the endpoints showed into a verdict. Nothing here assumes how a sidecar behaves.

import { run } from '../kernel/run.js';
import type { PodTopology } from '../kernel/topology.js';
import { HalfcloseError } from '../errors.js';
import type { Agent } from './agents.js';
import { countHeld, snapshot, type ConnPorts, type Snapshot } from './observe.js';
import { SERVICE_PORT, type RunningSidecar, type SidecarName } from './sidecars.js';

export const SCENARIO_NAMES = ['seed', 'late-message', 'port-reuse', 'entry-lost', 'control'] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

export const SCENARIO_SUMMARIES: Record<ScenarioName, string> = {
  seed: 'the service closes first; the app idles past the conntrack CLOSE_WAIT timeout, then closes with a bare FIN',
  'late-message': 'as seed, but the app sends a message before its FIN',
  'port-reuse': 'after seed, the app connects again from the same source port',
  'entry-lost': 'the conntrack table is flushed during the half-close',
  control: 'the service closes, the app closes right away',
};

export type Box = 'app' | 'sidecar' | 'service';

/** A packet or message the diagram draws between boxes; `lost` when it never reached `to`. */
export interface Arrow {
  from: Box;
  to: Box;
  label: string;
  lost?: boolean;
}

export interface Step {
  title: string;
  arrows: Arrow[];
  /** What was measured at this step, in words. */
  notes: string[];
  snapshot: Snapshot;
}

/**
 * ok: nothing leaked, nothing lost. leak: the sidecar still holds sockets. lost: data the app sent
 * never reached the service. slow/failed: the reconnect. error: the lab itself could not run the cell.
 */
export type Outcome = 'ok' | 'leak' | 'lost' | 'slow' | 'failed' | 'skipped' | 'error';

export interface CellResult {
  scenario: ScenarioName;
  sidecar: SidecarName;
  outcome: Outcome;
  /** Short verdict for the table: `leaked 2 sockets`, `message lost`, `ok`. */
  verdict: string;
  /** Measured facts, each also in `facts` as a sentence. */
  leakedSockets?: number;
  heldForMs?: number;
  messageDelivered?: boolean;
  connectMs?: number;
  connectError?: string;
  freedAfterMs?: number;
  entryGoneAfterMs?: number | null;
  facts: string[];
  steps: Step[];
  durationMs: number;
}

/** What a scenario runs against: one topology, its endpoints and a fresh sidecar. */
export interface Bench {
  topo: PodTopology;
  app: Agent;
  service: Agent;
  sidecar: RunningSidecar;
  closeWaitSec: number;
  /** Next app connection id (unique within the bench). */
  nextConn: number;
}

interface Conn {
  id: number;
  svcId: number;
  ports: ConnPorts;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const POLL_MS = 300;

class Recorder {
  readonly steps: Step[] = [];
  readonly facts: string[] = [];
  readonly t0 = Date.now();
  constructor(readonly b: Bench) {}
  async step(title: string, conn: Conn | null, arrows: Arrow[], notes: string[] = []): Promise<Snapshot> {
    const snap = await snapshot(this.b.topo, conn?.ports ?? null, this.t0);
    this.steps.push({ title, arrows, notes, snapshot: snap });
    return snap;
  }
}

/** The app connects to the service (redirected to the sidecar) and says hello; the service hears it. */
async function open(b: Bench, rec: Recorder, opts: { localPort?: number } = {}): Promise<Conn> {
  const id = b.nextConn++;
  const svcFrom = b.service.events.length;
  b.app.connect(id, b.topo.svcIp, SERVICE_PORT, { ...opts, timeoutMs: 5000 });
  const ev = await b.app.expect((e) => (e.ev === 'connected' || e.ev === 'connect-failed') && e.conn === id, 10_000, `connection ${id}`);
  if (ev.ev === 'connect-failed') throw new HalfcloseError('HC_ERR_LAB', `the app could not connect through ${b.sidecar.spec.name}: ${ev.code}`);
  const acc = await b.service.expect((e) => e.ev === 'accepted' && b.service.events.indexOf(e) >= svcFrom, 10_000, 'accept');
  const conn: Conn = { id, svcId: acc.conn!, ports: { app: Number(String(ev.local).split(':').pop()), upstream: Number(String(acc.remote).split(':').pop()) } };
  b.app.command({ op: 'send', conn: id, data: 'hello' });
  await b.service.expect(() => b.service.received(conn.svcId).includes('hello'), 10_000, 'the hello through the sidecar');
  await rec.step(`app connects to ${b.topo.svcIp}:${SERVICE_PORT}; REDIRECT sends it to the sidecar`, conn, [
    { from: 'app', to: 'sidecar', label: 'SYN, "hello"' },
    { from: 'sidecar', to: 'service', label: 'SYN, "hello"' },
  ]);
  return conn;
}

/** The service closes its side; did the sidecar pass the FIN on to the app? */
async function serviceCloses(b: Bench, rec: Recorder, conn: Conn): Promise<boolean> {
  b.service.command({ op: 'end', conn: conn.svcId });
  const eof = (await b.app.waitFor((e) => e.ev === 'eof' && e.conn === conn.id, 5000)) !== null;
  await sleep(200); // let the last ACKs settle so the snapshot shows the half-closed states
  await rec.step('the service closes first (FIN); the sidecar half-closes towards the app', conn, [
    { from: 'service', to: 'sidecar', label: 'FIN' },
    { from: 'sidecar', to: 'app', label: 'FIN', lost: !eof },
  ], eof ? [] : ['the app never saw the FIN']);
  return eof;
}

/**
 * The app idles past the conntrack CLOSE_WAIT timeout (plus 2 s). Returns when the entry vanished,
 * in ms after the half-close, or null when it was still there at the end (refreshed by keepalive).
 */
async function idlePastCloseWait(b: Bench, rec: Recorder, conn: Conn): Promise<number | null> {
  const start = Date.now();
  const until = start + b.closeWaitSec * 1000 + 2000;
  let goneAt: number | null = null;
  while (Date.now() < until) {
    await sleep(POLL_MS);
    const s = await snapshot(b.topo, conn.ports, rec.t0);
    if (s.entry === null && goneAt === null) goneAt = Date.now() - start;
    if (s.entry !== null) goneAt = null;
  }
  const note =
    goneAt === null
      ? `the conntrack entry is still there after ${secs(Date.now() - start)} (refreshed by traffic on the half-closed sockets)`
      : `the conntrack entry expired ${secs(goneAt)} after the half-close`;
  rec.facts.push(note);
  await rec.step(`nothing flows for ${b.closeWaitSec + 2} s, past the conntrack CLOSE_WAIT timeout (${b.closeWaitSec} s)`, conn, [], [note]);
  return goneAt;
}

/** Waits until the sidecar holds no socket or `ms` passed; returns ms until it held none, or null. */
async function watchRelease(b: Bench, ms: number, extra: () => boolean = () => true): Promise<number | null> {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if ((await countHeld(b.topo)) === 0 && extra()) return Date.now() - start;
    await sleep(POLL_MS);
  }
  return (await countHeld(b.topo)) === 0 ? Date.now() - start : null;
}

function windowMs(b: Bench): number {
  return Math.max(3000, b.closeWaitSec * 1000);
}

/** The app closes (after an optional late message); measures what reached the service and what the sidecar still holds. */
async function appCloses(b: Bench, rec: Recorder, conn: Conn, late: string | null): Promise<{ held: number; heldForMs: number; delivered: boolean | null }> {
  // The previous step's snapshot is the state just before: did a sidecar process still hold its
  // socket towards the app (haproxy-fin and socat have closed theirs by now)?
  const wasOpen = rec.steps.at(-1)?.snapshot.sidecarDown?.owner !== undefined;
  const svcFrom = b.service.events.length;
  if (late !== null) b.app.command({ op: 'send', conn: conn.id, data: late });
  b.app.command({ op: 'end', conn: conn.id });
  const started = Date.now();
  const serviceEof = (): boolean => b.service.has((e) => (e.ev === 'eof' || e.ev === 'close') && e.conn === conn.svcId);
  const delivered = (): boolean => late === null || b.service.received(conn.svcId).includes(late);
  await watchRelease(b, windowMs(b), () => serviceEof() || !delivered());
  if (late !== null && !delivered()) await b.service.waitFor(() => delivered(), 500);
  const heldForMs = Date.now() - started;
  const snap = await snapshot(b.topo, conn.ports, rec.t0);
  // The app's FIN reached the sidecar if its socket towards the app left FIN-WAIT-2.
  const fin = wasOpen && (snap.sidecarDown === null || snap.sidecarDown.state !== 'FIN-WAIT-2');
  const finForwarded = b.service.events.slice(svcFrom).some((e) => e.ev === 'eof' && e.conn === conn.svcId);
  const got = late === null ? null : delivered();
  const arrows: Arrow[] = [];
  if (late !== null) arrows.push({ from: 'app', to: 'sidecar', label: `"${late}"`, lost: !got });
  arrows.push({ from: 'app', to: 'sidecar', label: wasOpen ? 'FIN' : 'FIN (the sidecar had closed)', lost: !fin });
  if (late !== null && got) arrows.push({ from: 'sidecar', to: 'service', label: `"${late}"` });
  if (finForwarded) arrows.push({ from: 'sidecar', to: 'service', label: 'FIN' });
  const notes = [
    snap.sidecarHeld > 0 ? `the sidecar still holds ${snap.sidecarHeld} sockets ${secs(heldForMs)} after the app's FIN` : 'the sidecar holds no socket',
    ...(late === null ? [] : [got ? 'the service received the late message' : 'the service never received the late message']),
    ...(fin
      ? []
      : [wasOpen ? "the app's FIN never reached the sidecar (no conntrack entry to un-NAT it)" : 'the sidecar had already closed its side: nothing was left to receive the app\'s data and FIN']),
  ];
  const title = late === null ? 'the app closes: a bare FIN' : `the app sends "${late}", then its FIN`;
  rec.steps.push({ title, arrows, notes, snapshot: snap });
  rec.facts.push(...notes);
  return { held: snap.sidecarHeld, heldForMs, delivered: got };
}

/** The pod namespace's TcpExt TCPChallengeACK counter: a SYN that meets a synchronized socket. */
async function challengeAcks(topo: PodTopology): Promise<number> {
  const text = (await run('cat', ['/proc/net/netstat'], { netns: topo.pod })).stdout.split('\n');
  for (let i = 0; i + 1 < text.length; i += 2) {
    const keys = text[i]!.split(/\s+/);
    const vals = text[i + 1]!.split(/\s+/);
    const k = keys.indexOf('TCPChallengeACK');
    if (keys[0] === 'TcpExt:' && k > 0) return Number(vals[k]);
  }
  return 0;
}

type Run = (b: Bench, rec: Recorder) => Promise<Omit<CellResult, 'scenario' | 'sidecar' | 'facts' | 'steps' | 'durationMs'>>;

function leakVerdict(held: number, heldForMs: number): Pick<CellResult, 'outcome' | 'verdict' | 'leakedSockets' | 'heldForMs'> {
  if (held === 0) return { outcome: 'ok', verdict: 'ok', leakedSockets: 0 };
  return { outcome: 'leak', verdict: `leaked ${held} sockets`, leakedSockets: held, heldForMs };
}

async function seedPart(b: Bench, rec: Recorder, late: string | null): Promise<{ conn: Conn; held: number; heldForMs: number; delivered: boolean | null; entryGone: number | null }> {
  const conn = await open(b, rec);
  await serviceCloses(b, rec, conn);
  const entryGone = await idlePastCloseWait(b, rec, conn);
  const r = await appCloses(b, rec, conn, late);
  return { conn, ...r, entryGone };
}

const RUNS: Record<ScenarioName, Run> = {
  async seed(b, rec) {
    const r = await seedPart(b, rec, null);
    if (r.held > 0) rec.facts.push(`expected release: ${b.sidecar.spec.release}`);
    return { ...leakVerdict(r.held, r.heldForMs), entryGoneAfterMs: r.entryGone };
  },
  async 'late-message'(b, rec) {
    const r = await seedPart(b, rec, 'late');
    const leak = leakVerdict(r.held, r.heldForMs);
    if (!r.delivered) return { ...leak, outcome: 'lost', verdict: r.held > 0 ? `message lost, ${leak.verdict}` : 'message lost', messageDelivered: false, entryGoneAfterMs: r.entryGone };
    return { ...leak, messageDelivered: true, entryGoneAfterMs: r.entryGone };
  },
  async 'port-reuse'(b, rec) {
    const r = await seedPart(b, rec, null);
    const id = b.nextConn++;
    const acks0 = await challengeAcks(b.topo);
    b.app.connect(id, b.topo.svcIp, SERVICE_PORT, { localPort: r.conn.ports.app, timeoutMs: 5000 });
    const ev = await b.app.expect((e) => (e.ev === 'connected' || e.ev === 'connect-failed') && e.conn === id, 10_000, 'the reconnect');
    const ms = ev.ms ?? 0;
    const failed = ev.ev === 'connect-failed';
    const note = failed ? `connect from port ${r.conn.ports.app} failed after ${ms} ms (${ev.code})` : `connect from port ${r.conn.ports.app} took ${ms} ms`;
    const acks = (await challengeAcks(b.topo)) - acks0;
    rec.facts.push(`before the reconnect the sidecar held ${r.held} sockets`, note);
    if (acks > 0) rec.facts.push(`the SYN met a stale socket: the pod sent ${acks} challenge ACK${acks > 1 ? 's' : ''} (TcpExt TCPChallengeACK)`);
    await rec.step(`the app connects again from the same port ${r.conn.ports.app}`, { id, svcId: -1, ports: { app: r.conn.ports.app } }, [
      { from: 'app', to: 'sidecar', label: failed ? `SYN (${ev.code})` : `SYN, connected in ${ms} ms`, lost: failed },
    ], [note]);
    if (failed) return { outcome: 'failed', verdict: `connect failed (${ev.code})`, connectMs: ms, connectError: String(ev.code), leakedSockets: r.held };
    if (ms >= 500) return { outcome: 'slow', verdict: `connect took ${secs(ms)}`, connectMs: ms, leakedSockets: r.held };
    // On kernels whose conntrack accepts the app's RST to the challenge ACK, the stale socket is
    // reset and the connect still succeeds quickly; the counter says whether that happened.
    return { outcome: 'ok', verdict: acks > 0 ? `ok (${ms} ms, challenge ACK)` : `ok (${ms} ms)`, connectMs: ms, leakedSockets: r.held };
  },
  async 'entry-lost'(b, rec) {
    const conn = await open(b, rec);
    await serviceCloses(b, rec, conn);
    await run('conntrack', ['-F'], { netns: b.topo.pod, reject: false });
    await rec.step('the pod\'s conntrack table is flushed during the half-close', conn, [], ['conntrack -F']);
    const freed = await watchRelease(b, b.closeWaitSec * 2000 + 2000);
    const probeNote = freed === null ? 'the sidecar still holds its sockets' : `the sidecar released its sockets ${secs(freed)} after the flush`;
    rec.facts.push(probeNote);
    // halfclose's access log names why it closed; a keepalive-dead close means a probe went out
    // un-NATed, met no socket at the app's address and came back as an RST.
    const probed = /"reason":"keepalive-dead"/.test(b.sidecar.output());
    const arrows: Arrow[] =
      freed === null
        ? []
        : probed
          ? [
              { from: 'sidecar', to: 'app', label: 'keepalive probe (no entry: not un-NATed)' },
              { from: 'app', to: 'sidecar', label: 'RST (no such socket)' },
            ]
          : [{ from: 'sidecar', to: 'app', label: 'closes on its own timer' }];
    const idleTitle = freed === null ? `the app idles ${b.closeWaitSec * 2 + 2} s; the sidecar keeps its sockets` : `the app idles; the sidecar lets go of its sockets ${secs(freed)} after the flush`;
    await rec.step(idleTitle, conn, arrows, [probeNote, ...(probed ? ['closed by the sidecar: keepalive-dead'] : [])]);
    const r = await appCloses(b, rec, conn, null);
    if (r.held > 0) {
      rec.facts.push(`expected release: ${b.sidecar.spec.release}`);
      return { ...leakVerdict(r.held, r.heldForMs), freedAfterMs: undefined };
    }
    if (freed === null) return { outcome: 'ok', verdict: 'freed after the app closed', leakedSockets: 0 };
    return { outcome: 'ok', verdict: `freed after ${secs(freed)}`, leakedSockets: 0, freedAfterMs: freed };
  },
  async control(b, rec) {
    const conn = await open(b, rec);
    b.app.command({ op: 'reply-on-eof', conn: conn.id, data: 'bye' });
    b.service.command({ op: 'end', conn: conn.svcId });
    const replied = (await b.app.waitFor((e) => e.ev === 'replied' && e.conn === conn.id, 5000)) !== null;
    const started = Date.now();
    const serviceEof = (): boolean => b.service.has((e) => (e.ev === 'eof' || e.ev === 'close') && e.conn === conn.svcId);
    const delivered = (): boolean => b.service.received(conn.svcId).includes('bye');
    await watchRelease(b, windowMs(b), () => serviceEof() || !delivered());
    if (!delivered()) await b.service.waitFor(() => delivered(), 500);
    const heldForMs = Date.now() - started;
    const snap = await snapshot(b.topo, conn.ports, rec.t0);
    const got = delivered();
    const notes = [
      replied ? 'the app answered "bye" and closed as soon as it saw the FIN' : 'the app never saw the service\'s FIN',
      snap.sidecarHeld > 0 ? `the sidecar still holds ${snap.sidecarHeld} sockets ${secs(heldForMs)} later` : 'the sidecar holds no socket',
      got ? 'the service received "bye"' : 'the service never received "bye"',
    ];
    rec.steps.push({
      title: 'the service closes (FIN); the app answers "bye" and closes at once',
      arrows: [
        { from: 'service', to: 'sidecar', label: 'FIN' },
        { from: 'sidecar', to: 'app', label: 'FIN', lost: !replied },
        { from: 'app', to: 'sidecar', label: '"bye", FIN' },
        { from: 'sidecar', to: 'service', label: '"bye"', lost: !got },
        ...(serviceEof() ? [{ from: 'sidecar' as const, to: 'service' as const, label: 'FIN' }] : []),
      ],
      notes,
      snapshot: snap,
    });
    rec.facts.push(...notes);
    const leak = leakVerdict(snap.sidecarHeld, heldForMs);
    if (!got) return { ...leak, outcome: 'lost', verdict: 'message lost', messageDelivered: false };
    return { ...leak, messageDelivered: true };
  },
};

/** Runs one scenario on a bench whose sidecar was just started; never throws (errors become a cell). */
export async function runScenario(name: ScenarioName, b: Bench): Promise<CellResult> {
  const rec = new Recorder(b);
  const base = { scenario: name, sidecar: b.sidecar.spec.name };
  try {
    const r = await RUNS[name](b, rec);
    return { ...base, ...r, facts: rec.facts, steps: rec.steps, durationMs: Date.now() - rec.t0 };
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    return { ...base, outcome: 'error', verdict: `lab error: ${msg}`, facts: [...rec.facts, msg], steps: rec.steps, durationMs: Date.now() - rec.t0 };
  }
}
