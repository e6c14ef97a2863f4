// The close-sequence matrix through a real proxy on 127.0.0.1:
//   who closes first  {client FIN, server FIN, both at once}
// × bytes in flight    {0 B, 1 B, 20 MB} in each direction at the same time
// × then               {the other side FINs, RSTs, or stays half-closed and sends a late message}.
// Each cell runs through both relays (splice and copy) and checks: the bytes each side read (sha256, in order), the exact end each side
// observed (EOF or reset), the access-log close reason and byte counts, and that afterwards no
// connection is registered and the process holds no file descriptor more than before.
//
// "First" rows (A closes first, B is the other side): A writes its payload and its FIN at once
// (the FIN queued behind the bytes in flight) while B writes its own payload; B then, once it has
// read A's EOF:
//   fin  -> FIN;
//   rst  -> RST, after A has read all of B's payload (an RST discards unread data by design);
//   late -> waits, sends a late message, then FIN (the half-closed connection must carry it).
// The "both" row has no side left open after the first move, so its third column says what
// crosses on the wire once both payloads have arrived:
//   fin  -> both write payload and FIN at once (the FINs cross behind the bytes in flight);
//   rst  -> the client's FIN and the server's RST cross;
//   late -> both send a last message and a FIN at once (each message crosses the other's FIN).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type net from 'node:net';
import { IPPROTO_TCP, setIntOption, socketFd, takeSocketError } from '../../src/kernel/sockopt.js';
import { blackholeUpstream } from '../helpers/blackhole.js';
import { connect, fdCount, sleep, startRouteProxy, startServer, waitFor, type LoggedConnection } from '../helpers/proxy.js';

type First = 'client' | 'server' | 'both';
type Then = 'fin' | 'rst' | 'late';

const SIZES = [0, 1, 20 * 1024 * 1024] as const;
const LATE = Buffer.from('late message');
const TCP_CORK = 3;
// One random buffer per direction, sliced per size: distinct contents each way, so a crossed
// direction cannot pass the hash check.
const UP = randomBytes(SIZES[2]);
const DOWN = randomBytes(SIZES[2]);

/** Bounded waits: a broken relay fails the cell with a message instead of hanging the file. */
function within<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** One end of the connection as a test peer sees it: bytes read and how reading ended. */
class Peer {
  readonly chunks: Buffer[] = [];
  received = 0;
  /** 'eof', 'reset', another error code, or 'closed' (destroyed by us before any of those). */
  end: string | null = null;
  readonly ended: Promise<string>;
  constructor(readonly socket: net.Socket) {
    this.ended = new Promise((resolve) => {
      const done = (how: string): void => {
        if (this.end === null) {
          this.end = how;
          resolve(how);
        }
      };
      socket.on('data', (c: Buffer) => {
        this.chunks.push(c);
        this.received += c.length;
      });
      socket.on('end', () => done('eof'));
      socket.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNRESET' ? 'reset' : (e.code ?? e.message)));
      socket.on('close', () => done('closed'));
    });
  }
  data(): Buffer {
    return Buffer.concat(this.chunks);
  }
  waitBytes(n: number, what: string): Promise<void> {
    return waitFor(() => this.received >= n || this.end !== null, 20_000, what);
  }
}

interface Expect {
  clientEnd: string | null; // null: not checked (the side destroyed its own socket)
  serverEnd: string | null;
  clientData: Buffer; // what the client must have read
  serverData: Buffer;
  reason: string;
}

