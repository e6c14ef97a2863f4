// Address text from ss and conntrack made comparable: one canonical form for IPv4, IPv6
// (compressed, lower case) and IPv4-mapped IPv6, and keys that treat mapped and plain IPv4 alike.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalHost, endpointKey, hostFamily, hostKey, showHostPort } from '../../src/kernel/inet.js';

test('canonicalHost: IPv4, bracketed and expanded IPv6, mapped IPv4 in dotted and hex form', () => {
  assert.equal(canonicalHost('10.0.0.7'), '10.0.0.7');
  assert.equal(canonicalHost('[::1]'), '::1');
  assert.equal(canonicalHost('0000:0000:0000:0000:0000:0000:0000:0001'), '::1');
  assert.equal(canonicalHost('FD00:0000:0000:0000:0000:0000:0000:0198'), 'fd00::198');
  assert.equal(canonicalHost('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1');
  assert.equal(canonicalHost('::ffff:10.0.0.7'), '::ffff:10.0.0.7');
  assert.equal(canonicalHost('[::FFFF:127.0.0.1]'), '::ffff:127.0.0.1');
  assert.equal(canonicalHost('0000:0000:0000:0000:0000:ffff:0a00:0007'), '::ffff:10.0.0.7');
  assert.equal(canonicalHost('*'), '*');
});

test('canonicalHost rejects what is not an address', () => {
  for (const bad of ['', '300.1.1.1', '10.0.0', 'localhost', '[::1', '::g', '1.2.3.4.5', 'fe80::1%eth0']) {
    assert.equal(canonicalHost(bad), null, bad);
  }
});

test('keys: a mapped IPv4 peer and its plain form are the same endpoint; IPv6 is not', () => {
  assert.equal(hostKey('::ffff:10.0.0.7'), '10.0.0.7');
  assert.equal(hostKey('fd00::7'), 'fd00::7');
  assert.equal(endpointKey('::ffff:127.0.0.1', 15001), endpointKey('127.0.0.1', 15001));
  assert.notEqual(endpointKey('::1', 15001), endpointKey('127.0.0.1', 15001));
  assert.notEqual(endpointKey('10.0.0.7', 1), endpointKey('10.0.0.7', 2));
});

test('showHostPort brackets IPv6 and prints port 0 as *; hostFamily', () => {
  assert.equal(showHostPort({ host: '10.0.0.7', port: 44410 }), '10.0.0.7:44410');
  assert.equal(showHostPort({ host: 'fd00::7', port: 50000 }), '[fd00::7]:50000');
  assert.equal(showHostPort({ host: '0.0.0.0', port: 0 }), '0.0.0.0:*');
  assert.equal(hostFamily('::ffff:10.0.0.7'), 4);
  assert.equal(hostFamily('10.0.0.7'), 4);
  assert.equal(hostFamily('::1'), 6);
  assert.equal(hostFamily('*'), 0);
});
