// The scanner's verdicts on captured and hand-made namespaces: a real leak (conntrack entry gone),
// the same connection one second earlier (at risk), IPv6 and mapped addresses, data without owners
// or timing, keepalive-guarded connections, and the output formats.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConntrack } from '../../src/kernel/conntrack.js';
import { parseNetstat } from '../../src/kernel/netstat.js';
import { parseSs } from '../../src/kernel/ss.js';
import { analyze, type ScanInput } from '../../src/scan/analyze.js';
import { collectFiles } from '../../src/scan/collect.js';
import { formatChanges, formatPrometheus, formatTable } from '../../src/scan/format.js';
import { fixturePath, readFixture } from '../helpers/fixtures.js';

const files = (ss: string, ct?: string): ScanInput => collectFiles(fixturePath('ss', ss), ct === undefined ? undefined : fixturePath('conntrack', ct));
const input = (ss: string, ct: string | null, extra: Partial<ScanInput> = {}): ScanInput => ({
  where: 'test',
  sockets: parseSs(ss).sockets,
  conntrack: ct === null ? null : parseConntrack(ct).entries,
  closeWaitTimeoutSec: 60,
  counters: {},
  problems: [],
  ...extra,
});

test('captured leak: FIN-WAIT-2 to the app with no conntrack entry is leaked, paired with its CLOSE-WAIT upstream', () => {
  const r = analyze(files('envoy-like-leak.tanoeip.txt', 'envoy-like-leak.L.txt'));
  assert.equal(r.findings.length, 1);
  const f = r.findings[0]!;
  assert.equal(f.verdict, 'leaked');
  assert.equal(f.reason, 'conntrack-entry-gone');
  assert.equal(f.downstream.local, '127.0.0.1:15001');
  assert.equal(f.downstream.peer, '10.77.0.1:44410');
  assert.deepEqual(f.downstream.process, { name: 'node', pid: 8792, fd: 19 });
  assert.equal(f.downstream.idleMs, 5184);
  assert.equal(f.upstream?.local, '10.77.0.1:55004');
  assert.equal(f.upstream?.state, 'CLOSE-WAIT');
  assert.equal(f.pairing, 'owner-and-timing');
  assert.match(f.explanation, /conntrack entry is gone/);
  assert.deepEqual(r.summary, { leakedSockets: 2, leakedConnections: 1, atRiskConnections: 0, halfClosedHealthy: 0, unjudged: 0 });
  assert.deepEqual(r.portHazards.map((h) => h.app), ['10.77.0.1:44410']);
  assert.deepEqual(r.sidecar, { listeners: ['127.0.0.1:15001'], processes: [{ name: 'node', pid: 8792 }] });
});

test('captured one second earlier: entry still CLOSE_WAIT, app socket alive, no keepalive: at risk, not leaked', () => {
  for (const ct of ['envoy-like-half-closed.L.txt', 'envoy-like-half-closed.extended.txt', 'envoy-like-half-closed.proc.txt']) {
    const r = analyze(files('envoy-like-half-closed.tanoeip.txt', ct));
    assert.equal(r.findings.length, 1, ct);
    const f = r.findings[0]!;
    assert.equal(f.verdict, 'at-risk');
    assert.equal(f.reason, 'conntrack-expiring');
    assert.deepEqual(f.conntrack, { state: 'CLOSE_WAIT', timeoutSec: 1, originalDst: '10.77.0.2:7777' });
    assert.equal(f.app.socket?.state, 'CLOSE-WAIT');
    assert.equal(f.app.socket?.process?.pid, 8845);
    // The app's own CLOSE-WAIT socket is towards the same destination but must not be taken as the partner.
    assert.equal(f.upstream?.local, '10.77.0.1:55004');
    assert.equal(f.pairing, 'original-destination');
    assert.equal(r.summary.leakedConnections, 0);
    assert.deepEqual(r.portHazards, []);
  }
});

