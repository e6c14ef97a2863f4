// Socket options through koffi, checked against the kernel: every value set is read back with
// getsockopt, and a value the kernel refuses becomes a SockoptError naming the option.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import {
  IPPROTO_TCP,
  SOL_SOCKET,
  SO_KEEPALIVE,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_STATE_CLOSE,
  disableKeepalive,
  getIntOption,
  getKeepalive,
  getTcpState,
  getUserTimeout,
  setIntOption,
  setKeepalive,
  setUserTimeout,
  socketFd,
  takeSocketError,
} from '../../src/kernel/sockopt.js';
import { SockoptError } from '../../src/errors.js';
import {
  EPOLL_CTL_ADD,
  EPOLL_EVENT_SIZE,
  EPOLLERR,
  EPOLLET,
  EPOLLIN,
  EPOLLRDHUP,
  errno,
  libcCalls,
  O_CLOEXEC,
  SHUT_WR,
} from '../../src/kernel/libc.js';

const ENOTCONN = 107;

async function pair(t: import('node:test').TestContext): Promise<{ client: net.Socket; server: net.Socket }> {
  const srv = net.createServer({ allowHalfOpen: true });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = once(srv, 'connection');
  const client = net.connect({ port: (srv.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  await once(client, 'connect');
  const [server] = (await accepted) as [net.Socket];
  client.on('error', () => {});
  server.on('error', () => {});
  t.after(() => {
    client.destroy();
    server.destroy();
    srv.close();
  });
  return { client, server };
}

test('keepalive idle, interval and count are read back from the kernel exactly', async (t) => {
  const { client } = await pair(t);
  const fd = socketFd(client);
  assert.equal(getKeepalive(fd).enabled, false, 'a new socket has keepalive off');
  setKeepalive(fd, { idleSec: 7, intervalSec: 3, count: 4 });
  assert.deepEqual(getKeepalive(fd), { enabled: true, idleSec: 7, intervalSec: 3, count: 4 });
  // Each option on its own, through the raw getter, as the kernel names them.
  assert.equal(getIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, 'SO_KEEPALIVE'), 1);
  assert.equal(getIntOption(fd, IPPROTO_TCP, TCP_KEEPIDLE, 'TCP_KEEPIDLE'), 7);
  assert.equal(getIntOption(fd, IPPROTO_TCP, TCP_KEEPINTVL, 'TCP_KEEPINTVL'), 3);
  assert.equal(getIntOption(fd, IPPROTO_TCP, TCP_KEEPCNT, 'TCP_KEEPCNT'), 4);
  setIntOption(fd, IPPROTO_TCP, TCP_KEEPCNT, 9, 'TCP_KEEPCNT');
  assert.equal(getKeepalive(fd).count, 9);
  disableKeepalive(fd);
  assert.equal(getKeepalive(fd).enabled, false);
});

test('TCP_USER_TIMEOUT is read back from the kernel', async (t) => {
  const { server } = await pair(t);
  const fd = socketFd(server);
  assert.equal(getUserTimeout(fd), 0, 'kernel default');
  setUserTimeout(fd, 12_345);
  assert.equal(getUserTimeout(fd), 12_345);
  setUserTimeout(fd, 0);
  assert.equal(getUserTimeout(fd), 0);
});

test('a value the kernel refuses is a SockoptError naming the option and errno', async (t) => {
  const { client } = await pair(t);
  const fd = socketFd(client);
  const cases: [() => void, string][] = [
    [() => setKeepalive(fd, { idleSec: 0, intervalSec: 1, count: 1 }), 'TCP_KEEPIDLE'],
    [() => setKeepalive(fd, { idleSec: 1, intervalSec: 0, count: 1 }), 'TCP_KEEPINTVL'],
    [() => setKeepalive(fd, { idleSec: 1, intervalSec: 1, count: 0 }), 'TCP_KEEPCNT'],
    [() => setUserTimeout(fd, -1), 'TCP_USER_TIMEOUT'],
  ];
  for (const [fn, option] of cases) {
    assert.throws(fn, (err: unknown) => {
      assert.ok(err instanceof SockoptError, `expected SockoptError, got ${String(err)}`);
      assert.equal(err.option, option);
      assert.equal(err.code, 'HC_ERR_SOCKOPT');
      assert.match(err.message, new RegExp(`${option}=.* failed: EINVAL`));
      return true;
    });
  }
  // The refused values left the kernel's earlier state alone.
  assert.equal(getKeepalive(fd).enabled, false);
});

test('a closed descriptor gives EBADF for the option, and a destroyed socket has no fd', async (t) => {
  const { client } = await pair(t);
  const fd = socketFd(client);
  client.destroy();
  await once(client, 'close');
  assert.throws(() => setKeepalive(fd, { idleSec: 5, intervalSec: 5, count: 3 }), (err: unknown) => err instanceof SockoptError && err.option === 'TCP_KEEPIDLE' && /EBADF/.test(err.message));
  assert.throws(() => getUserTimeout(fd), (err: unknown) => err instanceof SockoptError && err.option === 'TCP_USER_TIMEOUT' && /EBADF/.test(err.message));
  assert.throws(() => socketFd(client), (err: unknown) => err instanceof SockoptError && err.option === 'fd');
});

test('TCP_INFO shows a reset socket as CLOSE and SO_ERROR names the reset, once', async (t) => {
  const { client, server } = await pair(t);
  const fd = socketFd(server);
  assert.notEqual(getTcpState(fd), TCP_STATE_CLOSE);
  assert.equal(takeSocketError(fd), null);
  // The server stops reading after the client's FIN (as libuv does after EOF), then the client resets.
  client.end();
  await once(server, 'end');
  client.resetAndDestroy();
  const start = Date.now();
  while (getTcpState(fd) !== TCP_STATE_CLOSE && Date.now() - start < 2000) await new Promise((r) => setTimeout(r, 10));
  assert.equal(getTcpState(fd), TCP_STATE_CLOSE);
  // A socket in CLOSE-WAIT that receives an RST records EPIPE (tcp_reset in the kernel); others ECONNRESET.
  assert.match(takeSocketError(fd) ?? 'none', /^(EPIPE|ECONNRESET)$/);
  assert.equal(takeSocketError(fd), null, 'reading SO_ERROR clears it');
});

test('a reset socket refuses shutdown(SHUT_WR) with ENOTCONN and keeps the reset as SO_ERROR (the splice relay forwards a FIN on that alone)', async (t) => {
  const { client, server } = await pair(t);
  const fd = socketFd(server);
  server.pause(); // libuv stops reading: nothing consumes the reset before we look
  client.resetAndDestroy();
  const start = Date.now();
  while (getTcpState(fd) !== TCP_STATE_CLOSE && Date.now() - start < 2000) await new Promise((r) => setTimeout(r, 10));
  assert.equal(libcCalls().shutdown(fd, SHUT_WR), -1);
  assert.equal(errno(), ENOTCONN);
  assert.equal(takeSocketError(fd), 'ECONNRESET');
  // An open socket's shutdown succeeds: the failure above is the reset's, not the call's.
  const other = await pair(t);
  assert.equal(libcCalls().shutdown(socketFd(other.server), SHUT_WR), 0);
  assert.equal(takeSocketError(socketFd(other.server)), null);
});

/** Watches `fd` edge-triggered, as the splice relay does; next(ms) is the flags of its next event, or 0. */
function edgeWatch(t: import('node:test').TestContext, fd: number): (ms: number) => number {
  const sys = libcCalls();
  const epfd = sys.epoll_create1(O_CLOEXEC);
  assert.ok(epfd >= 0, `epoll_create1: errno ${errno()}`);
  t.after(() => sys.close(epfd));
  const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  ev.writeUInt32LE((EPOLLIN | EPOLLRDHUP | EPOLLET) >>> 0, 0);
  assert.equal(sys.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ev), 0);
  const out = Buffer.alloc(EPOLL_EVENT_SIZE);
  return (ms) => (sys.epoll_wait(epfd, out, 1, ms) === 1 ? out.readUInt32LE(0) : 0);
}

async function waitClosed(fd: number): Promise<void> {
  const start = Date.now();
  while (getTcpState(fd) !== TCP_STATE_CLOSE && Date.now() - start < 2000) await new Promise((r) => setTimeout(r, 10));
}

// The splice relay asks SO_ERROR at an EOF only when epoll_wait reported EPOLLERR with it. That
// rests on these: a reset behind a FIN is in the event's flags when both came before the wait,
// though recv reads the FIN as a plain end of stream; and a reset that comes after the FIN's
// event raises a new edge, with EPOLLERR, so the relay still hears of it.
test('a FIN then an RST before epoll_wait: the event has EPOLLERR, recv reads 0 and SO_ERROR holds the reset', async (t) => {
  const { client, server } = await pair(t);
  const fd = socketFd(server);
  server.pause(); // libuv stops reading: nothing consumes the FIN or the reset before we look
  const next = edgeWatch(t, fd);
  client.end();
  await once(client, 'finish');
  await new Promise((r) => setTimeout(r, 50));
  client.resetAndDestroy();
  await waitClosed(fd);
  const flags = next(1000);
  assert.ok(flags & EPOLLIN && flags & EPOLLRDHUP, `flags ${flags.toString(16)}`);
  assert.ok(flags & EPOLLERR, `EPOLLERR with the FIN's event (flags ${flags.toString(16)})`);
  const buf = Buffer.alloc(16);
  assert.equal(libcCalls().recv(fd, buf, 16, 0), 0, 'recv reads the FIN first');
  assert.equal(takeSocketError(fd), 'EPIPE', 'the reset of a socket that had read a FIN (tcp_reset)');
});

test('a FIN alone raises no EPOLLERR, and an RST after its event raises a new edge with EPOLLERR', async (t) => {
  const { client, server } = await pair(t);
  const fd = socketFd(server);
  server.pause();
  const next = edgeWatch(t, fd);
  client.end();
  await once(client, 'finish'); // libuv sends the FIN from its loop, which next() would block
  const fin = next(1000);
  assert.ok(fin & EPOLLRDHUP, `the FIN's event (flags ${fin.toString(16)})`);
  assert.equal(fin & EPOLLERR, 0, `no EPOLLERR with a FIN alone (flags ${fin.toString(16)})`);
  assert.equal(next(50), 0, 'edge-triggered: no second event without a change');
  assert.equal(libcCalls().recv(fd, Buffer.alloc(16), 16, 0), 0);
  client.resetAndDestroy();
  await waitClosed(fd);
  const rst = next(1000);
  assert.ok(rst & EPOLLERR, `the reset's own event (flags ${rst.toString(16)})`);
  assert.equal(takeSocketError(fd), 'EPIPE');
});
