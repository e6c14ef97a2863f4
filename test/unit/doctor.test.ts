// `halfclose doctor`: the judgement on settings written down here (stock kernel, a lowered
// CLOSE_WAIT, no conntrack, tcp_loose off, a full table), then the CLI as a user runs it: real
// settings of this namespace, exit statuses (1 leak possible, 0 not, 2 bad usage), one-line errors.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveConfig, type FileConfig } from '../../src/config/schema.js';
import { CLOSE_WAIT_SYSCTL, KERNEL_SETTINGS, sysctlPath, type KernelSettings } from '../../src/kernel/conntrack-settings.js';
import { assess, type DoctorReport, type DoctorTarget } from '../../src/doctor/assess.js';
import { formatReport } from '../../src/doctor/format.js';

/** Linux 6.x defaults, as `halfclose doctor` printed them on a fresh namespace. */
const STOCK: KernelSettings = {
  'net.netfilter.nf_conntrack_tcp_timeout_syn_sent': 120,
  'net.netfilter.nf_conntrack_tcp_timeout_syn_recv': 60,
  'net.netfilter.nf_conntrack_tcp_timeout_established': 432000,
  'net.netfilter.nf_conntrack_tcp_timeout_fin_wait': 120,
  'net.netfilter.nf_conntrack_tcp_timeout_close_wait': 60,
  'net.netfilter.nf_conntrack_tcp_timeout_last_ack': 30,
  'net.netfilter.nf_conntrack_tcp_timeout_time_wait': 120,
  'net.netfilter.nf_conntrack_tcp_timeout_close': 10,
  'net.netfilter.nf_conntrack_tcp_timeout_max_retrans': 300,
  'net.netfilter.nf_conntrack_tcp_timeout_unacknowledged': 300,
  'net.netfilter.nf_conntrack_tcp_loose': 1,
  'net.netfilter.nf_conntrack_tcp_be_liberal': 0,
  'net.netfilter.nf_conntrack_tcp_ignore_invalid_rst': 0,
  'net.netfilter.nf_conntrack_max': 262144,
  'net.netfilter.nf_conntrack_count': 12,
  'net.ipv4.tcp_keepalive_time': 7200,
  'net.ipv4.tcp_keepalive_intvl': 75,
  'net.ipv4.tcp_keepalive_probes': 9,
  'net.ipv4.tcp_fin_timeout': 60,
};
const NO_CONNTRACK = Object.fromEntries(KERNEL_SETTINGS.map((k) => [k, k.startsWith('net.netfilter.') ? null : STOCK[k]])) as KernelSettings;

const halfclose = (file: FileConfig = {}): DoctorTarget => ({ kind: 'halfclose', config: resolveConfig({ listeners: [], admin: { address: 'off' }, ...file }, 'test'), source: 'test' });
const envoy = (idleTimeoutMs: number): DoctorTarget => ({ kind: 'envoy-like', idleTimeoutMs });
const ids = (r: DoctorReport, level?: string): string[] => r.findings.filter((f) => level === undefined || f.level === level).map((f) => f.id);

test('halfclose with its defaults on a stock kernel: no leak, entries refreshed every 20 s, a lost one reclaimed within 80 s', () => {
  const r = assess(STOCK, halfclose());
  assert.equal(r.leakPossible, false);
  assert.match(r.verdict, /cannot happen: the guard probes half-closed connections every 20s \(after 20s idle\), below the 60s CLOSE_WAIT timeout.*reclaimed within 80s/);
  assert.deepEqual(r.guard?.halfClosed, { idleSec: 20, intervalSec: 20, count: 3 });
  assert.deepEqual(ids(r, 'leak'), []);
  assert.ok(ids(r, 'ok').includes('guard'));
  // A lowered timeout is followed: 6 s -> 2:2:3.
  assert.match(assess({ ...STOCK, [CLOSE_WAIT_SYSCTL]: 6 }, halfclose()).verdict, /every 2s \(after 2s idle\), below the 6s/);
});