test('captured HAProxy leak, IPv4 and IPv6 listeners: two leaks, four sockets, and an honest word on pairing', () => {
  const r = analyze(files('haproxy-leak.tanoeip.txt', 'haproxy-leak.extended.txt'));
  assert.deepEqual(r.sidecar, { listeners: ['127.0.0.1:15001', '[::1]:15001'], processes: [{ name: 'haproxy', pid: 25111 }] });
  assert.deepEqual(
    r.findings.map((f) => [f.verdict, f.reason, f.downstream.local, f.downstream.peer, f.upstream?.state, f.upstream?.process?.name]),
    [
      ['leaked', 'conntrack-entry-gone', '127.0.0.1:15001', '10.77.0.1:59030', 'CLOSE-WAIT', 'haproxy'],
      ['leaked', 'conntrack-entry-gone', '[::1]:15001', '[fd77::1]:50334', 'CLOSE-WAIT', 'haproxy'],
    ],
  );
  // Both upstream sockets go to 10.77.0.2:7777 and went quiet 4 ms apart: each is used once, and
  // the report says the two may be swapped rather than pretend to know.
  assert.deepEqual(new Set(r.findings.map((f) => f.upstream?.local)), new Set(['10.77.0.1:59044', '10.77.0.1:59050']));
  assert.match(r.findings[0]!.pairingNote, /uncertain: another candidate/);
  assert.equal(r.summary.leakedSockets, 4);
  assert.deepEqual(r.portHazards.map((h) => h.app), ['10.77.0.1:59030', '[fd77::1]:50334']);
  // The same namespace 4.5 s earlier: both at risk, original destinations from conntrack, IPv6 included.
  for (const ct of ['haproxy-half-closed.L.txt', 'haproxy-half-closed.extended.txt', 'haproxy-half-closed.proc.txt']) {
    const early = analyze(files('haproxy-half-closed.tanoeip.txt', ct));
    assert.deepEqual(early.findings.map((f) => [f.verdict, f.conntrack?.originalDst]), [['at-risk', '10.77.0.2:7777'], ['at-risk', '[fd77::2]:7777']], ct);
  }
});

test('the same half-closed connection with a keepalive due before the entry expires is healthy', () => {
  const ss = readFixture('ss', 'envoy-like-half-closed.tanoeip.txt').replace(
    'users:(("node",pid=8792,fd=19))',
    'timer:(keepalive,300ms,0) users:(("node",pid=8792,fd=19))',
  );
  const ct = readFixture('conntrack', 'envoy-like-half-closed.L.txt').replace(/tcp {6}6 1 /g, 'tcp      6 20 ');
  const r = analyze(input(ss, ct));
  assert.deepEqual(r.findings, []);
  assert.equal(r.summary.halfClosedHealthy, 1);
});

test('IPv6 and mapped IPv4: one leak by lost entry, one by a vanished app socket with its entry still there', () => {
  const r = analyze(files('handmade-envoy-ipv6.tanoeip.txt', 'handmade-mixed.L.txt'));
  assert.deepEqual(
    r.findings.map((f) => [f.verdict, f.reason, f.downstream.peer, f.upstream?.local ?? null]),
    [
      ['leaked', 'conntrack-entry-gone', '[::ffff:10.0.0.7]:44412', '10.0.0.7:38072'],
      ['leaked', 'app-socket-gone', '[fd00::7]:50000', null],
    ],
  );
  // The ESTAB downstream 127.0.0.1:15001 <-> 10.0.0.7:44410 has a live entry and is not half-closed: not a finding.
  assert.equal(r.summary.leakedSockets, 3);
  assert.match(r.findings[1]!.pairingNote, /no CLOSE-WAIT upstream socket/);
});

test('ss -naoep with other socket kinds, no conntrack: judged by the app socket alone, and said so', () => {
  const r = analyze(files('handmade-all.naoep.txt'));
  assert.equal(r.findings.length, 1);
  assert.equal(r.findings[0]!.reason, 'app-socket-gone');
  assert.equal(r.findings[0]!.upstream?.local, '10.0.0.7:38072');
  assert.equal(r.findings[0]!.pairing, 'owner');
  assert.ok(r.notes.some((n) => n.includes('no conntrack table (no --conntrack file given)')));
});

