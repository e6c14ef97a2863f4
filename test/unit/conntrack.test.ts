// The conntrack parser against captured and hand-made tables in the three formats the scanner
// accepts (`conntrack -L`, `-o extended`, /proc/net/nf_conntrack); garbled and fuzzed input.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isHalfcloseError } from '../../src/errors.js';
import { parseConntrack, tupleKeys, type ConntrackEntry } from '../../src/kernel/conntrack.js';
import { readFixture } from '../helpers/fixtures.js';
import { mutations } from '../helpers/fuzz.js';

const fixture = (name: string): string => readFixture('conntrack', name);
/** What the three formats share (zone= and use= differ between conntrack -L and /proc). */
const core = (e: ConntrackEntry): unknown => ({ family: e.family, proto: e.proto, state: e.state, timeoutSec: e.timeoutSec, orig: e.orig, reply: e.reply, unreplied: e.unreplied, assured: e.assured, mark: e.mark });

test('captured half-closed redirect: the REDIRECT entry and the upstream entry, both CLOSE_WAIT', () => {
  const r = parseConntrack(fixture('envoy-like-half-closed.L.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.entries.length, 2);
  const redirect = r.entries[1]!;
  assert.equal(redirect.line, 2);
  assert.equal(redirect.family, 4);
  assert.equal(redirect.proto, 'tcp');
  assert.equal(redirect.protoNum, 6);
  assert.equal(redirect.state, 'CLOSE_WAIT');
  assert.equal(redirect.timeoutSec, 1);
  assert.deepEqual(redirect.orig, { src: '10.77.0.1', dst: '10.77.0.2', sport: 44410, dport: 7777 });
  // The reply tuple is where REDIRECT shows: replies come from the sidecar's 127.0.0.1:15001.
  assert.deepEqual(redirect.reply, { src: '127.0.0.1', dst: '10.77.0.1', sport: 15001, dport: 44410 });
  assert.equal(redirect.assured, true);
  assert.equal(redirect.unreplied, false);
  assert.equal(redirect.mark, 0);
  assert.equal(redirect.use, 1);
  assert.deepEqual(tupleKeys(redirect.reply), { src: '127.0.0.1|15001', dst: '10.77.0.1|44410' });
});

test('the same table as conntrack -L, -o extended and /proc/net/nf_conntrack parses to the same entries', () => {
  const [plain, ext, proc] = ['envoy-like-half-closed.L.txt', 'envoy-like-half-closed.extended.txt', 'envoy-like-half-closed.proc.txt'].map((f) => parseConntrack(fixture(f)));
  for (const r of [plain!, ext!, proc!]) assert.deepEqual(r.problems, []);
  assert.deepEqual(ext!.entries.map(core), plain!.entries.map(core));
  assert.deepEqual(proc!.entries.map(core), plain!.entries.map(core));
  assert.equal(proc!.entries[0]!.zone, 0);
  assert.equal(proc!.entries[0]!.use, 2);
});

test('captured HAProxy table with an IPv6 REDIRECT: the three formats agree, /proc IPv6 compressed', () => {
  const [plain, ext, proc] = ['haproxy-half-closed.L.txt', 'haproxy-half-closed.extended.txt', 'haproxy-half-closed.proc.txt'].map((f) => parseConntrack(fixture(f)));
  for (const r of [plain!, ext!, proc!]) assert.deepEqual(r.problems, []);
  assert.equal(plain!.entries.length, 4);
  assert.deepEqual(ext!.entries.map(core), plain!.entries.map(core));
  assert.deepEqual(proc!.entries.map(core), plain!.entries.map(core));
  const v6 = proc!.entries[2]!;
  assert.equal(v6.family, 6);
  assert.deepEqual(v6.reply, { src: '::1', dst: 'fd77::1', sport: 15001, dport: 50334 });
  assert.deepEqual(parseConntrack(fixture('haproxy-leak.extended.txt')), { entries: [], problems: [] });
});

test('mixed table: UNREPLIED, zones, marks, counters, flags, flow id, udp and icmp, the summary line', () => {
  const r = parseConntrack(fixture('handmade-mixed.L.txt'));
  assert.deepEqual(r.problems, []);
  assert.equal(r.entries.length, 7);
  const [est, syn, v6, udp, icmp, acct, tw] = r.entries as [ConntrackEntry, ConntrackEntry, ConntrackEntry, ConntrackEntry, ConntrackEntry, ConntrackEntry, ConntrackEntry];
  assert.equal(est.state, 'ESTABLISHED');
  assert.equal(est.timeoutSec, 431999);
  assert.equal(syn.unreplied, true);
  assert.equal(syn.assured, false);
  assert.equal(syn.zone, 3);
  assert.equal(v6.family, 6);
  assert.equal(v6.mark, 4096);
  assert.deepEqual(v6.reply, { src: '::1', dst: 'fd00::7', sport: 15001, dport: 50000 });
  assert.equal(udp.proto, 'udp');
  assert.equal(udp.state, undefined);
  assert.equal(udp.unreplied, true);
  assert.equal(icmp.proto, 'icmp');
  assert.deepEqual(icmp.orig, { src: '10.0.0.7', dst: '10.0.0.198', sport: 0, dport: 0 });
  assert.equal(icmp.id, undefined, 'the icmp id= belongs to the tuple, not the flow id');
  assert.deepEqual(acct.orig, { src: '10.0.0.7', dst: '10.0.0.198', sport: 44500, dport: 7777, packets: 12, bytes: 900 });
  assert.equal(acct.reply.bytes, 1200);
  assert.equal(acct.mark, 16);
  assert.equal(acct.id, 3141592653);
  assert.deepEqual(acct.extra, { OFFLOAD: 'true', secctx: 'system_u:object_r:unlabeled_t:s0' });
  assert.equal(tw.state, 'TIME_WAIT');
  assert.equal(tw.zone, 1);
});

test('/proc/net/nf_conntrack prints IPv6 fully expanded; it comes out compressed like ss prints it', () => {
  const proc = parseConntrack(fixture('handmade-mixed.proc.txt'));
  const ext = parseConntrack(fixture('handmade-mixed.extended.txt'));
  assert.deepEqual(proc.problems, []);
  assert.deepEqual(ext.problems, []);
  const p6 = proc.entries.find((e) => e.family === 6)!;
  const e6 = ext.entries.find((e) => e.family === 6 && e.proto === 'tcp')!;
  assert.deepEqual(p6.orig, { src: 'fd00::7', dst: 'fd00::198', sport: 50000, dport: 443 });
  assert.deepEqual(core(p6), core(e6));
  assert.equal(ext.entries.find((e) => e.proto === 'icmpv6')?.protoNum, 58);
});

test('garbled lines are reported with number and reason and skipped; the good line survives', () => {
  const r = parseConntrack(fixture('handmade-garbled.txt'));
  assert.deepEqual(
    r.problems.map((p) => [p.line, p.why]),
    [
      [2, 'timeout (seconds) missing after the protocol'],
      [3, 'protocol number 17 does not match tcp'],
      [4, 'expected two tuples (original and reply)'],
      [5, 'a tuple lacks a valid src= or dst= address'],
      [6, 'a tuple has a missing or invalid port'],
      [7, 'expected PROTO NUMBER at the start (e.g. "tcp 6")'],
      [8, 'a tuple has a missing or invalid port'],
    ],
  );
  assert.equal(r.problems[5]!.text, 'garbage here');
  assert.deepEqual(r.entries.map((e) => e.line), [1]);
});

test('strict parsing throws HC_ERR_PARSE naming the first bad line', () => {
  assert.throws(
    () => parseConntrack(fixture('handmade-garbled.txt'), { strict: true }),
    (err: unknown) => isHalfcloseError(err) && err.code === 'HC_ERR_PARSE' && err.message.startsWith('conntrack output, line 2: timeout (seconds) missing after the protocol: "tcp 6 ESTABLISHED'),
  );
  assert.equal(parseConntrack(fixture('handmade-mixed.L.txt'), { strict: true }).entries.length, 7);
  assert.deepEqual(parseConntrack('', { strict: true }), { entries: [], problems: [] });
});

test('fuzz: truncated and mutated tables never throw, and strict mode throws only HC_ERR_PARSE', () => {
  const seeds = ['envoy-like-half-closed.extended.txt', 'handmade-mixed.L.txt', 'handmade-mixed.proc.txt', 'handmade-garbled.txt'].map(fixture);
  let strictFailures = 0;
  for (const input of mutations(seeds, 1500, 0xc0ffee)) {
    const r = parseConntrack(input);
    for (const e of r.entries) {
      assert.ok(e.orig.sport <= 65535 && e.reply.dport <= 65535);
      assert.ok(e.family === 4 || e.family === 6);
    }
    try {
      parseConntrack(input, { strict: true });
    } catch (err) {
      assert.ok(isHalfcloseError(err) && err.code === 'HC_ERR_PARSE', `unexpected ${String(err)} for input ${JSON.stringify(input.slice(0, 300))}`);
      strictFailures++;
    }
  }
  assert.ok(strictFailures > 100, `mutations should produce garbled lines (got ${strictFailures})`);
});
