// Reconciling, pure: real iptables-save output (captured with iptables-nft 1.8.9 in a namespace
// that also held Docker-style rules) against plans -> the smallest install / uninstall scripts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveOptions, type RawOptions } from '../../src/netfilter/options.js';
import { plan } from '../../src/netfilter/plan.js';
import { installScript, normaliseSave, parseSave, planFromSaved, splitTables, uninstallScript } from '../../src/netfilter/reconcile.js';
import { backendFromVersion } from '../../src/netfilter/apply.js';
import { readFixture } from '../helpers/fixtures.js';

const fixture = (name: string): string => readFixture('iptables', name);

// The options the `*.nft.save` fixtures were installed with (the same as full.v4.rules).
const FULL: RawOptions = {
  proxyUid: ['1337'],
  proxyGid: ['1337,2000'],
  outboundPort: '15101',
  inboundPort: '15106',
  inboundPorts: ['80,443'],
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9000,9001'],
  includeOutboundCidrs: ['10.0.0.0/8,fd00::/8'],
  excludeOutboundCidrs: ['10.1.2.3/16', '2001:db8::1/32'],
  ipv6: true,
  dropInvalid: true,
};

test('the plan is written exactly as iptables-save prints it back: re-install is a no-op', () => {
  const [v4, v6] = plan(resolveOptions(FULL));
  assert.equal(installScript(parseSave(fixture('docker-full.after.nft.save')), v4!), null);
  assert.equal(installScript(parseSave(fixture('full.v6.nft.save')), v6!), null);
});

test('install next to foreign rules declares our chains and appends only our hooks', () => {
  const [v4] = plan(resolveOptions(FULL));
  const script = installScript(parseSave(fixture('docker.before.nft.save')), v4!)!;
  const lines = script.trimEnd().split('\n');
  assert.ok(!lines.some((l) => /^-[DFX] /.test(l)), 'nothing is deleted or flushed');
  assert.ok(!lines.some((l) => l.includes('DOCKER') || l.includes('MASQUERADE')));
  assert.deepEqual(
    splitTables(script).map((s) => s.table),
    ['mangle', 'nat'],
  );
  // Hooks go last, after the chains they jump to are filled.
  const nat = lines.slice(lines.indexOf('*nat'));
  assert.match(nat.at(-3)!, /^-A PREROUTING .* -j HALFCLOSE_INBOUND$/);
  assert.match(nat.at(-2)!, /^-A OUTPUT .* -j HALFCLOSE_OUTPUT$/);
  assert.equal(nat.filter((l) => l.startsWith(':')).length, 4);
});

test('changed options rewrite only the chains that differ, in one step', () => {
  const saved = parseSave(fixture('docker-full.after.nft.save'));
  const [v4] = plan(resolveOptions({ ...FULL, outboundPort: '15201' }));
  assert.equal(
    installScript(saved, v4!),
    '*nat\n:HALFCLOSE_REDIRECT - [0:0]\n-A HALFCLOSE_REDIRECT -p tcp -m comment --comment "halfclose: outbound capture: to the proxy outbound port" -j REDIRECT --to-ports 15201\nCOMMIT\n',
  );
  // Without --drop-invalid the mangle rule goes; without inbound capture so does the PREROUTING hook.
  const [lean] = plan(resolveOptions({ ...FULL, dropInvalid: false, inboundPorts: [''] }));
  const script = installScript(saved, lean!)!;
  assert.match(script, /\*mangle\n-D PREROUTING -p tcp -m conntrack --ctstate INVALID .* -j DROP\nCOMMIT\n/);
  assert.match(script, /\n-D PREROUTING -p tcp -m comment --comment "halfclose: inbound TCP to HALFCLOSE_INBOUND" -j HALFCLOSE_INBOUND\n/);
  assert.match(script, /\n:HALFCLOSE_INBOUND - \[0:0\]\n/, 'the inbound chain is emptied');
});

test('uninstall deletes our hooks and chains and nothing else', () => {
  const script = uninstallScript(parseSave(fixture('docker-full.after.nft.save')))!;
  assert.equal(
    script,
    [
      '*mangle',
      '-D PREROUTING -p tcp -m conntrack --ctstate INVALID -m comment --comment "halfclose: drop conntrack-INVALID TCP (--drop-invalid)" -j DROP',
      'COMMIT',
      '*nat',
      '-D PREROUTING -p tcp -m comment --comment "halfclose: inbound TCP to HALFCLOSE_INBOUND" -j HALFCLOSE_INBOUND',
      '-D OUTPUT -p tcp -m comment --comment "halfclose: outbound TCP to HALFCLOSE_OUTPUT" -j HALFCLOSE_OUTPUT',
      '-F HALFCLOSE_INBOUND',
      '-F HALFCLOSE_IN_REDIRECT',
      '-F HALFCLOSE_OUTPUT',
      '-F HALFCLOSE_REDIRECT',
      '-X HALFCLOSE_INBOUND',
      '-X HALFCLOSE_IN_REDIRECT',
      '-X HALFCLOSE_OUTPUT',
      '-X HALFCLOSE_REDIRECT',
      'COMMIT',
      '',
    ].join('\n'),
  );
  assert.equal(uninstallScript(parseSave(fixture('docker.before.nft.save'))), null);
});

test('a hook without our comment that jumps into our chains is still ours (and replaced on install)', () => {
  const saved = parseSave(fixture('docker-full.after.nft.save'));
  saved.get('nat')!.rules.push('-A OUTPUT -p udp -j HALFCLOSE_OUTPUT');
  const [v4] = plan(resolveOptions(FULL));
  assert.equal(installScript(saved, v4!), '*nat\n-D OUTPUT -p udp -j HALFCLOSE_OUTPUT\nCOMMIT\n');
  assert.match(uninstallScript(saved)!, /\n-D OUTPUT -p udp -j HALFCLOSE_OUTPUT\n/);
});

test('what is installed can be re-planned for roll-back', () => {
  const saved = parseSave(fixture('docker-full.after.nft.save'));
  assert.equal(installScript(saved, planFromSaved(saved, { family: 4, command: 'iptables' })), null);
});

test('normaliseSave drops the dated comments and counters', () => {
  const a = fixture('docker.before.nft.save');
  const b = a.replace(/on .* 2026/g, 'on Thu Jan  1 00:00:00 1970').replace(':PREROUTING ACCEPT [0:0]', ':PREROUTING ACCEPT [12:720]');
  assert.notEqual(a, b);
  assert.equal(normaliseSave(a), normaliseSave(b));
});

test('the back end is read from iptables --version', () => {
  assert.equal(backendFromVersion('iptables v1.8.9 (nf_tables)'), 'nft');
  assert.equal(backendFromVersion('iptables v1.8.9 (legacy)'), 'legacy');
  assert.equal(backendFromVersion('iptables v1.6.1'), 'legacy');
});
