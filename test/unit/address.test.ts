// Endpoints: HOST:PORT, IPv6 as [ADDR]:PORT; every error names the flag or key and says what was
// expected.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HalfcloseError } from '../../src/errors.js';
import { formatEndpoint, parseEndpoint, unmapIPv4 } from '../../src/util/address.js';

test('parses IPv4, bracketed IPv6 and host names', () => {
  assert.deepEqual(parseEndpoint('127.0.0.1:15001', 'x'), { host: '127.0.0.1', port: 15001, family: 4 });
  assert.deepEqual(parseEndpoint('[::1]:15001', 'x'), { host: '::1', port: 15001, family: 6 });
  assert.deepEqual(parseEndpoint('[fd77::2]:7777', 'x'), { host: 'fd77::2', port: 7777, family: 6 });
  assert.deepEqual(parseEndpoint('redis.default.svc:6379', 'x'), { host: 'redis.default.svc', port: 6379, family: 0 });
  assert.deepEqual(parseEndpoint(' 0.0.0.0:0 ', 'x', { allowPortZero: true }), { host: '0.0.0.0', port: 0, family: 4 });
});

function rejects(text: string, what: string, pattern: RegExp, opts: { allowPortZero?: boolean } = {}): void {
  assert.throws(
    () => parseEndpoint(text, what, opts),
    (err: unknown) => err instanceof HalfcloseError && err.code === 'HC_ERR_ADDRESS' && err.message.startsWith(`${what}: `) && pattern.test(err.message),
    `${text} should be rejected with ${pattern}`,
  );
}

test('rejects an address without a port, naming the flag', () => {
  rejects('127.0.0.1', '--outbound', /expected HOST:PORT \(IPv6 as \[ADDR\]:PORT\), got "127.0.0.1"/);
  rejects('localhost', 'listeners[0].listen', /expected HOST:PORT/);
  rejects('127.0.0.1:', '--route UPSTREAM', /numeric port/);
  rejects(':80', '--admin', /expected HOST:PORT/);
});

test('rejects unbracketed IPv6, brackets around IPv4, bad ports and bad names', () => {
  rejects('::1:80', '--inbound', /IPv6 as \[ADDR\]:PORT/);
  rejects('[127.0.0.1]:80', '--inbound', /brackets but no IPv6 address/);
  rejects('127.0.0.1:http', '--outbound', /numeric port/);
  rejects('127.0.0.1:65536', '--outbound', /port 65536 is out of range 1-65535/);
  rejects('127.0.0.1:0', '--route UPSTREAM', /port 0 is out of range 1-65535/);
  rejects('127.0.0.1:70000', '--outbound', /out of range 0-65535/, { allowPortZero: true });
  rejects('bad_host!:80', '--route UPSTREAM', /neither an IP address nor a host name/);
});

test('formats IPv6 with brackets and unmaps IPv4-mapped addresses', () => {
  assert.equal(formatEndpoint({ host: '::1', port: 80 }), '[::1]:80');
  assert.equal(formatEndpoint({ host: '10.0.0.1', port: 80 }), '10.0.0.1:80');
  assert.equal(unmapIPv4('::ffff:10.0.0.1'), '10.0.0.1');
  assert.equal(unmapIPv4('::ffff:abcd'), '::ffff:abcd');
  assert.equal(unmapIPv4('fd77::2'), 'fd77::2');
});
