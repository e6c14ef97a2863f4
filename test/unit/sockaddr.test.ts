// The sockaddrs the splice relay's worker binds, connects to and accepts from, and the six-number
// form their addresses travel in between threads: every address comes back as Node prints it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { endpointAt, isMappedV4, pushAddr, sockaddrOf, SOCKADDR_IN6_SIZE, SOCKADDR_IN_SIZE } from '../../src/kernel/sockaddr.js';

test('IPv4 and IPv6 addresses survive sockaddr -> six numbers -> endpoint, in the text Node uses', () => {
  for (const [host, port] of [
    ['127.0.0.1', 15001],
    ['10.77.0.2', 1],
    ['255.255.255.255', 65535],
    ['::1', 15006],
    ['fd77::2', 7777],
    ['2001:db8::1:0:0:1', 443],
    ['2001:db8:0:0:1:0:0:1', 80],
    ['fe80::1', 22],
    ['::', 0],
  ] as const) {
    const sa = sockaddrOf({ host, port });
    assert.equal(sa.length, net.isIPv4(host) ? SOCKADDR_IN_SIZE : SOCKADDR_IN6_SIZE);
    const nums: number[] = [];
    pushAddr(nums, sa);
    // What Node itself would print for this address (its own inet_ntop).
    const expected = new net.SocketAddress({ address: host, family: net.isIPv4(host) ? 'ipv4' : 'ipv6' }).address;
    assert.deepEqual(endpointAt(nums, 0), { host: expected, port, family: net.isIPv4(host) ? 4 : 6 }, host);
  }
});

test('an IPv4-mapped client of a dual-stack listener comes out as plain IPv4 with family 6', () => {
  const nums: number[] = [];
  pushAddr(nums, sockaddrOf({ host: '::ffff:10.0.0.7', port: 44410 }));
  assert.ok(isMappedV4(nums, 0));
  assert.deepEqual(endpointAt(nums, 0), { host: '10.0.0.7', port: 44410, family: 6 });
  const plain: number[] = [];
  pushAddr(plain, sockaddrOf({ host: '10.0.0.7', port: 1 }));
  assert.equal(isMappedV4(plain, 0), false);
});

test('an unknown family reads as family 0 and no endpoint', () => {
  const nums: number[] = [];
  pushAddr(nums, Buffer.alloc(28));
  assert.deepEqual(nums, [0, 0, 0, 0, 0, 0]);
  assert.equal(endpointAt(nums, 0), null);
  assert.throws(() => sockaddrOf({ host: 'localhost', port: 1 }), /not an IP address/);
});