async function runCell(relay: 'splice' | 'copy', first: First, size: number, then: Then): Promise<void> {
  const up = UP.subarray(0, size); // client -> server payload
  const down = DOWN.subarray(0, size); // server -> client payload
  let serverPeer: Peer | null = null;
  const upstream = await startServer((s) => {
    serverPeer = new Peer(s);
  });
  const px = await startRouteProxy(upstream.port, { accessLog: 'off', relay });
  const fdsBefore = fdCount();

  const clientSocket = await connect(px.port);
  const client = new Peer(clientSocket);
  await waitFor(() => serverPeer !== null, 5000, 'upstream accept');
  const server = serverPeer! as Peer;

  let expect: Expect;
  if (first === 'both') {
    if (then === 'fin') {
      clientSocket.end(up);
      server.socket.end(down);
      expect = { clientEnd: 'eof', serverEnd: 'eof', clientData: down, serverData: up, reason: 'both-fin' };
    } else {
      clientSocket.write(up);
      server.socket.write(down);
      await Promise.all([server.waitBytes(size, 'client payload at server'), client.waitBytes(size, 'server payload at client')]);
      if (then === 'rst') {
        clientSocket.end();
        server.socket.resetAndDestroy();
        expect = { clientEnd: 'reset', serverEnd: null, clientData: down, serverData: up, reason: 'upstream-reset' };
      } else {
        clientSocket.end(LATE);
        server.socket.end(LATE);
        const withLate = (b: Buffer): Buffer => Buffer.concat([b, LATE]);
        expect = { clientEnd: 'eof', serverEnd: 'eof', clientData: withLate(down), serverData: withLate(up), reason: 'both-fin' };
      }
    }
  } else {
    const [a, b] = first === 'client' ? [client, server] : [server, client];
    const [aPayload, bPayload] = first === 'client' ? [up, down] : [down, up];
    a.socket.end(aPayload);
    b.socket.write(bPayload);
    assert.equal(await within(b.ended, 'the first FIN'), 'eof', `${first === 'client' ? 'server' : 'client'} should read the first side's FIN`);
    let aData = bPayload;
    if (then === 'fin') {
      b.socket.end();
    } else if (then === 'rst') {
      await a.waitBytes(size, 'other side payload at the first side');
      b.socket.resetAndDestroy();
    } else {
      // Half-closed for a while, bytes still flowing the other way, then the late message.
      await sleep(50);
      b.socket.end(LATE);
      aData = Buffer.concat([bPayload, LATE]);
    }
    const aEnd = then === 'rst' ? 'reset' : 'eof';
    const bSide = first === 'client' ? 'upstream' : 'downstream';
    const reason = then === 'rst' ? `${bSide}-reset` : 'both-fin';
    expect =
      first === 'client'
        ? { clientEnd: aEnd, serverEnd: 'eof', clientData: aData, serverData: aPayload, reason }
        : { clientEnd: 'eof', serverEnd: aEnd, clientData: aPayload, serverData: aData, reason };
  }

  const cell = `${first} first, ${size} B, then ${then}`;
  const [entry] = (await within(px.closed(1), `${cell}: the access-log entry`)) as LoggedConnection[];
  await within(Promise.all([client.ended, server.ended]), `${cell}: both peers to stop reading`);
  assert.equal(client.received, expect.clientData.length, `${cell}: bytes read by the client`);
  assert.equal(sha(client.data()), sha(expect.clientData), `${cell}: sha256 of what the client read`);
  assert.equal(server.received, expect.serverData.length, `${cell}: bytes read by the server`);
  assert.equal(sha(server.data()), sha(expect.serverData), `${cell}: sha256 of what the server read`);
  if (expect.clientEnd) assert.equal(client.end, expect.clientEnd, `${cell}: how the client's reading ended`);
  if (expect.serverEnd) assert.equal(server.end, expect.serverEnd, `${cell}: how the server's reading ended`);
  assert.equal(entry!.reason, expect.reason, `${cell}: access-log reason (entry ${JSON.stringify(entry)})`);
  const c2s = entry!.clientToServer as { bytes: number; state: string };
  const s2c = entry!.serverToClient as { bytes: number; state: string };
  assert.equal(c2s.bytes, expect.serverData.length, `${cell}: logged client->server bytes`);
  assert.equal(s2c.bytes, expect.clientData.length, `${cell}: logged server->client bytes`);
  if (expect.reason === 'both-fin') {
    assert.deepEqual([c2s.state, s2c.state], ['fin-forwarded', 'fin-forwarded'], `${cell}: logged direction states`);
  } else if (first === 'both') {
    // The client's FIN and the server's RST crossed: either may reach the proxy first.
    assert.equal(s2c.state, 'reset', `${cell}: logged server->client state`);
  } else {
    // The first side's FIN was forwarded before the reset; the reset ended the other direction.
    const finished = first === 'server' ? [s2c.state, c2s.state] : [c2s.state, s2c.state];
    assert.deepEqual(finished, ['fin-forwarded', 'reset'], `${cell}: logged direction states`);
  }

  // Nothing left behind: no registered connection, no descriptor more than before the client.
  clientSocket.destroy();
  server.socket.destroy();
  assert.equal(px.proxy.registry.size, 0, `${cell}: connections still registered`);
  await waitFor(() => fdCount() <= fdsBefore, 5000, `${cell}: fds back to ${fdsBefore} (now ${fdCount()})`);
  await px.close();
  await upstream.close();
}

// Both relays: splice (the default, a worker thread moving bytes kernel to kernel) and copy.
for (const relay of ['splice', 'copy'] as const) {
  for (const first of ['client', 'server', 'both'] as const) {
    for (const size of SIZES) {
      for (const then of ['fin', 'rst', 'late'] as const) {
        test(`${relay}: ${first} FIN first, ${size} B each way, then ${then}`, { timeout: 20_000 }, () => runCell(relay, first, size, then));
      }
    }
  }
}