test('plain ss -tan without owners or timing: still finds the leak, pairs by elimination and says what is missing', () => {
  const r = analyze(files('handmade-plain.tan.txt'));
  assert.equal(r.findings.length, 1);
  assert.equal(r.findings[0]!.upstream?.local, '10.0.0.7:38072');
  assert.match(r.findings[0]!.pairingNote, /elimination/);
  assert.ok(r.notes.some((n) => n.includes('ss -p')));
  assert.ok(r.notes.some((n) => n.includes('-i detail')));
});

test('two leaked connections of one process without timing cannot be told apart: unpaired, and said so', () => {
  const ss = [
    'LISTEN 0 128 127.0.0.1:15001 0.0.0.0:* users:(("envoy",pid=5,fd=3))',
    'FIN-WAIT-2 0 0 127.0.0.1:15001 10.0.0.7:1000 users:(("envoy",pid=5,fd=4))',
    'FIN-WAIT-2 0 0 127.0.0.1:15001 10.0.0.7:1001 users:(("envoy",pid=5,fd=5))',
    'CLOSE-WAIT 0 0 10.0.0.7:2000 10.0.0.9:80 users:(("envoy",pid=5,fd=6))',
    'CLOSE-WAIT 0 0 10.0.0.7:2001 10.0.0.9:81 users:(("envoy",pid=5,fd=7))',
  ].join('\n');
  const r = analyze(input(ss, ''));
  assert.equal(r.findings.length, 2);
  for (const f of r.findings) {
    assert.equal(f.pairing, 'unpaired');
    assert.match(f.pairingNote, /2 CLOSE-WAIT upstream sockets .* cannot tell/);
  }
  assert.equal(r.summary.leakedSockets, 2);
});

test('orphaned FIN-WAIT-2 and other ports are not findings; --proxy-ports moves the sidecar', () => {
  const ss = [
    'LISTEN 0 128 0.0.0.0:8443 0.0.0.0:* users:(("haproxy",pid=9,fd=3))',
    'FIN-WAIT-2 0 0 127.0.0.1:15001 10.0.0.7:1000 timer:(timewait,30sec,0) ino:0 sk:1',
    'FIN-WAIT-2 0 0 10.0.0.5:8443 10.0.0.7:1001 users:(("haproxy",pid=9,fd=5))',
    'CLOSE-WAIT 0 0 10.0.0.5:3000 10.0.0.9:80 users:(("haproxy",pid=9,fd=6))',
  ].join('\n');
  const byDefault = analyze(input(ss, ''));
  assert.deepEqual(byDefault.findings, []);
  assert.ok(byDefault.notes.some((n) => n.includes('no owner')));
  const haproxy = analyze(input(ss, '', { proxyPorts: [8443] }));
  assert.equal(haproxy.findings.length, 1);
  assert.equal(haproxy.findings[0]!.downstream.process?.name, 'haproxy');
  assert.equal(haproxy.findings[0]!.upstream?.local, '10.0.0.5:3000');
});

test('a sidecar that dropped the app side but kept its upstream CLOSE-WAIT is named in a note, not counted as a leak', () => {
  // Shape seen live when a relay destroyed the downstream socket right after forwarding the FIN.
  const ss = [
    'LISTEN 0 1024 127.0.0.1:15001 0.0.0.0:* users:(("node",pid=7,fd=18)) uid:1337 ino:10 sk:1 <->',
    'CLOSE-WAIT 0 0 10.77.0.1:41260 10.77.0.2:7777 users:(("app",pid=8,fd=18)) ino:11 sk:2 -->',
    'CLOSE-WAIT 0 0 10.77.0.1:41272 10.77.0.2:7777 users:(("node",pid=7,fd=20)) uid:1337 ino:12 sk:3 -->',
    'FIN-WAIT-2 0 0 127.0.0.1:15001 10.77.0.1:41260 timer:(timewait,59sec,0) ino:0 sk:4',
  ].join('\n');
  const ct = readFixture('conntrack', 'envoy-like-half-closed.L.txt').replaceAll('44410', '41260').replaceAll('55004', '41272');
  const r = analyze(input(ss, ct));
  assert.deepEqual(r.findings, []);
  assert.ok(r.notes.some((n) => n.startsWith('1 CLOSE-WAIT socket(s) of the sidecar have no socket towards the app left to pair with (10.77.0.1:41272 -> 10.77.0.2:7777)')), r.notes.join('\n'));
  assert.ok(r.notes.some((n) => n.includes('no owner')));
  // A healthy half-closed pair leaves no such note.
  const healthy = analyze(files('envoy-like-half-closed.tanoeip.txt', 'envoy-like-half-closed.L.txt'));
  assert.ok(!healthy.notes.some((n) => n.includes('no socket towards the app')));
  assert.ok(!analyze(files('haproxy-leak.tanoeip.txt', 'haproxy-leak.extended.txt')).notes.some((n) => n.includes('no socket towards the app')));
});

