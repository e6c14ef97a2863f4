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
import { errno, libcCalls, SHUT_WR } from '../../src/kernel/libc.js';

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
