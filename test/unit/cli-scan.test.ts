// `halfclose scan` as a user runs it: the built binary on captured files, its exit statuses
// (1 leaked, 0 clean, 2 bad usage or unreadable input), formats, and one-line errors.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fixturePath, REPO_ROOT } from '../helpers/fixtures.js';

const BIN = path.join(REPO_ROOT, 'bin/halfclose');
const scan = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, [BIN, 'scan', ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
};
const ss = (name: string): string => fixturePath('ss', name);
const ct = (name: string): string => fixturePath('conntrack', name);

test('a captured leak exits 1 and shows the leaked pair, the port hazard and the verdict', () => {
  const r = scan('--ss', ss('envoy-like-leak.tanoeip.txt'), '--conntrack', ct('envoy-like-leak.L.txt'));
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, '');
  assert.match(r.stdout, /LEAKED \(2 sockets, 1 connection\)/);
  assert.match(r.stdout, /CLOSE-WAIT +10\.77\.0\.1:55004 -> 10\.77\.0\.2:7777/);
  assert.match(r.stdout, /PORT HAZARD/);
  assert.match(r.stdout, /LEAK: 2 leaked sockets in 1 connection/);
});

test('at risk only exits 0; --json and --format prometheus', () => {
  const risk = scan('--ss', ss('envoy-like-half-closed.tanoeip.txt'), '--conntrack', ct('envoy-like-half-closed.extended.txt'), '--json');
  assert.equal(risk.status, 0, risk.stderr);
  const report = JSON.parse(risk.stdout);
  assert.equal(report.findings[0].verdict, 'at-risk');
  assert.equal(report.summary.leakedConnections, 0);
  const prom = scan('--ss', ss('envoy-like-leak.tanoeip.txt'), '--conntrack', ct('envoy-like-leak.L.txt'), '--format', 'prometheus');
  assert.equal(prom.status, 1);
  assert.match(prom.stdout, /^halfclose_scan_leaked_sockets\{netns="files [^"]+",process="node",state="FIN-WAIT-2"\} 1$/m);
});

test('--proxy-ports: the same capture with other ports has no sidecar, exits 0 and says so', () => {
  const r = scan('--ss', ss('envoy-like-leak.tanoeip.txt'), '--conntrack', ct('envoy-like-leak.L.txt'), '--proxy-ports', '8080');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /no listener on port 8080/);
  assert.match(r.stdout, /^CLEAN/m);
});

test('bad usage and unreadable input: one line on stderr, exit 2, no stack', () => {
  const cases: [string[], RegExp][] = [
    [['--bogus'], /^halfclose: scan: unknown flag --bogus/],
    [['--conntrack', ct('envoy-like-leak.L.txt')], /--conntrack needs --ss/],
    [['--netns', 'a', '--pid', '1'], /at most one of/],
    [['--pid', 'abc'], /--pid expects a process id/],
    [['--format', 'xml', '--ss', ss('handmade-plain.tan.txt')], /--format expects one of table, json, prometheus/],
    [['--proxy-ports', '15001,99999', '--ss', ss('handmade-plain.tan.txt')], /--proxy-ports expects/],
    [['--watch', '0'], /--watch expects/],
    [['--netns', 'hc-no-such-namespace'], /network namespace "hc-no-such-namespace" does not exist/],
    [['--pid', '2147483646'], /--pid: process 2147483646 does not exist/],
    [['--ss', '/nonexistent/file'], /--ss: cannot read \/nonexistent\/file: ENOENT/],
    [['--ss', ct('handmade-mixed.L.txt')], /not ss output, line 1: unknown socket state "tcp"/],
  ];
  for (const [args, re] of cases) {
    const r = scan(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

test('--help describes the command and exits 0', () => {
  const r = scan('--help');
  assert.equal(r.status, 0);
  for (const flag of ['--netns', '--pid', '--all-netns', '--ss', '--conntrack', '--proxy-ports', '--format', '--json', '--watch', 'Exit status']) {
    assert.ok(r.stdout.includes(flag), flag);
  }
});
