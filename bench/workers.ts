// The benchmark's own small programs, each run as a separate process so that it never shares an
// event loop with what it measures: `echo` (upstream), `latency`, `connrate`, `connrates` and
// `idle` (clients).
// Usage: node workers.js MODE ARGS… — each prints one JSON line on stdout (the result, or
// {"ready":…}/{"held":…} for the long-running ones) and exits on SIGTERM or when stdin closes.

import net from 'node:net';

type Args = Record<string, string>;

function parseArgs(argv: string[]): Args {
  const out: Args = {};
  for (const a of argv) {
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(0, eq)] = a.slice(eq + 1);
  }
  return out;
}

function num(args: Args, key: string, dflt?: number): number {
  const v = args[key];
  if (v === undefined) {
    if (dflt === undefined) throw new Error(`missing ${key}=`);
    return dflt;
  }
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${key}= expects a number, got "${v}"`);
  return n;
}

/** `ports=a,b,c` as numbers (`port=` too, where one is enough). */
function portsOf(args: Args): number[] {
  const ports = (args.ports ?? args.port ?? '').split(',').filter(Boolean).map(Number);
  if (ports.length === 0) throw new Error('missing ports=');
  return ports;
}

function emit(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** The parent closing our stdin (or dying) ends long-running workers: no orphan survives a crash. */
function exitWithParent(cleanup: () => void = () => {}): void {
  const bye = (): void => {
    cleanup();
    process.exit(0);
  };
  process.stdin.on('end', bye);
  process.stdin.on('error', bye);
  process.stdin.resume();
  process.on('SIGTERM', bye);
}

// Upstream for latency, connection rate and idle connections: echoes every byte, answers a FIN
// with a FIN. One listener per port given, so each contender has its own port (and its own
// TIME_WAIT space).
function echo(args: Args): void {
  const ports = portsOf(args);
  const servers: net.Server[] = [];
  let listening = 0;
  for (const port of ports) {
    const server = net.createServer({ noDelay: true }, (s) => {
      s.on('data', (d) => s.write(d));
      s.on('error', () => s.destroy());
    });
    server.maxConnections = 19_000;
    server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
      if (++listening === ports.length) emit({ ready: ports });
    });
    servers.push(server);
  }
  exitWithParent();
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

interface LatencyResult {
  samples: number;
  p50: number;
  p99: number;
  mean: number;
}

/** One kept connection of the latency run: its round trip in flight, its samples. */
interface RoundTrips {
  port: number;
  socket: net.Socket;
  samples: Float64Array;
  n: number;
  error: string | null;
  /** The echo of the message in flight has fully arrived. */
  reply: ((err: Error | null) => void) | null;
  got: number;
  /** When the message in flight left (Date.now()). */
  sentAt: number;
}

/** A round trip or a burst's last connections not answered within this long: the contender is stuck, and the run goes on without it. */
const STUCK_MS = 3000;

// Round trips of `size` bytes over one kept connection per port, one at a time, in blocks taken in
// turn across the ports (`ports=a,b,c`): `block` round trips through one, then `block` through the
// next, the first port of each round moving on by one. A busy spell of this shared machine falls
// on every contender alike instead of on whichever ran then, while each block still runs alone on
// a warm proxy (the first `rewarm` round trips of a block, which find the caches full of the
// previous contender, are not counted; nor are the first `warmup` of all). Times in microseconds.
// Prints {"ports":{"a":{p50,p99,...}}}; a port whose connection fails drops out with {"error"}.
async function latency(args: Args): Promise<void> {
  const ports = portsOf(args);
  const size = num(args, 'size');
  const count = num(args, 'count');
  const warmup = num(args, 'warmup', 200);
  const block = num(args, 'block', 500);
  const rewarm = num(args, 'rewarm', 20);
  const maxMs = num(args, 'maxMs', 5000);
  const payload = Buffer.alloc(size, 0x61);
  const conns: RoundTrips[] = await Promise.all(
    ports.map(
      (port) =>
        new Promise<RoundTrips>((resolve) => {
          const rt: RoundTrips = { port, socket: net.connect({ host: '127.0.0.1', port, noDelay: true }), samples: new Float64Array(count), n: 0, error: null, reply: null, got: 0, sentAt: 0 };
          const end = (err: Error): void => {
            rt.error ??= err.message;
            rt.reply?.(err);
          };
          rt.socket.once('connect', () => resolve(rt));
          rt.socket.on('error', (err) => {
            end(err);
            resolve(rt);
          });
          rt.socket.on('end', () => end(new Error('connection closed during the latency run')));
          rt.socket.on('data', (d: Buffer) => {
            rt.got += d.length;
            if (rt.got >= size) rt.reply?.(null);
          });
        }),
    ),
  );
  const once = (rt: RoundTrips): Promise<number> =>
    new Promise((resolve, reject) => {
      rt.got = 0;
      rt.sentAt = Date.now();
      const start = process.hrtime.bigint();
      rt.reply = (err) => {
        rt.reply = null;
        if (err) reject(err);
        else resolve(Number(process.hrtime.bigint() - start) / 1000);
      };
      rt.socket.write(payload);
    });
  // One watchdog for all (a timer per round trip would cost every contender's round trips).
  const watchdog = setInterval(() => {
    for (const rt of conns) {
      if (rt.reply !== null && Date.now() - rt.sentAt > STUCK_MS) {
        rt.error = `no echo within ${STUCK_MS / 1000} s`;
        rt.reply(new Error(rt.error));
      }
    }
  }, 500);
  const deadline = Date.now() + maxMs;
  const rounds = Math.ceil(count / block);
  for (let round = 0; round < rounds && Date.now() <= deadline; round++) {
    for (let k = 0; k < conns.length; k++) {
      const rt = conns[(k + round) % conns.length]!;
      const skip = round === 0 ? warmup : rewarm;
      for (let i = -skip; i < block && rt.n < count && rt.error === null; i++) {
        try {
          const us = await once(rt);
          if (i >= 0) rt.samples[rt.n++] = us;
        } catch {
          /* rt.error says why */
        }
      }
    }
  }
  clearInterval(watchdog);
  const out: Record<string, LatencyResult | { error: string }> = {};
  for (const rt of conns) {
    rt.socket.destroy();
    if (rt.error !== null) {
      out[rt.port] = { error: rt.error };
      continue;
    }
    const done = rt.samples.subarray(0, rt.n).sort();
    let sum = 0;
    for (const v of done) sum += v;
    out[rt.port] = { samples: done.length, p50: percentile(done, 50), p99: percentile(done, 99), mean: sum / done.length };
  }
  emit({ ports: out });
}

interface Burst {
  completed: number;
  errors: number;
  seconds: number;
}

// Connect, send a small message, read the echo, close (our FIN first, then the server's), with
// `concurrency` at a time, until `count` connections or `maxMs`; then waits for those in flight.
// Counts only complete exchanges.
function burst(port: number, concurrency: number, count: number, maxMs: number): Promise<Burst> {
  const msg = Buffer.from('ping halfclose\n');
  let started = 0;
  let completed = 0;
  let errors = 0;
  const t0 = process.hrtime.bigint();
  const deadline = Date.now() + maxMs;
  let active = 0;
  const open = new Set<net.Socket>();
  return new Promise<Burst>((resolve) => {
    // Connections still open this long after the end are a stuck contender's: they are closed and counted as failed.
    const watchdog = setInterval(() => {
      if (Date.now() > deadline + STUCK_MS) for (const s of open) s.destroy();
    }, 500);
    const next = (): void => {
      if (started >= count || Date.now() > deadline) {
        if (active === 0) {
          clearInterval(watchdog);
          resolve({ completed, errors, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
        }
        return;
      }
      started++;
      active++;
      let got = 0;
      let ok = false;
      const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
      open.add(s);
      s.on('connect', () => s.write(msg));
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= msg.length && !ok) {
          ok = true;
          s.end();
        }
      });
      s.on('error', () => {
        ok = false;
      });
      s.on('close', () => {
        open.delete(s);
        active--;
        if (ok) completed++;
        else errors++;
        next();
      });
    };
    for (let i = 0; i < concurrency; i++) next();
  });
}

// One burst on `port=`: {completed, errors, seconds, rate}.
async function connrate(args: Args): Promise<void> {
  const r = await burst(num(args, 'port'), num(args, 'concurrency', 50), num(args, 'count'), num(args, 'maxMs'));
  emit({ ...r, rate: r.completed / r.seconds });
}

// Bursts of `sliceMs` taken in turn across `ports=a,b,c`, `slices` per port (the first port of each
// round moving on by one), after a `warmupMs` burst on each that is not counted: every contender's
// rate is measured in the same stretch of time, so a busy spell of this shared machine falls on all
// of them alike. Prints {"ports":{"a":{"rates":[...],"errors":N}}}.
async function connrates(args: Args): Promise<void> {
  const ports = portsOf(args);
  const concurrency = num(args, 'concurrency', 50);
  const sliceMs = num(args, 'sliceMs');
  const slices = num(args, 'slices');
  const warmupMs = num(args, 'warmupMs', 200);
  const out: Record<string, { rates: number[]; errors: number }> = {};
  for (const port of ports) {
    out[port] = { rates: [], errors: 0 };
    await burst(port, concurrency, Infinity, warmupMs);
  }
  for (let round = 0; round < slices; round++) {
    for (let k = 0; k < ports.length; k++) {
      const port = ports[(k + round) % ports.length]!;
      const r = await burst(port, concurrency, Infinity, sliceMs);
      out[port]!.rates.push(r.completed / r.seconds);
      out[port]!.errors += r.errors;
    }
  }
  emit({ ports: out });
}

// Opens `count` connections (`batch` at a time), exchanges one byte on each so every connection is
// established end to end, then holds them all idle until told to stop.
async function idle(args: Args): Promise<void> {
  const port = num(args, 'port');
  const count = num(args, 'count');
  const batch = num(args, 'batch', 100);
  const sockets: net.Socket[] = [];
  let failed = 0;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
      s.on('error', () => {
        failed++;
        resolve();
      });
      s.once('connect', () => s.write('x'));
      s.once('data', () => {
        sockets.push(s);
        resolve();
      });
    });
  for (let i = 0; i < count; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, count - i) }, one));
  }
  emit({ held: sockets.length, failed });
  exitWithParent(() => {
    for (const s of sockets) s.destroy();
  });
}

const [mode, ...rest] = process.argv.slice(2);
const args = parseArgs(rest);
const modes: Record<string, (a: Args) => void | Promise<void>> = { echo, latency, connrate, connrates, idle };
const fn = mode ? modes[mode] : undefined;
if (!fn) {
  process.stderr.write(`workers: unknown mode "${mode ?? ''}"; expected echo, latency, connrate, connrates or idle\n`);
  process.exit(2);
}
// Through a promise from the start, so a mode that throws at once (bad arguments) ends in the same one line.
Promise.resolve()
  .then(() => fn(args))
  .then(
    () => {
      if (mode === 'latency' || mode === 'connrate' || mode === 'connrates') process.exit(0);
    },
    (err: Error) => {
      process.stderr.write(`workers ${mode}: ${err.message}\n`);
      process.exit(1);
    },
  );
