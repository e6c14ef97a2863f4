// `halfclose proxy` as users run it: the built bin/halfclose, its output and exit status for good
// input (--help, --print-config, a real relay stopped by SIGTERM) and for bad input (one line on
// stderr naming the flag or key, exit status 2, never a stack trace).

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { BIN } from '../helpers/repo.js';


/** Runs `halfclose proxy ARGS` to completion (async, so a test can run several at once). */
async function run(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, 'proxy', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const [status] = (await once(child, 'close')) as [number | null];
  return { status, stdout, stderr };
}

/** Bad input: exactly one line on stderr, starting `halfclose: `, matching `pattern`, exit 2, nothing on stdout. */
async function badInput(args: string[], pattern: RegExp): Promise<void> {
  const r = await run(args);
  assert.equal(r.status, 2, `exit status for ${args.join(' ')}; stderr: ${r.stderr}`);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^halfclose: [^\n]+\n$/, `one line for ${args.join(' ')}, got: ${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\bat .*\.js:\d+/, 'no stack trace');
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'halfclose-cli-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

/**
 * Starts the built `halfclose proxy --admin off ARGS`, killed when the test ends, and waits for its
 * "listening" line on stderr (the operational log), where a listen port of 0 is resolved.
 */
async function startCli(t: TestContext, args: string[], opts: { nofile?: number } = {}): Promise<{ child: ChildProcess; port: number; stdout(): string; stderr(): string; exited: Promise<unknown[]> }> {
  const argv = [BIN, 'proxy', '--admin', 'off', ...args];
  // `nofile`: the process's descriptor limit, as a container's would be.
  const child = opts.nofile
    ? spawn('bash', ['-c', `ulimit -n ${opts.nofile} && exec "$0" "$@"`, process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = once(child, 'exit');
  const deadline = Date.now() + 15_000;
  while (!/"msg":"listening"/.test(stderr)) {
    assert.ok(Date.now() < deadline && child.exitCode === null, `proxy did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const listening = JSON.parse(stderr.split('\n').find((l) => l.includes('"msg":"listening"'))!);
  const port = Number(String(listening.listeners[0].address).split(':').pop());
  return { child, port, stdout: () => stdout, stderr: () => stderr, exited };
}

test('--help describes every flag the command accepts and exits 0', async () => {
  const [r, printedRun, short] = await Promise.all([run(['--help']), run(['--print-config']), run(['-h'])]);
  assert.equal(r.status, 0);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /^Usage: halfclose proxy \[--config FILE\] \[flags\]/);
  const flags = [
    '--outbound', '--inbound', '--route', '--upstream-source', '--connect-timeout', '--idle-timeout', '--half-close-timeout',
    '--max-duration', '--drain-timeout', '--keepalive', '--keepalive-established', '--user-timeout', '--buffer-limit',
    '--relay', '--admin', '--admin-allow-non-loopback', '--access-log', '--log-level', '--config', '--print-config', '--help',
  ];
  for (const f of flags) assert.match(r.stdout, new RegExp(`^\\s+(-h, )?${f}\\b`, 'm'), `--help lists ${f}`);
  // Each documented default is the one --print-config shows.
  const printed = YAML.parse(printedRun.stdout);
  assert.match(r.stdout, new RegExp(`--idle-timeout DUR[^]*Default ${printed.timeouts.idle}\\b`));
  assert.match(r.stdout, new RegExp(`--connect-timeout DUR[^]*Default ${printed.timeouts.connect}\\b`));
  assert.match(r.stdout, new RegExp(`--drain-timeout DUR[^]*Default ${printed.timeouts.drain}\\b`));
  assert.equal(short.stdout, r.stdout);
});

