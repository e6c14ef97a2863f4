// SIGTERM on the built bin/halfclose: the listener closes at once (new connections are refused),
// live connections keep relaying in both directions and may finish on their own, and whatever is
// still open at the drain timeout is reset (close reason `drain`); then the process exits 0.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { connect, observe, startServer, waitFor } from '../helpers/proxy.js';
import { BIN } from '../helpers/repo.js';


interface Running {
  child: ChildProcess;
  port: number;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  /** Access-log lines (stdout), parsed. */
  entries: () => { id: number; reason: string; [k: string]: unknown }[];
}

async function startBin(t: TestContext, args: string[]): Promise<Running> {
  const child = spawn(process.execPath, [BIN, 'proxy', '--admin', 'off', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  await waitFor(() => /"msg":"listening"/.test(err) || child.exitCode !== null, 15_000, 'the proxy to listen');
  assert.equal(child.exitCode, null, `proxy exited: ${err}`);
  const listening = JSON.parse(err.split('\n').find((l) => l.includes('"msg":"listening"'))!);
  const port = Number(String(listening.listeners[0].address).split(':').pop());
  return {
    child,
    port,
    stdout: () => out,
    stderr: () => err,
    exited,
    entries: () => out.split('\n').filter((l) => l.includes('"connection closed"')).map((l) => JSON.parse(l)),
  };
}

/** 'refused' once nothing listens on the port any more; 'accepted' while it does. */
function tryConnect(port: number): Promise<'refused' | 'accepted' | string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve('accepted');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED' ? 'refused' : (e.code ?? e.message)));
  });
}

test('SIGTERM: stops accepting, lets connections finish, resets the rest at the drain timeout, exits 0', { timeout: 60_000 }, async (t) => {
  const accepted: net.Socket[] = [];
  const up = await startServer((s) => {
    s.on('error', () => {});
    s.on('data', (d) => s.write(`echo:${d}`)); // an echo: data after SIGTERM must still flow both ways
    s.on('end', () => s.end());
    accepted.push(s);
  });
  t.after(async () => {
    for (const s of accepted) s.destroy();
    await up.close();
  });
  const px = await startBin(t, ['--route', `127.0.0.1:0=127.0.0.1:${up.port}`, '--drain-timeout', '3s']);

  const finishing = await connect(px.port);
  const lingering = await connect(px.port);
  t.after(() => {
    finishing.destroy();
    lingering.destroy();
  });
  const [finishingPort, lingeringPort] = [finishing.localPort!, lingering.localPort!];
  const lingeringSaw = observe(lingering);
  await waitFor(() => accepted.length === 2, 5000, 'both connections at the upstream');

  const sigtermAt = Date.now();
  px.child.kill('SIGTERM');
  await waitFor(async () => (await tryConnect(px.port)) === 'refused', 5000, 'the listener to close');

  // The finishing connection still relays both ways after SIGTERM, then closes cleanly.
  let reply = '';
  finishing.on('data', (d) => (reply += d));
  finishing.write('after sigterm');
  await waitFor(() => reply === 'echo:after sigterm', 5000, 'the echo after SIGTERM');
  finishing.end();
  await once(finishing, 'end');
  // Probes that reached the proxy before it handled SIGTERM are logged too: pick ours by client port.
  const of = (port: number) => px.entries().find((e) => (e.client as { port: number }).port === port);
  await waitFor(() => of(finishingPort) !== undefined, 5000, 'the finished connection to be logged');
  assert.equal(of(finishingPort)!.reason, 'both-fin');
  assert.equal(px.child.exitCode, null, 'the proxy exited while a connection was still open');

  // The lingering one is reset at the drain timeout, and only then does the process exit.
  assert.equal((await lingeringSaw).end, 'reset');
  const resetAfter = Date.now() - sigtermAt;
  assert.ok(resetAfter >= 2900, `reset ${resetAfter} ms after SIGTERM, before the 3 s drain timeout`);
  assert.equal(await px.exited, 0, px.stderr());
  assert.equal(of(lingeringPort)?.reason, 'drain');
  assert.match(px.stderr(), /"msg":"draining"/);
  assert.match(px.stderr(), /"msg":"drained; exiting"/);
});

test('SIGTERM with every connection finishing on its own exits without waiting for the drain timeout', { timeout: 60_000 }, async (t) => {
  const up = await startServer((s) => {
    s.on('end', () => s.end('bye'));
  });
  t.after(() => up.close());
  const px = await startBin(t, ['--route', `127.0.0.1:0=127.0.0.1:${up.port}`, '--drain-timeout', '30s']);
  const c = await connect(px.port);
  const saw = observe(c);
  const clientPort = c.localPort!;
  await waitFor(() => px.child.exitCode === null, 1000, 'running');
  px.child.kill('SIGTERM');
  await waitFor(async () => (await tryConnect(px.port)) === 'refused', 5000, 'the listener to close');
  c.end();
  assert.deepEqual(await saw, { data: Buffer.from('bye'), end: 'eof' });
  const start = Date.now();
  assert.equal(await px.exited, 0);
  assert.ok(Date.now() - start < 20_000, 'the proxy waited for the drain timeout with nothing left to drain');
  const ours = px.entries().find((e) => (e.client as { port: number }).port === clientPort);
  assert.equal(ours?.reason, 'both-fin');
});
