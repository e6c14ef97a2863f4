// The ss parser against captured and hand-made output: every format the scanner accepts, owners,
// timers, -i idle times, and garbled or fuzzed text that is reported by line and never crashes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isHalfcloseError } from '../../src/errors.js';
import { parseSs, parseSsAddress, parseSsDuration, type TcpSocket } from '../../src/kernel/ss.js';
import { readFixture } from '../helpers/fixtures.js';
import { mutations } from '../helpers/fuzz.js';

const fixture = (name: string): string => readFixture('ss', name);
const find = (socks: TcpSocket[], state: string, localPort: number, peerPort: number): TcpSocket => {
  const s = socks.find((x) => x.state === state && x.local.port === localPort && x.peer.port === peerPort);
  assert.ok(s, `no ${state} ${localPort}->${peerPort} among ${socks.map((x) => `${x.state} ${x.local.port}->${x.peer.port}`).join(', ')}`);
  return s;
};

test('captured leak (ss -tanoeip): sidecar FIN-WAIT-2 and CLOSE-WAIT with owner, shutdown marks and idle times', () => {
  const r = parseSs(fixture('envoy-like-half-closed.tanoeip.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.sockets.length, 4);
  const fin = find(r.sockets, 'FIN-WAIT-2', 15001, 44410);
  assert.deepEqual(fin.local, { host: '127.0.0.1', port: 15001 });
  assert.deepEqual(fin.peer, { host: '10.77.0.1', port: 44410 });
  assert.deepEqual(fin.owners, [{ name: 'node', pid: 8792, fd: 19 }]);
  assert.equal(fin.uid, 1337);
  assert.equal(fin.inode, 18901);
  assert.equal(fin.sk, '12');
  assert.equal(fin.shutdown, '<--');
  assert.equal(fin.line, 8);
  assert.equal(fin.lastsndMs, 928);
  assert.equal(fin.lastrcvMs, 928);
  assert.equal(fin.lastackMs, 608);
  assert.equal(fin.info?.bytes_received, '2');
  assert.equal(fin.info?.send, '318560000bps');
  const up = find(r.sockets, 'CLOSE-WAIT', 55004, 7777);
  assert.deepEqual(up.owners, [{ name: 'node', pid: 8792, fd: 20 }]);
  assert.equal(up.shutdown, '-->');
  // The app's own socket, in the same namespace, has no uid (ss omits uid 0) and another pid.
  const app = find(r.sockets, 'CLOSE-WAIT', 44410, 7777);
  assert.equal(app.uid, undefined);
  assert.equal(app.owners[0]!.pid, 8845);
  const listen = find(r.sockets, 'LISTEN', 15001, 0);
  assert.deepEqual(listen.peer, { host: '0.0.0.0', port: 0 });
});

test('captured HAProxy capture with an IPv6 listener: bracketed addresses, v6only, owners by fd', () => {
  const r = parseSs(fixture('haproxy-leak.tanoeip.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.sockets.length, 8);
  const v6 = find(r.sockets, 'FIN-WAIT-2', 15001, 50334);
  assert.deepEqual(v6.local, { host: '::1', port: 15001 });
  assert.deepEqual(v6.peer, { host: 'fd77::1', port: 50334 });
  assert.deepEqual(v6.owners, [{ name: 'haproxy', pid: 25111, fd: 13 }]);
  assert.equal(v6.lastackMs, 5660);
  assert.deepEqual(find(r.sockets, 'LISTEN', 15001, 0).local, { host: '127.0.0.1', port: 15001 });
});

test('captured leak after the app socket died: only the sidecar pair is left', () => {
  const r = parseSs(fixture('envoy-like-leak.tanoeip.txt'));
  assert.deepEqual(r.problems, []);
  assert.deepEqual(
    r.sockets.map((s) => `${s.state} ${s.local.port}->${s.peer.port} pid=${s.owners[0]?.pid}`),
    ['LISTEN 15001->0 pid=8792', 'CLOSE-WAIT 55004->7777 pid=8792', 'FIN-WAIT-2 15001->44410 pid=8792'],
  );
  assert.equal(find(r.sockets, 'FIN-WAIT-2', 15001, 44410).lastsndMs, 5504);
});

test('ss -naoep with a Netid column: only tcp rows become sockets, the rest are counted as skipped', () => {
  const r = parseSs(fixture('handmade-all.naoep.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.skipped, 5);
  assert.deepEqual(r.sockets.map((s) => s.state), ['LISTEN', 'FIN-WAIT-2', 'CLOSE-WAIT', 'ESTAB']);
  const v6 = find(r.sockets, 'ESTAB', 15001, 50200);
  assert.deepEqual(v6.local, { host: '::1', port: 15001 });
  assert.deepEqual(v6.timer, { name: 'keepalive', expiresMs: 4736, retrans: 0 });
  assert.equal(find(r.sockets, 'FIN-WAIT-2', 15001, 44410).owners[0]!.name, 'envoy');
});

test('IPv6, mapped IPv4, scopes, several owners, every timer form, odd process names', () => {
  const r = parseSs(fixture('handmade-envoy-ipv6.tanoeip.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.sockets.length, 13);
  const listen = find(r.sockets, 'LISTEN', 15001, 0);
  assert.deepEqual(listen.owners.map((o) => o.fd), [38, 39]);
  assert.deepEqual(find(r.sockets, 'LISTEN', 15006, 0).local, { host: '::', port: 15006 });
  const mapped = find(r.sockets, 'FIN-WAIT-2', 15001, 44412);
  assert.deepEqual(mapped.local, { host: '::ffff:127.0.0.1', port: 15001 });
  assert.deepEqual(mapped.peer, { host: '::ffff:10.0.0.7', port: 44412 });
  assert.equal(mapped.lastsndMs, 3615040);
  assert.equal(mapped.info?.app_limited, 'true');
  assert.deepEqual(find(r.sockets, 'FIN-WAIT-2', 15001, 50000).peer, { host: 'fd00::7', port: 50000 });
  assert.deepEqual(find(r.sockets, 'ESTAB', 15001, 44410).timer, { name: 'keepalive', expiresMs: 7500, retrans: 0 });
  assert.deepEqual(find(r.sockets, 'ESTAB', 50100, 443).timer, { name: 'on', expiresMs: 200, retrans: 0 });
  assert.equal(find(r.sockets, 'ESTAB', 50100, 443).sendQ, 36);
  assert.deepEqual(find(r.sockets, 'TIME-WAIT', 38000, 7777).timer, { name: 'timewait', expiresMs: 59_000, retrans: 0 });
  assert.deepEqual(find(r.sockets, 'SYN-SENT', 38100, 7777).timer, { name: 'on', expiresMs: 63_000, retrans: 2 });
  const ssh = find(r.sockets, 'ESTAB', 22, 51000);
  assert.deepEqual(ssh.local, { host: 'fe80::1', port: 22, scope: 'eth0' });
  assert.deepEqual(ssh.owners.map((o) => o.pid), [99, 120]);
  assert.equal(ssh.timer?.expiresMs, 119 * 60_000);
  const orphan = find(r.sockets, 'LAST-ACK', 44420, 7777);
  assert.deepEqual(orphan.owners, []);
  assert.equal(orphan.inode, 0);
  assert.equal(orphan.shutdown, '---');
  assert.equal(find(r.sockets, 'ESTAB', 9000, 41234).owners[0]!.name, 'my app, v2 (x)');
  const noTime = find(r.sockets, 'ESTAB', 9001, 41240);
  assert.equal(noTime.timer?.expiresMs, null);
  assert.equal(noTime.local.scope, 'lo');
});

test('plain ss -tan with header, and old-style output without one', () => {
  const withHeader = parseSs(fixture('handmade-plain.tan.txt'));
  assert.deepEqual(withHeader.problems, []);
  assert.equal(withHeader.sockets.length, 6);
  assert.deepEqual(find(withHeader.sockets, 'FIN-WAIT-2', 15001, 44410).owners, []);
  const old = parseSs(fixture('handmade-plain-noheader-oldstyle.tan.txt'));
  assert.deepEqual(old.problems, []);
  assert.deepEqual(old.sockets[0]!.local, { host: '*', port: 15001 });
  assert.deepEqual(old.sockets[0]!.peer, { host: '*', port: 0 });
  assert.deepEqual(old.sockets[1]!.local, { host: '::', port: 15006 });
  assert.deepEqual(old.sockets[3]!.local, { host: '::1', port: 15001 });
  assert.deepEqual(old.sockets[3]!.peer, { host: 'fd00::7', port: 50000 });
  assert.deepEqual(old.sockets[5]!.peer, { host: '::ffff:10.0.0.7', port: 44412 });
});

test('garbled lines are reported with their number and reason, the readable ones are kept', () => {
  const r = parseSs(fixture('handmade-garbled.txt'));
  assert.deepEqual(
    r.problems.map((p) => [p.line, p.why]),
    [
      [3, 'too few columns (expected State Recv-Q Send-Q Local Peer)'],
      [4, 'unknown socket state "FOO"'],
      [5, 'Recv-Q/Send-Q are not numbers'],
      [6, 'port is a service name in "10.0.0.1:ssh" (capture with ss -n)'],
      [7, 'unreadable address "300.1.1.1:22"'],
      [8, 'malformed users:(…) owner list'],
      [9, 'malformed timer "timer:(keepalive)"'],
      [12, 'unknown socket state "Failed"'],
    ],
  );
  assert.equal(r.problems[0]!.text, 'ESTAB 0 0 10.0.0.1:22');
  assert.deepEqual(r.sockets.map((s) => s.line), [2, 10]);
  assert.equal(r.sockets[1]!.lastackMs, 30);
});

test('strict parsing throws HC_ERR_PARSE naming the first bad line', () => {
  assert.throws(
    () => parseSs(fixture('handmade-garbled.txt'), { strict: true }),
    (err: unknown) => isHalfcloseError(err) && err.code === 'HC_ERR_PARSE' && /^ss output, line 3: too few columns .*"ESTAB 0 0 10\.0\.0\.1:22"$/.test(err.message),
  );
  assert.equal(parseSs(fixture('envoy-like-leak.tanoeip.txt'), { strict: true }).sockets.length, 3);
});

test('a detail line with no socket before it is a problem; one under a skipped row is not', () => {
  assert.deepEqual(parseSs('\t cubic lastsnd:1\n').problems.map((p) => p.line), [1]);
  const r = parseSs('Netid State Recv-Q Send-Q Local Peer\nudp UNCONN 0 0 0.0.0.0:53 0.0.0.0:*\n\t skmem:(r0)\n');
  assert.deepEqual(r.problems, []);
  assert.equal(r.skipped, 1);
});

test('addresses and durations as ss prints them', () => {
  assert.deepEqual(parseSsAddress('[::ffff:10.0.0.1]:80'), { host: '::ffff:10.0.0.1', port: 80 });
  assert.deepEqual(parseSsAddress('[fe80::1]%eth0:22'), { host: 'fe80::1', port: 22, scope: 'eth0' });
  assert.deepEqual(parseSsAddress('*:*'), { host: '*', port: 0 });
  assert.equal(parseSsAddress('10.0.0.1:65536'), null);
  assert.equal(parseSsAddress('10.0.0.1'), null);
  assert.equal(parseSsAddress(':80'), null);
  assert.equal(parseSsDuration('7.500ms'), 7500);
  assert.equal(parseSsDuration('200ms'), 200);
  assert.equal(parseSsDuration('59sec'), 59_000);
  assert.equal(parseSsDuration('1min3sec'), 63_000);
  assert.equal(parseSsDuration('1min'), 60_000);
  assert.equal(parseSsDuration(''), null);
  assert.equal(parseSsDuration('soon'), null);
});

test('fuzz: truncated and mutated ss output never throws, and strict mode throws only HC_ERR_PARSE', () => {
  const seeds = ['envoy-like-half-closed.tanoeip.txt', 'handmade-envoy-ipv6.tanoeip.txt', 'handmade-all.naoep.txt', 'handmade-garbled.txt'].map(fixture);
  let strictFailures = 0;
  for (const input of mutations(seeds, 1500, 0x5eed)) {
    const r = parseSs(input);
    assert.ok(Array.isArray(r.sockets) && Array.isArray(r.problems));
    for (const s of r.sockets) assert.ok(Number.isInteger(s.local.port) && s.local.port >= 0 && s.local.port <= 65535);
    try {
      parseSs(input, { strict: true });
    } catch (err) {
      assert.ok(isHalfcloseError(err) && err.code === 'HC_ERR_PARSE', `unexpected ${String(err)} for input ${JSON.stringify(input.slice(0, 300))}`);
      strictFailures++;
    }
  }
  assert.ok(strictFailures > 100, `mutations should produce garbled lines (got ${strictFailures})`);
});