test('--print-config shows the merged configuration: file values, flags over them', async () => {
  const cfg = file('good.yaml', 'listeners:\n  - kind: outbound\n    listen: 127.0.0.1:15001\ntimeouts:\n  idle: 10m\n  connect: 2s\n');
  const r = await run(['--config', cfg, '--idle-timeout', '90s', '--half-close-timeout', '0', '--print-config']);
  assert.equal(r.status, 0, r.stderr);
  const out = YAML.parse(r.stdout);
  assert.deepEqual(out.listeners, [{ name: 'outbound', kind: 'outbound', listen: '127.0.0.1:15001' }]);
  assert.deepEqual(out.timeouts, { connect: '2s', idle: '90s', halfClose: '0', maxDuration: '0', drain: '30s' });
  assert.equal(out.relay, 'splice', 'the default relay');
  const copy = YAML.parse((await run(['--config', cfg, '--relay', 'copy', '--print-config'])).stdout);
  assert.equal(copy.relay, 'copy', '--relay reaches the configuration');
  const fromFile = YAML.parse((await run(['--config', file('copy.yaml', 'relay: copy\n'), '--print-config'])).stdout);
  assert.equal(fromFile.relay, 'copy', 'relay: in the file');
  const routes = YAML.parse((await run(['--config', cfg, '--route', '127.0.0.1:9000=127.0.0.1:6379', '--print-config'])).stdout);
  assert.deepEqual(routes.listeners, [{ name: 'route-0', kind: 'route', listen: '127.0.0.1:9000', upstream: '127.0.0.1:6379' }], 'listener flags replace the file listeners');
  // The printed form is itself a valid config file.
  const again = await run(['--config', file('printed.yaml', r.stdout), '--print-config']);
  assert.equal(again.status, 0, again.stderr);
  assert.equal(again.stdout, r.stdout);
});

test('bad config files: malformed YAML, an unknown key, a renamed key, a duration without a unit, an address without a port', async () => {
  await Promise.all([
    badInput(['--config', file('bad.yaml', 'listeners: [\n')], /bad\.yaml: not valid YAML: .*line 2, column 1$/m),
    badInput(['--config', file('unknown.yaml', 'timeouts:\n  idel: 5s\n')], /unknown\.yaml: unknown key "timeouts\.idel"$/m),
    badInput(['--config', file('renamed.yaml', 'idle_timeout: 5s\n')], /unknown key "idle_timeout"; use timeouts\.idle instead/),
    badInput(['--config', file('nounit.yaml', 'timeouts:\n  idle: 30\n')], /nounit\.yaml: timeouts\.idle: expected a duration with a unit \(250ms, 30s, 1h\) or 0, got 30$/m),
    badInput(
      ['--config', file('noport.yaml', 'listeners:\n  - kind: route\n    listen: 127.0.0.1\n    upstream: 127.0.0.1:6379\n')],
      /noport\.yaml: listeners\[0\]\.listen: expected HOST:PORT \(IPv6 as \[ADDR\]:PORT\), got "127\.0\.0\.1"$/m,
    ),
    badInput(['--config', path.join(dir, 'missing.yaml')], /--config: cannot read .*missing\.yaml: ENOENT$/m),
  ]);
});

test('bad flags: unknown flag, duration without a unit, address without a port, no listeners', async () => {
  await Promise.all([
    badInput(['--bogus'], /^halfclose: proxy: unknown flag --bogus \(see `halfclose proxy --help`\)$/m),
    badInput(['--route', '127.0.0.1:0=127.0.0.1:1', '--idle-timeout', '30'], /--idle-timeout: expected a duration with a unit \(250ms, 30s, 1h\) or 0, got "30"$/m),
    badInput(['--route', '127.0.0.1:0=127.0.0.1:1', '--drain-timeout', '5 s'], /--drain-timeout: expected a duration with a unit/),
    badInput(['--outbound', '127.0.0.1'], /--outbound: expected HOST:PORT \(IPv6 as \[ADDR\]:PORT\), got "127\.0\.0\.1"$/m),
    badInput(['--route', '127.0.0.1:9000=127.0.0.1'], /--route UPSTREAM: expected HOST:PORT/),
    badInput(['--route', '127.0.0.1:9000'], /--route: expected LISTEN=UPSTREAM/),
    badInput(['--route', '127.0.0.1:0=127.0.0.1:1', '--buffer-limit', '1k'], /--buffer-limit: must be at least 16KiB/),
    badInput(['--route', '127.0.0.1:0=127.0.0.1:1', '--log-level', 'loud'], /--log-level: expected debug, info, warn, error or silent, got "loud"/),
    badInput(['--route', '127.0.0.1:0=127.0.0.1:1', '--relay', 'cp'], /--relay: expected splice or copy, got "cp"$/m),
    badInput(['--admin', 'off'], /no listeners; give --outbound, --inbound or --route/),
    badInput(['--idle-timeout'], /^halfclose: proxy: .*--idle-timeout/m),
  ]);
});