test('an Envoy-like proxy: the default 1 h idle timeout leaks until it fires; no idle timeout leaks forever; a short one cuts instead', () => {
  const r = assess(STOCK, envoy(3_600_000));
  assert.equal(r.leakPossible, true);
  assert.match(r.verdict, /CAN happen: a connection half-closed and idle for more than 60s loses its conntrack entry.*FIN-WAIT-2 and a CLOSE-WAIT socket until the idle timeout, 1h/);
  const leak = r.findings.find((f) => f.level === 'leak');
  assert.equal(leak?.id, 'close-wait-vs-idle');
  assert.match(leak?.fix ?? '', /sysctl -w net\.netfilter\.nf_conntrack_tcp_timeout_close_wait=3660/);
  assert.match(leak?.fix ?? '', /default interval 75s is not enough/);
  assert.match(assess(STOCK, envoy(0)).verdict, /forever/);
  const short = assess(STOCK, envoy(30_000));
  assert.equal(short.leakPossible, false);
  assert.match(short.verdict, /cannot last.*cutting every connection idle for 30s/);
  // The boundary: an idle timeout equal to the CLOSE_WAIT timeout fires first.
  assert.equal(assess(STOCK, envoy(60_000)).leakPossible, false);
  assert.equal(assess(STOCK, envoy(61_000)).leakPossible, true);
});

test('halfclose --keepalive off leaks like Envoy; a fixed keepalive slower than CLOSE_WAIT leaks too, naming the value', () => {
  const off = assess(STOCK, halfclose({ keepalive: { halfClosed: 'off' } }));
  assert.equal(off.leakPossible, true);
  assert.match(off.verdict, /keepalive on half-closed connections is off.*until the idle timeout \(1h\)/);
  assert.deepEqual(ids(off, 'leak'), ['guard-off']);
  // With a half-close timeout below CLOSE_WAIT the connection is cut before its entry expires.
  const cut = assess(STOCK, halfclose({ keepalive: { halfClosed: 'off' }, timeouts: { halfClose: '30s' } }));
  assert.equal(cut.leakPossible, false);
  assert.match(cut.verdict, /half-close timeout 30s ends idle half-closed connections/);
  const slow = assess(STOCK, halfclose({ keepalive: { halfClosed: '10:75:3' } }));
  assert.equal(slow.leakPossible, true);
  assert.match(slow.findings.find((f) => f.level === 'leak')?.message ?? '', /interval 75s is not below the conntrack CLOSE_WAIT timeout 60s/);
});

test('no conntrack in the namespace: no REDIRECT, no leak, for any proxy', () => {
  for (const t of [halfclose(), envoy(3_600_000), halfclose({ keepalive: { halfClosed: 'off' } })]) {
    const r = assess(NO_CONNTRACK, t);
    assert.equal(r.leakPossible, false);
    assert.match(r.verdict, /no conntrack, hence no REDIRECT/);
    assert.equal(r.findings[0]?.id, 'conntrack-absent');
  }
  assert.match(formatReport(assess(NO_CONNTRACK, halfclose())), /nf_conntrack_tcp_timeout_close_wait +\(absent\)/);
});

test('tcp_loose off, a nearly full table, be_liberal and ignore_invalid_rst are each reported with what they mean', () => {
  const r = assess(
    {
      ...STOCK,
      'net.netfilter.nf_conntrack_tcp_loose': 0,
      'net.netfilter.nf_conntrack_count': 1900,
      'net.netfilter.nf_conntrack_max': 2000,
      'net.netfilter.nf_conntrack_tcp_be_liberal': 1,
      'net.netfilter.nf_conntrack_tcp_ignore_invalid_rst': 1,
    },
    envoy(3_600_000),
  );
  assert.deepEqual(ids(r, 'warn').sort(), ['table-full', 'tcp-loose-off']);
  assert.match(r.findings.find((f) => f.id === 'tcp-loose-off')!.message, /a late message .* is lost/);
  assert.match(r.findings.find((f) => f.id === 'table-full')!.message, /95% full \(1900 of 2000\)/);
  assert.ok(ids(r, 'info').includes('be-liberal') && ids(r, 'info').includes('ignore-invalid-rst'));
  // Stock values raise none of these.
  assert.deepEqual(ids(assess(STOCK, envoy(3_600_000)), 'warn'), []);
});