test('garbled input lines become notes with their line number; a file that is not ss output is HC_ERR_PARSE', () => {
  const r = analyze(files('handmade-garbled.txt', 'handmade-garbled.txt'));
  assert.ok(r.notes.includes('ss line 3 skipped: too few columns (expected State Recv-Q Send-Q Local Peer)'));
  assert.ok(r.notes.includes('conntrack line 7 skipped: expected PROTO NUMBER at the start (e.g. "tcp 6")'));
  assert.throws(
    () => collectFiles(fixturePath('conntrack', 'handmade-mixed.L.txt'), undefined),
    (e: Error & { code?: string }) => e.code === 'HC_ERR_PARSE' && /not ss output, line 1: unknown socket state "tcp"/.test(e.message),
  );
  assert.throws(() => collectFiles('/nonexistent/ss.txt', undefined), (e: Error & { code?: string }) => e.code === 'HC_ERR_USAGE' && /ENOENT/.test(e.message));
});

test('table, prometheus and --watch changes', async () => {
  const leak = analyze(files('envoy-like-leak.tanoeip.txt', 'envoy-like-leak.L.txt'));
  const risk = analyze(files('envoy-like-half-closed.tanoeip.txt', 'envoy-like-half-closed.L.txt'));
  const table = formatTable(leak);
  assert.match(table, /LEAKED \(2 sockets, 1 connection\)/);
  assert.match(table, /FIN-WAIT-2 +127\.0\.0\.1:15001 -> 10\.77\.0\.1:44410 +node pid 8792 fd 19 +idle 5s/);
  assert.match(table, /PORT HAZARD/);
  assert.match(table, /LEAK: 2 leaked sockets in 1 connection, 0 at risk\n$/);
  assert.match(formatTable(risk), /AT RISK: no leak yet, 1 half-closed connection will leak/);
  const prom = await formatPrometheus([{ ...leak, where: 'netns pod-1' }]);
  assert.match(prom, /^halfclose_scan_leaked_sockets\{netns="pod-1",process="node",state="FIN-WAIT-2"\} 1$/m);
  assert.match(prom, /^halfclose_scan_leaked_sockets\{netns="pod-1",process="node",state="CLOSE-WAIT"\} 1$/m);
  assert.match(prom, /^halfclose_scan_leaked_connections\{netns="pod-1"\} 1$/m);
  assert.deepEqual(
    formatChanges([{ ...risk, where: 'x' }], [{ ...leak, where: 'x' }]),
    ['~ at-risk -> leaked x: 127.0.0.1:15001 -> 10.77.0.1:44410 (conntrack-entry-gone)'],
  );
  assert.deepEqual(formatChanges([{ ...leak, where: 'x' }], [{ ...risk, where: 'x', findings: [] }]), ['- gone x: 127.0.0.1:15001 -> 10.77.0.1:44410 (was leaked)']);
});

test('parseNetstat reads the challenge-ACK counters the way nstat names them', () => {
  const text = 'TcpExt: SyncookiesSent TCPChallengeACK TCPSYNChallenge\nTcpExt: 0 7 3\nIpExt: InNoRoutes\nIpExt: 0\nMPTcpExt: A B\nMPTcpExt: 1\n';
  assert.deepEqual(parseNetstat(text), { TcpExtSyncookiesSent: 0, TcpExtTCPChallengeACK: 7, TcpExtTCPSYNChallenge: 3, IpExtInNoRoutes: 0 });
});