test('a port in use is one line naming the listener and address, exit 2', async () => {
  const busy = net.createServer();
  busy.listen(0, '127.0.0.1');
  await once(busy, 'listening');
  const port = (busy.address() as net.AddressInfo).port;
  try {
    await badInput(['--admin', 'off', '--route', `127.0.0.1:${port}=127.0.0.1:1`], new RegExp(`listener "route-0" cannot listen on 127\\.0\\.0\\.1:${port}: address already in use$`, 'm'));
  } finally {
    busy.close();
  }
});

test('a real run: relays a connection, writes its access-log line to stdout, and exits 0 on SIGTERM', async (t) => {
  const upstream = net.createServer({ allowHalfOpen: true }, (s) => {
    let got = '';
    s.on('data', (d) => (got += d));
    s.on('end', () => s.end(`echo:${got}`));
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  t.after(() => upstream.close());
  const upPort = (upstream.address() as net.AddressInfo).port;
  const px = await startCli(t, ['--route', `127.0.0.1:0=127.0.0.1:${upPort}`]);
  const c = net.connect({ port: px.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(c, 'connect');
  let reply = '';
  c.on('data', (d) => (reply += d));
  c.end('ping');
  await once(c, 'end');
  assert.equal(reply, 'echo:ping');
  const deadline = Date.now() + 15_000;
  while (!px.stdout().includes('"connection closed"')) {
    assert.ok(Date.now() < deadline, `no access-log line: ${px.stdout()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const entry = JSON.parse(px.stdout().split('\n').find((l) => l.includes('"connection closed"'))!);
  assert.equal(entry.reason, 'both-fin');
  assert.equal(entry.clientToServer.bytes, 4);
  assert.equal(entry.serverToClient.bytes, 9);
  assert.equal(entry.target.port, upPort);
  px.child.kill('SIGTERM');
  const [code] = await px.exited;
  assert.equal(code, 0, px.stderr());
  assert.match(px.stderr(), /"msg":"drained; exiting"/);
});

test('--access-log FILE writes the lines to the file (directories created), not to stdout', async (t) => {
  const upstream = net.createServer({ allowHalfOpen: true }, (s) => s.on('end', () => s.end('bye')).resume());
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  t.after(() => upstream.close());
  const upPort = (upstream.address() as net.AddressInfo).port;
  const logFile = path.join(dir, 'logs', 'access.json');
  const px = await startCli(t, ['--access-log', logFile, '--route', `127.0.0.1:0=127.0.0.1:${upPort}`]);
  const c = net.connect({ port: px.port, host: '127.0.0.1', allowHalfOpen: true });
  c.resume();
  await once(c, 'connect');
  c.end();
  await once(c, 'end');
  px.child.kill('SIGTERM');
  const [code] = await px.exited;
  assert.equal(code, 0, px.stderr());
  assert.equal(px.stdout(), '', 'nothing on stdout');
  const lines = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 1);
  assert.equal(lines[0].reason, 'both-fin');
  assert.equal(lines[0].serverToClient.bytes, 3);
});

test('an access-log path that cannot be opened is one line and exit 2, before anything listens', async () => {
  const notADir = file('plain-file', 'x');
  await badInput(['--access-log', path.join(notADir, 'access.json'), '--route', '127.0.0.1:0=127.0.0.1:9'], /access log .*plain-file\/access\.json: cannot open it for appending \(ENOTDIR\)/);
  // A parent that refuses mkdir with ENOENT (procfs) fails too, rather than retrying forever.
  await badInput(['--access-log', '/proc/halfclose-no-such-dir/access.json', '--route', '127.0.0.1:0=127.0.0.1:9'], /cannot open it for appending \(ENOENT\)/);
});

/** An echo server on 127.0.0.1:0. */
async function echoServer(t: TestContext): Promise<number> {
  const upstream = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  t.after(() => upstream.close());
  return (upstream.address() as net.AddressInfo).port;
}

/** One client through the proxy: 'echo' when its byte comes back, or the error that ended it. */
function echoOnce(port: number): { socket: net.Socket; result: Promise<string> } {
  const socket = net.connect({ port, host: '127.0.0.1' });
  const result = new Promise<string>((resolve) => {
    socket.once('data', () => resolve('echo'));
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    socket.once('end', () => resolve('eof'));
  });
  socket.write('x');
  return { socket, result };
}

test('a host-name route upstream: the log says every connection is copied, and it is relayed', async (t) => {
  const upPort = await echoServer(t);
  const px = await startCli(t, ['--route', `127.0.0.1:0=localhost:${upPort}`]);
  assert.match(px.stderr(), /splice relay off: a listen address or route upstream is a host name/);
  const c = echoOnce(px.port);
  assert.equal(await c.result, 'echo');
  c.socket.destroy();
});

test('out of descriptors: accepting pauses and resumes, the proxy keeps serving and says why', { timeout: 30_000 }, async (t) => {
  const upPort = await echoServer(t);
  // 128 descriptors (64 are too few for Node to load its modules): about 100 are left for
  // connections once Node and the worker are up, two each, so 120 clients cannot all be served at once.
  const px = await startCli(t, ['--route', `127.0.0.1:0=127.0.0.1:${upPort}`], { nofile: 128 });
  const first = Array.from({ length: 120 }, () => echoOnce(px.port));
  const settled = new Map<number, string>();
  first.forEach((c, i) => void c.result.then((r) => settled.set(i, r)));
  const deadline = Date.now() + 10_000;
  while (!/cannot accept on listener \\"route-0\\": [^"]*EMFILE[^"]*; accepting pauses for 100ms/.test(px.stderr())) {
    assert.ok(Date.now() < deadline, `no EMFILE warning: ${px.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 500));
  const served = [...settled].filter(([, r]) => r === 'echo').map(([i]) => i);
  assert.ok(served.length > 0 && served.length < 120, `${served.length} of 120 served while descriptors ran out`);
  // Those served go away; the clients still waiting are accepted and served as descriptors free up.
  for (const i of served) first[i]!.socket.destroy();
  while (settled.size < 120) {
    assert.ok(Date.now() < deadline, `${120 - settled.size} clients never answered`);
    await new Promise((r) => setTimeout(r, 20));
  }
  // A client whose upstream socket could not be opened is reset (never a clean EOF); the rest are echoed.
  assert.deepEqual(new Set([...settled.values()].filter((r) => r !== 'echo' && r !== 'ECONNRESET')), new Set());
  for (const c of first) c.socket.destroy();
  const after = echoOnce(px.port);
  assert.equal(await after.result, 'echo', 'served again once descriptors are free');
  after.socket.destroy();
  assert.equal(px.child.exitCode, null, 'still running');
});

/** Voluntary context switches of every thread of a process: how often its threads went to sleep and woke again. */
function wakeups(pid: number): number {
  let n = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const m = /^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
    n += m ? Number(m[1]) : 0;
  }
  return n;
}

test('an idle proxy sleeps: its threads wake a few times a second, not a hundred', async (t) => {
  const upPort = await echoServer(t);
  // As shipped: the admin server and its metrics on (the event-loop delay histogram samples with a timer).
  const px = await startCli(t, ['--admin', '127.0.0.1:0', '--route', `127.0.0.1:0=127.0.0.1:${upPort}`]);
  const c = echoOnce(px.port);
  assert.equal(await c.result, 'echo');
  c.socket.destroy();
  await new Promise((r) => setTimeout(r, 1000));
  const before = wakeups(px.child.pid!);
  await new Promise((r) => setTimeout(r, 2000));
  const woke = wakeups(px.child.pid!) - before;
  // About 20 in 2 s (the histogram's 100 ms timer); a 10 ms timer anywhere would make it 200 or more.
  assert.ok(woke < 80, `the idle proxy's threads woke ${woke} times in 2 s`);
});