test('the text report lists every setting, each finding with its fix, and the verdict last', () => {
  const text = formatReport(assess(STOCK, envoy(3_600_000), 'ns1'));
  assert.match(text, /^halfclose doctor: network namespace ns1\n/);
  for (const k of KERNEL_SETTINGS) assert.match(text, new RegExp(`\\n  ${k.replace(/\./g, '\\.')} +\\d+\\n`));
  assert.match(text, /\n  LEAK  .*\n        fix: run halfclose/);
  assert.match(text, /\nverdict: the half-close leak CAN happen: .*\n$/);
});

// The CLI, run as a child process: from dist/ (compiled) or through tsx (npx tsx --test).
const here = fileURLToPath(import.meta.url);
const fromSource = here.endsWith('.ts');
const mainPath = fileURLToPath(new URL(`../../src/cli/main.${fromSource ? 'ts' : 'js'}`, import.meta.url));
function doctor(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [...(fromSource ? ['--import', 'tsx'] : []), mainPath, 'doctor', ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function readHere(name: string): number | null {
  try {
    return Number(readFileSync(sysctlPath(name), 'utf8').trim());
  } catch {
    return null;
  }
}

test('CLI --json reads this namespace\'s real settings; the exit status follows the verdict', () => {
  const r = doctor('--json');
  assert.equal(r.stderr, '');
  const report = JSON.parse(r.stdout) as DoctorReport;
  for (const k of ['net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl', CLOSE_WAIT_SYSCTL] as const) assert.equal(report.settings[k], readHere(k), k);
  assert.equal(report.target.kind, 'halfclose');
  assert.equal(r.status, report.leakPossible ? 1 : 0);
  // An Envoy-like proxy with no idle timeout leaks wherever conntrack is loaded.
  const e = doctor('--idle-timeout', '0', '--json');
  const er = JSON.parse(e.stdout) as DoctorReport;
  assert.equal(er.leakPossible, readHere(CLOSE_WAIT_SYSCTL) !== null);
  assert.equal(e.status, er.leakPossible ? 1 : 0);
});

test('CLI --config judges halfclose with that file: keepalive off and no idle timeout leak forever where conntrack is loaded', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hc-doctor-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'halfclose.yaml');
  writeFileSync(file, 'keepalive:\n  halfClosed: "off"\ntimeouts:\n  idle: "0"\n');
  const r = doctor('--config', file, '--json');
  const report = JSON.parse(r.stdout) as DoctorReport;
  assert.equal(report.target.description, `halfclose (${file}: --keepalive off, idle timeout 0)`);
  assert.equal(report.guard?.halfClosed, null);
  const conntrack = readHere(CLOSE_WAIT_SYSCTL) !== null;
  assert.equal(report.leakPossible, conntrack);
  if (conntrack) assert.match(report.verdict, /leaks two sockets forever/);
  assert.equal(r.status, conntrack ? 1 : 0);
  // A key the schema does not know is one line and exit 2, naming the file.
  writeFileSync(file, 'keepalive:\n  halfclosed: "off"\n');
  const bad = doctor('--config', file);
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  assert.ok(bad.stderr.includes(file), bad.stderr);
});

test('CLI: bad usage is one line and exit status 2; --help is truthful', () => {
  const cases: [string[], RegExp][] = [
    [['--bogus'], /^halfclose: doctor: unknown flag --bogus/],
    [['--idle-timeout', '5x'], /^halfclose: --idle-timeout: expected a duration/],
    [['--keepalive', 'sometimes'], /keepalive/],
    [['--idle-timeout', '1h', '--keepalive', 'off'], /--idle-timeout judges an Envoy-like proxy; it cannot be combined/],
    [['--config', '/nonexistent/halfclose.yaml'], /^halfclose: --config: cannot read \/nonexistent\/halfclose\.yaml: ENOENT/],
    [['--netns', 'hc-doctor-no-such-ns'], /^halfclose: --netns: network namespace "hc-doctor-no-such-ns" does not exist/],
    [['extra'], /unexpected argument "extra"/],
  ];
  for (const [args, re] of cases) {
    const r = doctor(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
  const help = doctor('--help');
  assert.equal(help.status, 0);
  for (const flag of ['--config', '--keepalive', '--idle-timeout', '--netns', '--json']) assert.ok(help.stdout.includes(flag), flag);
});
