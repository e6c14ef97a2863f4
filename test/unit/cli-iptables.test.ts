// `halfclose iptables` as users run it: the built binary, its output and exit status. Nothing here
// touches the tables (install/uninstall are exercised in test/netns/iptables.test.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = [path.resolve(HERE, '../../..'), path.resolve(HERE, '../..')].find((d) => existsSync(path.join(d, 'bin/halfclose')))!;
const BIN = path.join(ROOT, 'bin/halfclose');
const fixture = (name: string): string => readFileSync(path.join(ROOT, 'test/fixtures/iptables', name), 'utf8');

/** True when a user other than the owner can reach and read `file` (a clone under /root may not be). */
function othersCanRead(file: string): boolean {
  for (let d = path.dirname(file); d !== path.dirname(d); d = path.dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) return false;
  }
  return (statSync(file).mode & 0o004) !== 0;
}

function halfclose(args: string[], opts: SpawnSyncOptions = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'iptables', ...args], { encoding: 'utf8', timeout: 20_000, ...opts });
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

test('--help names every flag, the layout and the note on --drop-invalid', () => {
  const r = halfclose(['--help']);
  assert.equal(r.status, 0);
  assert.equal(r.stderr, '');
  for (const flag of [
    '--proxy-uid', '--proxy-gid', '--outbound-port', '--inbound-port', '--inbound-ports', '--exclude-inbound-ports',
    '--exclude-outbound-ports', '--include-outbound-cidrs', '--exclude-outbound-cidrs', '--ipv6', '--drop-invalid',
    '--netns', '--backend', '--dry-run',
  ]) {
    assert.match(r.stdout, new RegExp(`^ +${flag} `, 'm'), flag);
  }
  for (const chain of ['HALFCLOSE_OUTPUT', 'HALFCLOSE_REDIRECT', 'HALFCLOSE_INBOUND', 'HALFCLOSE_IN_REDIRECT']) assert.ok(r.stdout.includes(chain));
  assert.match(r.stdout, /does NOT cure the half-close leak/);
  assert.equal(halfclose(['print', '-h']).stdout, r.stdout);
});

test('print shows the plan, needs no root and no iptables', () => {
  // As nobody, with no iptables on PATH: print is pure.
  const empty = mkdtempSync(path.join(tmpdir(), 'hc-nopath-'));
  try {
    const files = [BIN, path.join(ROOT, 'dist/src/cli/main.js'), path.join(ROOT, 'dist/src/netfilter/apply.js')];
    const asNobody: SpawnSyncOptions = process.getuid?.() === 0 && files.every(othersCanRead) ? { uid: 65534, gid: 65534 } : {};
    const r = halfclose(['print'], { ...asNobody, env: { PATH: empty } });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `# halfclose iptables plan, IPv4: input of iptables-restore --noflush\n${fixture('default.v4.rules')}`);
  } finally {
    rmSync(empty, { recursive: true });
  }
  const both = halfclose(['print', '--ipv6', '--exclude-outbound-cidrs', '10.9.0.0/16,fd09::/64', '--inbound-ports', '8080', '--proxy-uid', '0']);
  assert.equal(both.status, 0, both.stderr);
  const [v4, v6] = both.stdout.split(/^# halfclose iptables plan, IPv6: input of ip6tables-restore --noflush\n/m);
  assert.match(v4!, /^-A HALFCLOSE_OUTPUT -d 10\.9\.0\.0\/16 .* -j RETURN$/m);
  assert.match(v4!, /^-A HALFCLOSE_INBOUND -p tcp -m tcp --dport 8080 .* -j HALFCLOSE_IN_REDIRECT$/m);
  assert.match(v4!, /--uid-owner 0 /);
  assert.match(v6!, /^-A HALFCLOSE_OUTPUT -d fd09::\/64 .* -j RETURN$/m);
  assert.match(v6!, /^-A HALFCLOSE_OUTPUT -s ::6\/128 -o lo /m);
  assert.doesNotMatch(v6!, /10\.9\.0\.0/);
});

test('bad input: one line on stderr, nothing on stdout, exit status 2', () => {
  const cases: [string[], RegExp, Record<string, string>?][] = [
    [['print', '--bogus'], /^halfclose: iptables: unknown flag --bogus \(see `halfclose iptables --help`\)$/],
    [[], /^halfclose: iptables: expected an action: install, uninstall or print/],
    [['remove'], /^halfclose: iptables: unknown action "remove"; expected install, uninstall or print$/],
    [['print', 'extra'], /^halfclose: iptables: unexpected argument "extra" after print$/],
    [['print', '--outbound-port', '70000'], /^halfclose: --outbound-port: port 70000 is out of range 1-65535$/],
    [['print', '--inbound-ports', '80,http'], /^halfclose: --inbound-ports: expected a port number 1-65535, got "http"$/],
    [['print', '--exclude-outbound-cidrs', '10.0.0/8x'], /^halfclose: --exclude-outbound-cidrs: "10\.0\.0\/8x" is not a CIDR/],
    [['print', '--include-outbound-cidrs', 'fd00::/8'], /^halfclose: --include-outbound-cidrs: fd00::\/8 is IPv6; add --ipv6/],
    [['print', '--proxy-uid'], /^halfclose: iptables: .*--proxy-uid/],
    [['print', '--netns', 'x'], /^halfclose: iptables print: --netns does not apply; print only shows the plan/],
    [['uninstall', '--outbound-port', '15001'], /^halfclose: iptables uninstall: --outbound-port does not apply/],
    [['install', '--backend', 'ebpf'], /^halfclose: --backend: expected auto, nft or legacy, got "ebpf"$/],
    [['install', '--netns', 'hc-no-such-ns-4242'], /^halfclose: --netns: network namespace "hc-no-such-ns-4242" does not exist/],
    [['install'], /^halfclose: `iptables` is not installed \(run `make setup`, or apt-get install iptables\)$/, { PATH: '/nonexistent' }],
  ];
  for (const [args, re, env] of cases) {
    const r = halfclose(args, env ? { env } : {});
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '', args.join(' '));
    assert.match(r.stderr.trimEnd(), re, args.join(' '));
    assert.equal(r.stderr.split('\n').length, 2, `one line for ${args.join(' ')}: ${r.stderr}`);
  }
});
