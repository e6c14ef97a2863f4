// The lab's two endpoints: a tiny node program for the application (in the pod) and one for the
// service (in the service namespace), driven line by line over stdin/stdout, so a scenario decides
// exactly when each side sends, half-closes or closes, and records what each side really received.

import type { ChildProcess } from 'node:child_process';
import type { PodTopology } from '../kernel/topology.js';
import { HalfcloseError } from '../errors.js';

/**
 * One source for both roles (argv: `app` or `service PORT`). Commands arrive as JSON lines on stdin,
 * events leave as JSON lines on stdout, each with `t` (ms since start) and the connection number.
 * Sockets allow half-open: an EOF never makes node close its own side, the scenario does.
 */
const AGENT_SOURCE = String.raw`
import net from 'node:net';
import readline from 'node:readline';
const t0 = Date.now();
const emit = (o) => process.stdout.write(JSON.stringify({ t: Date.now() - t0, ...o }) + '\n');
const conns = new Map();
const replyOnEof = new Map();
let next = 0;
function track(s, id) {
  conns.set(id, s);
  s.on('data', (d) => emit({ ev: 'data', conn: id, data: d.toString('utf8') }));
  s.on('end', () => {
    emit({ ev: 'eof', conn: id });
    // Answer and close in the same tick as the EOF: a prompt close, with no round trip to the lab.
    if (replyOnEof.has(id)) { s.write(replyOnEof.get(id)); s.end(); emit({ ev: 'replied', conn: id }); }
  });
  s.on('error', (e) => emit({ ev: 'error', conn: id, code: e.code ?? String(e.message) }));
  s.on('close', (hadError) => { emit({ ev: 'close', conn: id, hadError }); conns.delete(id); });
}
const [, role, portArg] = process.argv;
if (role === 'service') {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    const id = ++next;
    emit({ ev: 'accepted', conn: id, remote: s.remoteAddress + ':' + s.remotePort });
    track(s, id);
  });
  server.listen(Number(portArg), '0.0.0.0', () => emit({ ev: 'listening', port: server.address().port }));
}
const pick = (c) => conns.get(c.conn ?? Math.max(0, ...conns.keys()));
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const c = JSON.parse(line);
  if (c.op === 'connect') {
    const id = c.id ?? ++next;
    const started = Date.now();
    const s = net.connect({ host: c.host, port: c.port, localPort: c.localPort, allowHalfOpen: true });
    const timer = setTimeout(() => { emit({ ev: 'connect-failed', conn: id, code: 'ETIMEDOUT', ms: Date.now() - started }); s.destroy(); }, c.timeoutMs ?? 3000);
    s.once('connect', () => { clearTimeout(timer); emit({ ev: 'connected', conn: id, ms: Date.now() - started, local: s.localAddress + ':' + s.localPort }); });
    s.once('error', (e) => { if (!s.connecting && s.remotePort !== undefined) return; clearTimeout(timer); emit({ ev: 'connect-failed', conn: id, code: e.code, ms: Date.now() - started }); });
    track(s, id);
    return;
  }
  const s = pick(c);
  if (!s) { emit({ ev: 'no-connection', op: c.op }); return; }
  if (c.op === 'reply-on-eof') replyOnEof.set(c.conn, c.data);
  else if (c.op === 'send') s.write(c.data);
  else if (c.op === 'end') s.end();
  else if (c.op === 'destroy') s.destroy();
  else if (c.op === 'reset') s.resetAndDestroy();
});
process.stdin.on('end', () => process.exit(0));
`;

export interface AgentEvent {
  t: number;
  ev: string;
  conn?: number;
  data?: string;
  code?: string;
  ms?: number;
  local?: string;
  remote?: string;
  [k: string]: unknown;
}

/** A running endpoint: send it commands, wait for its events. */
export class Agent {
  readonly events: AgentEvent[] = [];
  private waiters: (() => void)[] = [];
  private stderr = '';
  private exited = false;

  constructor(readonly name: string, readonly child: ChildProcess) {
    let buf = '';
    child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          this.events.push(JSON.parse(line) as AgentEvent);
        } catch {
          this.stderr += line + '\n';
        }
        for (const w of [...this.waiters]) w();
      }
    });
    child.stderr!.on('data', (c: Buffer) => (this.stderr += c.toString('utf8')));
    child.once('exit', () => {
      this.exited = true;
      for (const w of [...this.waiters]) w();
    });
  }

  command(cmd: Record<string, unknown>): void {
    if (!this.exited) this.child.stdin!.write(JSON.stringify(cmd) + '\n');
  }

  /** The first event (already seen or future) matching `pred`, or null after `timeoutMs`. */
  waitFor(pred: (e: AgentEvent) => boolean, timeoutMs: number): Promise<AgentEvent | null> {
    return new Promise((resolve) => {
      const check = (): boolean => {
        const hit = this.events.find(pred);
        if (hit !== undefined || this.exited) {
          done(hit ?? null);
          return true;
        }
        return false;
      };
      const done = (v: AgentEvent | null): void => {
        clearTimeout(timer);
        const i = this.waiters.indexOf(onEvent);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(v);
      };
      const onEvent = (): void => void check();
      const timer = setTimeout(() => done(null), timeoutMs);
      this.waiters.push(onEvent);
      check();
    });
  }

  /** Like waitFor, but a missing event is an error of the lab itself (the scenario cannot go on). */
  async expect(pred: (e: AgentEvent) => boolean, timeoutMs: number, what: string): Promise<AgentEvent> {
    const e = await this.waitFor(pred, timeoutMs);
    if (e === null) {
      throw new HalfcloseError('HC_ERR_LAB', `${this.name}: ${what} did not happen within ${timeoutMs} ms${this.stderr ? ` (stderr: ${this.stderr.trim().split('\n').slice(-2).join(' | ')})` : ''}`);
    }
    return e;
  }

  /** Opens a connection from the app; its events carry `id`. */
  connect(id: number, host: string, port: number, opts: { localPort?: number; timeoutMs?: number } = {}): void {
    this.command({ op: 'connect', id, host, port, ...opts });
  }

  /** Everything received on connection `conn`, in order. */
  received(conn: number): string {
    return this.events.filter((e) => e.ev === 'data' && e.conn === conn).map((e) => e.data).join('');
  }

  has(pred: (e: AgentEvent) => boolean): boolean {
    return this.events.some(pred);
  }

  stop(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

/** Starts the application endpoint in the pod namespace, as root (uid 0), so it is intercepted. */
export function startApp(topo: PodTopology): Agent {
  const child = topo.spawn(topo.pod, process.execPath, ['--input-type=module', '-e', AGENT_SOURCE, 'app'], { stdio: ['pipe', 'pipe', 'pipe'] });
  return new Agent('app', child);
}

/** Starts the service endpoint in the service namespace, listening on 0.0.0.0:`port`. */
export async function startService(topo: PodTopology, port: number): Promise<Agent> {
  const child = topo.spawn(topo.svc, process.execPath, ['--input-type=module', '-e', AGENT_SOURCE, 'service', String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const agent = new Agent('service', child);
  await agent.expect((e) => e.ev === 'listening', 10_000, 'listening');
  return agent;
}
