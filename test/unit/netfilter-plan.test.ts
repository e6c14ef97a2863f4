// The pure planner: options -> iptables-restore script, compared with fixture text (which is also
// what iptables-save prints back once the script is applied), and the option checks.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HalfcloseError } from '../../src/errors.js';
import { interceptOptions, parseCidr, resolveOptions, type RawOptions } from '../../src/netfilter/options.js';
import { CHAIN, OUR_CHAINS, plan, planInterception, renderScript, type FamilyPlan } from '../../src/netfilter/plan.js';
import { readFixture } from '../helpers/fixtures.js';

const fixture = (name: string): string => readFixture('iptables', name);

const FULL: RawOptions = {
  proxyUid: ['1337'],
  proxyGid: ['1337,2000'],
  outboundPort: '15101',
  inboundPort: '15106',
  inboundPorts: ['80,443'],
  excludeInboundPorts: ['22'],
  excludeOutboundPorts: ['9000', '9001'],
  includeOutboundCidrs: ['10.0.0.0/8,fd00::/8'],
  excludeOutboundCidrs: ['10.1.2.3/16', '2001:db8::1/32'],
  ipv6: true,
  dropInvalid: true,
};

function natRules(p: FamilyPlan, chain?: string): string[] {
  const rules = p.tables.find((t) => t.table === 'nat')!.rules;
  return chain ? rules.filter((r) => r.startsWith(`-A ${chain} `)) : [...rules];
}

/** The target of a rule (`RETURN`, `HALFCLOSE_REDIRECT`, `REDIRECT --to-ports 15001`). */
const target = (r: string): string => r.slice(r.indexOf(' -j ') + 4);

test('default options render the fixture script (IPv4 only)', () => {
  const plans = plan(resolveOptions({}));
  assert.equal(plans.length, 1);
  assert.equal(plans[0]!.command, 'iptables');
  assert.equal(renderScript(plans[0]!), fixture('default.v4.rules'));
});

test('every option at once renders the IPv4 and IPv6 fixtures', () => {
  const [v4, v6, more] = plan(resolveOptions(FULL));
  assert.equal(more, undefined);
  assert.equal(v4!.command, 'iptables');
  assert.equal(v6!.command, 'ip6tables');
  assert.equal(renderScript(v4!), fixture('full.v4.rules'));
  assert.equal(renderScript(v6!), fixture('full.v6.rules'));
});

test('every rule carries a halfclose comment and jumps only to declared chains or built-in targets', () => {
  for (const p of [...plan(resolveOptions({})), ...plan(resolveOptions(FULL))]) {
    for (const t of p.tables) {
      assert.ok(t.rules.length > 0);
      for (const r of t.rules) {
        assert.match(r, / -m comment --comment "halfclose: [^"]+" -j /, r);
        const j = target(r).split(' ')[0]!;
        assert.ok(['RETURN', 'REDIRECT', 'DROP', ...t.chains].includes(j), `${r} jumps to ${j}`);
      }
    }
  }
});

test('HALFCLOSE_OUTPUT follows Istio order: 127.0.0.6, owner rules, 127.0.0.1, exclusions, then redirect', () => {
  const [v4] = plan(resolveOptions({}));
  const out = natRules(v4!, CHAIN.output);
  assert.deepEqual(
    out.map((r) => target(r)),
    ['RETURN', CHAIN.inRedirect, 'RETURN', 'RETURN', CHAIN.inRedirect, 'RETURN', 'RETURN', 'RETURN', CHAIN.redirect],
  );
  assert.match(out[0]!, /-s 127\.0\.0\.6\/32 -o lo /);
  assert.match(out[1]!, /! -d 127\.0\.0\.1\/32 -o lo -m owner --uid-owner 1337 /);
  assert.match(out[2]!, /-o lo -m owner ! --uid-owner 1337 /);
  assert.match(out[3]!, /-m owner --uid-owner 1337 /);
  assert.match(out[4]!, /--gid-owner 1337 /);
  assert.match(out[7]!, /-d 127\.0\.0\.1\/32 /);
  // The hooks: all TCP of OUTPUT and PREROUTING into our chains, nothing else on built-in chains.
  assert.deepEqual(natRules(v4!, 'OUTPUT').map(target), [CHAIN.output]);
  assert.deepEqual(natRules(v4!, 'PREROUTING').map(target), [CHAIN.inbound]);
  assert.deepEqual(natRules(v4!, CHAIN.redirect).map(target), ['REDIRECT --to-ports 15001']);
  assert.deepEqual(natRules(v4!, CHAIN.inRedirect).map(target), ['REDIRECT --to-ports 15006']);
  assert.deepEqual(v4!.tables.map((t) => t.table), ['nat']);
  assert.deepEqual(v4!.tables[0]!.chains, OUR_CHAINS);
});

test('exclusions RETURN before anything is captured; with an include list the rest RETURNs', () => {
  const [v4, v6] = plan(resolveOptions(FULL));
  const out = natRules(v4!, CHAIN.output);
  assert.match(out[0]!, /-p tcp -m multiport --dports 9000,9001 .* -j RETURN$/);
  const excl = out.findIndex((r) => r.includes('-d 10.1.0.0/16'));
  const incl = out.findIndex((r) => r.includes('-d 10.0.0.0/8'));
  assert.ok(excl > 0 && incl > excl, 'excluded CIDR comes before the included one');
  assert.equal(target(out[incl]!), CHAIN.redirect);
  assert.equal(target(out.at(-1)!), 'RETURN');
  assert.ok(!out.some((r) => r.includes('fd00::') || r.includes('2001:db8')), 'IPv6 networks stay out of iptables');
  const out6 = natRules(v6!, CHAIN.output);
  assert.ok(out6.some((r) => r.includes('-d fd00::/8') && target(r) === CHAIN.redirect));
  assert.ok(!out6.some((r) => r.includes('10.0.0.0')), 'IPv4 networks stay out of ip6tables');
  assert.match(out6[1]!, /-s ::6\/128 -o lo /);
  const inb = natRules(v4!, CHAIN.inbound);
  assert.deepEqual(inb.map(target), ['RETURN', CHAIN.inRedirect]);
  assert.match(inb[0]!, /--dport 22 /);
  assert.match(inb[1]!, /--dports 80,443 /);
  // --drop-invalid: one mangle rule, before nat.
  assert.equal(v4!.tables[0]!.table, 'mangle');
  assert.match(v4!.tables[0]!.rules[0]!, /^-A PREROUTING -p tcp -m conntrack --ctstate INVALID .* -j DROP$/);
});

