// The connection record's JSON: the access log writes Connection.toJSONText(), the admin API
// serves toJSON(); the two must be the same document, byte for byte, in every state a connection
// can be in. And iso(), which both use, must write exactly what Date.prototype.toISOString does.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveConfig } from '../../src/config/schema.js';
import { accessLine } from '../../src/proxy/accesslog.js';
import { Connection, iso } from '../../src/proxy/registry.js';
import { SLOT_FIELDS } from '../../src/proxy/splice-protocol.js';

const config = resolveConfig(
  {
    listeners: [
      { kind: 'route', name: 'web', listen: '127.0.0.1:0', upstream: '127.0.0.1:8080' },
      { kind: 'outbound', name: 'out "quoted" \u00e9\u2028', listen: '[::1]:0' },
    ],
    admin: { address: 'off' },
  },
  'test',
);
const [route, outbound] = config.listeners as [(typeof config.listeners)[0], (typeof config.listeners)[0]];

function same(conn: Connection, now: number, what: string): void {
  assert.equal(conn.toJSONText(now), JSON.stringify(conn.toJSON(now)), what);
}

test('toJSONText is JSON.stringify(toJSON()) from accept to close, for both relays', () => {
  const t0 = Date.UTC(2026, 11, 4, 1, 2, 3, 7);
  const c = new Connection(41, route, null, { host: '127.0.0.1', port: 50123, family: 4 }, t0);
  same(c, t0 + 1, 'connecting, nothing known yet');
  c.target = route.upstream;
  c.connectedAt = t0 + 2;
  c.upstreamLocal = { host: '127.0.0.1', port: 40000, family: 4 };
  // Bytes, paused flags and activity read from the splice relay's shared counters.
  const live = new Float64Array(4 * SLOT_FIELDS);
  c.follow(live, 2 * SLOT_FIELDS);
  live.set([t0 + 95, 1234, 98765, 3, 10, 20, 8, 9], 2 * SLOT_FIELDS);
  same(c, t0 + 100, 'open, both directions paused');
  c.c2s.state = 'fin-received';
  c.c2s.finReceivedAt = t0 + 120;
  c.halfClosedAt = t0 + 120;
  same(c, t0 + 130, 'half-closed by the client');
  c.c2s.state = 'fin-forwarded';
  c.c2s.finForwardedAt = t0 + 999;
  c.keepalive = '20:20:3';
  same(c, t0 + 1000, 'guarded');
  c.unfollowWith(1300, 99000, t0 + 1001);
  c.s2c.state = 'reset';
  c.s2c.resetAt = t0 + 1090;
  c.closedAt = t0 + 1100;
  c.reason = 'upstream-reset';
  c.error = 'upstream: ECONNRESET "quoted" \\ back\nslash \u0001 \ud83d\ude00 \ud800';
  same(c, c.closedAt, 'closed with an error that needs escaping');
  same(c, c.closedAt, 'twice: the cached endpoint and listener texts are the same');
});

test('toJSONText matches for IPv6, original destinations and odd listener names', () => {
  const t0 = Date.UTC(2031, 0, 1, 0, 0, 0, 0) + 0.75; // a fractional millisecond
  const c = new Connection(1, outbound, null, { host: '::1', port: 1, family: 6 }, t0);
  const dst = { host: 'fd00::1:2', port: 443, family: 6 as const };
  c.target = dst;
  c.originalDst = dst;
  same(c, t0, 'IPv6, no upstream yet');
  c.upstreamLocal = { host: '::6', port: 9, family: 6 };
  same(c, t0 + 5, 'connected from ::6');
  c.closedAt = t0 + 10;
  same(c, t0 + 10, 'closed without a reason yet');
  c.reason = 'drain';
  same(c, t0 + 10, 'drained');
});

// toJSONText keeps the text of recent timestamps (by millisecond, in a few slots) and of each
// host's endpoint head: many records with timestamps that share and collide in those slots,
// hosts seen again and again, every direction state, resets and pauses, must still each be
// their own JSON.stringify(toJSON()).
test('toJSONText stays JSON.stringify(toJSON()) over many records sharing timestamps, hosts and states', () => {
  const hosts = ['127.0.0.1', '10.0.0.7', '::1', 'fd00::1:2', 'fe80::1%eth0'];
  const states = ['open', 'fin-received', 'fin-forwarded', 'reset'] as const;
  const reasons = [null, 'both-fin', 'upstream-reset', 'drain'] as const;
  let x = 987654321;
  const pick = (n: number): number => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x % n;
  };
  const t0 = Date.UTC(2026, 11, 4, 23, 59, 59, 900);
  // Timestamps from a window of 300 ms around a second's change, some 64 ms apart (one slot), or 0.
  const at = (): number => (pick(4) === 0 ? 0 : t0 + pick(300) + (pick(2) ? 64 : 0));
  const endpoint = (): { host: string; port: number; family: 4 | 6 } | null =>
    pick(6) === 0 ? null : { host: hosts[pick(hosts.length)]!, port: pick(65536), family: pick(2) ? 4 : 6 };
  for (let i = 0; i < 3000; i++) {
    const c = new Connection(i, pick(2) ? route : outbound, null, endpoint() ?? { host: '127.0.0.1', port: 1, family: 4 }, at() || t0);
    c.upstreamLocal = endpoint();
    c.target = endpoint();
    c.originalDst = endpoint();
    c.connectedAt = at();
    for (const d of [c.c2s, c.s2c]) {
      d.state = states[pick(4)]!;
      d.bytes = pick(3) ? pick(1e9) : 2 ** 40 + pick(1000);
      d.finReceivedAt = at();
      d.finForwardedAt = at();
      d.resetAt = at();
      d.paused = pick(4) === 0;
    }
    c.halfClosedAt = at();
    c.closedAt = pick(3) ? at() : 0;
    c.reason = reasons[pick(4)]!;
    c.keepalive = pick(3) ? null : '7:3:4';
    c.error = pick(3) ? null : 'upstream: "ECONNRESET" \\ \n';
    same(c, t0 + 400, `record ${i}`);
  }
});

test('the access-log line is one JSON object with level, time, the record and msg', () => {
  const c = new Connection(7, route, null, { host: '10.1.2.3', port: 5, family: 4 }, 1_700_000_000_001);
  c.closedAt = 1_700_000_000_050;
  c.reason = 'connect-refused';
  c.error = 'ECONNREFUSED connecting to 127.0.0.1:8080';
  const line = accessLine(c, 1_700_000_000_051);
  assert.ok(line.endsWith('}\n'));
  assert.deepEqual(JSON.parse(line), {
    level: 'info',
    time: new Date(1_700_000_000_051).toISOString(),
    ...JSON.parse(JSON.stringify(c.toJSON(c.closedAt))),
    msg: 'connection closed',
  });
});

test('iso() writes what toISOString writes', () => {
  const samples = [1, 999, 1000, 1001, 59_999, 1_700_000_000_000, 1_700_000_000_009, 1_700_000_000_099, 1_700_000_000_100.9, 253402300799999, -1, -86_400_001, 253402300800000, 8.64e15];
  let x = 123456789;
  for (let i = 0; i < 2000; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    samples.push(1_600_000_000_000 + x * 97 + (i % 3) * 0.5);
  }
  for (const ms of samples) assert.equal(iso(ms), new Date(ms).toISOString(), String(ms));
  assert.equal(iso(0), null, '0 means "has not happened"');
});