// Before the relay starts, the client socket is not read (it is accepted paused while the
// upstream connect runs). A client that sends its request and then crashes (RST) in that window
// must reach the upstream as a reset, never as the request followed by a clean FIN — which is
// what libuv's EOF for a reset socket with unread bytes would otherwise produce. The same when the
// client had sent its FIN before the RST: both are there when the relay first reads, the kernel
// reports the FIN as the end of the stream (recv reads 0), and only the event's EPOLLERR and
// SO_ERROR tell of the reset behind it.
const ENDINGS = [
  { what: 'sends, then RST', request: true, fin: false },
  { what: 'sends, then FIN, then RST', request: true, fin: true },
  { what: 'sends nothing, FIN, then RST', request: false, fin: true },
];
for (const { what, request, fin } of ENDINGS) {
  test(`client ${what} while the proxy is still connecting: the upstream gets an RST, not a FIN`, { timeout: 30_000 }, async (t) => {
    const up = await blackholeUpstream();
    t.after(() => up.close());
    const px = await startRouteProxy(up.port, { timeouts: { connect: '20s' } });
    t.after(() => px.close());
    const client = await connect(px.port);
    client.on('error', () => {});
    if (request) client.write('a request the client will not stand behind');
    await waitFor(() => px.proxy.registry.size === 1, 5000, 'accept');
    const conn = [...px.proxy.registry.all()][0]!;
    if (fin) {
      client.end();
      await sleep(100);
    }
    await sleep(100);
    client.resetAndDestroy();
    await sleep(100);
    assert.equal(conn.connectedAt, 0, 'the upstream connect should still be pending');
    up.admitNext(); // the proxy's next SYN retransmission gets through
    await within(
      waitFor(() => conn.connectedAt > 0, 10_000, 'the upstream connect'),
      'the upstream connect',
      12_000,
    );
    const upstream = up.acceptSocket(); // not read: what it was sent is what the kernel says
    t.after(() => upstream.destroy());
    const [entry] = await within(px.closed(1), 'the access-log entry');
    assert.equal(entry!.reason, 'downstream-reset', JSON.stringify(entry));
    assert.equal((entry!.clientToServer as { state: string }).state, 'reset');
    assert.equal((entry!.clientToServer as { finForwardedAt: unknown }).finForwardedAt ?? null, null, 'no FIN forwarded');
    // A socket that had read a FIN records a later RST as EPIPE (tcp_reset): ECONNRESET says no FIN came first.
    await waitFor(() => takeSocketError(socketFd(upstream)) === 'ECONNRESET', 5000, 'the RST at the upstream (and no FIN before it)');
  });
}

// The last FIN is sent by close(), which does not fail on a reset socket: a destination whose
// peer has closed for good answers the last bytes written into it with an RST (over loopback
// before send() returns), and that reset is the connection's end: those bytes were never read.
// Here the upstream answers and closes its socket; the client then sends its last bytes with its
// FIN, which the closed upstream resets. The client's side has seen both FINs by then, so no RST
// can reach it; the close reason is what tells a lost message from a clean end.
for (const relay of ['splice', 'copy'] as const) {
  test(`${relay}: the client's last bytes reach an upstream that has closed: its RST ends the connection as upstream-reset`, { timeout: 20_000 }, async (t) => {
    let upstreamClosed = false;
    const upstream = await startServer((s) => {
      s.on('error', () => {});
      s.end('bye', () => {
        s.destroy();
        upstreamClosed = true;
      });
    });
    t.after(() => upstream.close());
    const px = await startRouteProxy(upstream.port, { relay });
    t.after(() => px.close());
    const client = await connect(px.port);
    client.on('error', () => {});
    t.after(() => client.destroy());
    const peer = new Peer(client);
    assert.equal(await within(peer.ended, 'the upstream FIN at the client'), 'eof');
    assert.equal(peer.data().toString(), 'bye');
    await waitFor(() => upstreamClosed, 5000, 'the upstream to close its socket');
    await sleep(50);
    // Corked, the bytes wait in the client's kernel and leave with the FIN in one segment, so the
    // relay reads both in one go and sends the last FIN right after writing the bytes.
    setIntOption(socketFd(client), IPPROTO_TCP, TCP_CORK, 1, 'TCP_CORK');
    client.end('bytes nobody will read');
    const [entry] = (await within(px.closed(1), 'the access-log entry')) as LoggedConnection[];
    assert.equal(entry!.reason, 'upstream-reset', JSON.stringify(entry));
    assert.equal((entry!.clientToServer as { bytes: number }).bytes, 'bytes nobody will read'.length);
  });
}