test('more than 15 ports are split over several multiport rules', () => {
  const ports = Array.from({ length: 20 }, (_, i) => 8000 + i);
  const [v4] = plan(resolveOptions({ inboundPorts: [ports.join(',')], excludeOutboundPorts: ports.map(String) }));
  const inb = natRules(v4!, CHAIN.inbound);
  assert.equal(inb.length, 2);
  assert.ok(inb[0]!.includes(`--dports ${ports.slice(0, 15).join(',')} `));
  assert.ok(inb[1]!.includes(`--dports ${ports.slice(15).join(',')} `));
  assert.equal(natRules(v4!, CHAIN.output).filter((r) => r.includes('multiport')).length, 2);
});

test('an empty --inbound-ports captures no inbound traffic: no PREROUTING hook', () => {
  const [v4] = plan(resolveOptions({ inboundPorts: [''] }));
  assert.deepEqual(natRules(v4!, 'PREROUTING'), []);
  assert.deepEqual(natRules(v4!, CHAIN.inbound), []);
  assert.equal(natRules(v4!, 'OUTPUT').length, 1);
});

test('planInterception takes plain values and fills in the defaults', () => {
  assert.deepEqual(planInterception(), plan(resolveOptions({})));
  const [v4, v6] = planInterception({ proxyUids: [0], outboundPort: 15101, excludeOutboundCidrs: ['10.77.0.3'], ipv6: true });
  assert.ok(natRules(v4!, CHAIN.output).some((r) => r.includes('--uid-owner 0 ')));
  assert.ok(natRules(v4!, CHAIN.output).some((r) => r.includes('-d 10.77.0.3/32 ')));
  assert.deepEqual(natRules(v6!, CHAIN.redirect).map(target), ['REDIRECT --to-ports 15101']);
  assert.throws(() => interceptOptions({ outboundPort: 70000 }), /--outbound-port: port 70000 is out of range/);
});

test('CIDRs are canonicalised the way iptables-save prints them', () => {
  const cases: [string, string][] = [
    ['10.1.2.3/8', '10.0.0.0/8'],
    ['10.1.2.3', '10.1.2.3/32'],
    ['192.168.77.129/25', '192.168.77.128/25'],
    ['2001:DB8::1/32', '2001:db8::/32'],
    ['fd00:0:0:0:0:0:0:1', 'fd00::1/128'],
    ['fd00:1:0:0:2:0:0:0/128', 'fd00:1:0:0:2::/128'],
    // Checked against ip6tables-save on this machine.
    ['::ffff:10.0.0.1/128', '::ffff:10.0.0.1/128'],
    ['::1.2.3.4', '::1.2.3.4/128'],
    ['::ffff:0:1.2.3.4', '::ffff:0:102:304/128'],
    ['0:0:0:0:0:ffff:0:0/96', '::ffff:0.0.0.0/96'],
    ['::5', '::5/128'],
    ['fe80::1:2/64', 'fe80::/64'],
  ];
  for (const [input, want] of cases) assert.equal(parseCidr(input, '--x').text, want, input);
});

test('bad input is one line naming the flag', () => {
  const bad: [RawOptions, RegExp][] = [
    [{ outboundPort: '0' }, /^--outbound-port: port 0 is out of range 1-65535$/],
    [{ inboundPort: '65536' }, /^--inbound-port: port 65536 is out of range/],
    [{ inboundPort: '15001' }, /^--inbound-port: must differ from --outbound-port/],
    [{ excludeInboundPorts: ['22,ssh'] }, /^--exclude-inbound-ports: expected a port number 1-65535, got "ssh"$/],
    [{ excludeOutboundPorts: ['80,,81'] }, /^--exclude-outbound-ports: empty entry/],
    [{ excludeOutboundCidrs: ['10.0.0.300/8'] }, /^--exclude-outbound-cidrs: "10.0.0.300\/8" is not a CIDR/],
    [{ excludeOutboundCidrs: ['10.0.0.0/33'] }, /^--exclude-outbound-cidrs: prefix \/33 .* out of range 0-32$/],
    [{ includeOutboundCidrs: ['0.0.0.0/0'] }, /^--include-outbound-cidrs: .* matches every address; use \*/],
    [{ includeOutboundCidrs: ['fd00::/8'] }, /^--include-outbound-cidrs: fd00::\/8 is IPv6; add --ipv6/],
    [{ proxyUid: ['istio-proxy'] }, /^--proxy-uid: expected a numeric id/],
    [{ proxyGid: ['4294967295'] }, /^--proxy-gid: 4294967295 is out of range/],
  ];
  for (const [raw, re] of bad) {
    assert.throws(
      () => resolveOptions(raw),
      (err: unknown) => {
        assert.ok(err instanceof HalfcloseError);
        assert.equal(err.code, 'HC_ERR_USAGE');
        assert.match(err.message, re);
        assert.ok(!err.message.includes('\n'));
        return true;
      },
      JSON.stringify(raw),
    );
  }
});
