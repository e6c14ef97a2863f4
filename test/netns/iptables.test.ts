// `halfclose iptables` for real, as root, in namespaces made here: install next to foreign rules,
// re-install changes nothing, uninstall gives back byte-identical iptables-save output, print and
// --dry-run touch nothing, and real connections go through the proxy outbound and inbound.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createNetns, deleteNetnsSync, uniqueName } from '../../src/kernel/netns.js';
import { run } from '../../src/kernel/run.js';
import { applyInterception, openNetfilter, removeInterception, install } from '../../src/netfilter/apply.js';
import { resolveOptions } from '../../src/netfilter/options.js';
import { planInterception } from '../../src/netfilter/plan.js';
import { installScript, normaliseSave, parseSave } from '../../src/netfilter/reconcile.js';
import { BIN, nsNode, startNsProxy, topology, watch } from '../helpers/netns.js';

async function netns(t: TestContext): Promise<string> {
  const name = uniqueName(`hcipt${process.pid % 1000}`);
  t.after(() => deleteNetnsSync(name));
  await createNetns(name);
  return name;
}

/** Both families' iptables-save output, counters and dated comments removed. */
async function saveAll(ns: string, tool = 'iptables'): Promise<string> {
  const v4 = await run(`${tool}-save`, [], { netns: ns });
  const v6 = await run(`${tool.replace('iptables', 'ip6tables')}-save`, [], { netns: ns });
  return `${normaliseSave(v4.stdout)}\n--- ipv6\n${normaliseSave(v6.stdout)}`;
}

/** Rules someone else owns: they must come through install and uninstall untouched, in place. */
async function addForeignRules(ns: string, tool: string): Promise<void> {
  const v4 = [
    ['-t', 'nat', '-N', 'DOCKER'],
    ['-t', 'nat', '-A', 'PREROUTING', '-m', 'addrtype', '--dst-type', 'LOCAL', '-j', 'DOCKER'],
    ['-t', 'nat', '-A', 'OUTPUT', '-d', '192.0.2.1/32', '-p', 'tcp', '-j', 'RETURN'],
    ['-t', 'nat', '-A', 'POSTROUTING', '-s', '172.17.0.0/16', '!', '-o', 'docker0', '-j', 'MASQUERADE'],
    ['-t', 'filter', '-A', 'INPUT', '-p', 'tcp', '--dport', '9', '-j', 'DROP'],
  ];
  // The legacy back end cannot remove a table once used, so there mangle must exist beforehand.
  if (tool.includes('legacy')) v4.push(['-t', 'mangle', '-A', 'OUTPUT', '-p', 'udp', '-j', 'ACCEPT']);
  for (const a of v4) await run(tool, a, { netns: ns });
  const v6 = [['-t', 'nat', '-A', 'OUTPUT', '-d', '2001:db8::1/128', '-p', 'tcp', '-j', 'RETURN']];
  if (tool.includes('legacy')) v6.push(['-t', 'mangle', '-A', 'OUTPUT', '-p', 'udp', '-j', 'ACCEPT']);
  for (const a of v6) await run(tool.replace('iptables', 'ip6tables'), a, { netns: ns });
}

function cli(ns: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, BIN, 'iptables', ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const FULL = ['--ipv6', '--drop-invalid', '--exclude-outbound-ports', '9000', '--exclude-outbound-cidrs', '10.9.0.0/16,fd09::/64', '--exclude-inbound-ports', '22'];

test('install, re-install, uninstall next to foreign rules (nft): iptables-save before == after', async (t) => {
  const ns = await netns(t);
  await addForeignRules(ns, 'iptables');
  const before = await saveAll(ns);
  assert.match(before, /DOCKER/);

  // print and --dry-run touch nothing.
  const printed = cli(ns, ['print', ...FULL]);
  assert.equal(printed.status, 0, printed.stderr);
  assert.match(printed.stdout, /^-A HALFCLOSE_OUTPUT .*--uid-owner 1337 /m);
  const dry = cli(ns, ['install', '--dry-run', '--netns', ns, ...FULL]);
  assert.equal(dry.status, 0, dry.stderr);
  assert.match(dry.stdout, /IPv4: would be installed/);
  assert.equal(await saveAll(ns), before);

  const first = cli(ns, ['install', ...FULL]);
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stdout, /back end nft \(iptables v[\d.]+ \(nf_tables\)\), current namespace\nIPv4: installed\n/);
  assert.match(first.stdout, /IPv6: installed/);
  const installed = await saveAll(ns);
  for (const chain of ['HALFCLOSE_OUTPUT', 'HALFCLOSE_REDIRECT', 'HALFCLOSE_INBOUND', 'HALFCLOSE_IN_REDIRECT']) {
    assert.equal(installed.split(`:${chain} - [0:0]`).length, 3, `${chain} in both families`);
  }
  // Foreign rules keep their order; our hooks come after them.
  const out = installed.split('\n').filter((l) => l.startsWith('-A OUTPUT '));
  assert.match(out[0]!, /192\.0\.2\.1/);
  assert.match(out[1]!, /-j HALFCLOSE_OUTPUT$/);
  // Each rule we wrote carries our comment.
  const ours = installed.split('\n').filter((l) => l.includes('HALFCLOSE') && l.startsWith('-A'));
  assert.ok(ours.length > 20);
  assert.ok(ours.every((l) => l.includes('--comment "halfclose: ')));

  const again = cli(ns, ['install', ...FULL]);
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /IPv4: already installed with these options; nothing changed/);
  assert.match(again.stdout, /IPv6: already installed with these options; nothing changed/);
  assert.equal(await saveAll(ns), installed);

  // Other options: replaced in place, and the live tables then match the new plan.
  const nf = await openNetfilter({ netns: ns });
  const other = resolveOptions({ outboundPort: '15101', ipv6: true });
  const [r4] = await install(nf, other);
  assert.equal(r4!.action, 'updated');
  assert.equal(installScript(parseSave((await nf.save(4)).text), planInterception({ outboundPort: 15101, ipv6: true })[0]!), null);
  assert.doesNotMatch(await saveAll(ns), /ctstate INVALID/);

  const removed = cli(ns, ['uninstall']);
  assert.equal(removed.status, 0, removed.stderr);
  assert.match(removed.stdout, /IPv4: removed\n {2}4 chains and \d+ rules of ours in nat/);
  assert.equal(await saveAll(ns), before);
  const twice = cli(ns, ['uninstall']);
  assert.match(twice.stdout, /IPv4: nothing of halfclose is installed; nothing to do/);
  assert.equal(await saveAll(ns), before);
});

test('a fresh namespace is left with no tables at all (nft), and ::6 comes and goes with --ipv6', async (t) => {
  const ns = await netns(t);
  const before = await saveAll(ns);
  await applyInterception(planInterception({ ipv6: true }), { netns: ns });
  assert.match((await run('ip', ['-6', 'addr', 'show', 'dev', 'lo'], { netns: ns })).stdout, /inet6 ::6\/128/);
  const reports = await removeInterception({ netns: ns });
  assert.deepEqual(reports.map((r) => r.action), ['removed', 'removed']);
  assert.equal(await saveAll(ns), before);
  assert.doesNotMatch((await run('ip', ['-6', 'addr', 'show', 'dev', 'lo'], { netns: ns })).stdout, /::6\//);
});

test('the legacy back end: install, re-install, uninstall leave iptables-legacy-save as it was', async (t) => {
  const ns = await netns(t);
  // Kernels built without the x_tables legacy tables cannot run this back end at all.
  const probe = await run('iptables-legacy', ['-t', 'nat', '-S'], { netns: ns, reject: false }).catch(() => null);
  if (!probe || probe.exitCode !== 0) {
    t.skip(`iptables-legacy is not usable here: ${probe?.stderr.trim() ?? 'not installed'}`);
    return;
  }
  await addForeignRules(ns, 'iptables-legacy');
  const before = await saveAll(ns, 'iptables-legacy');
  const first = cli(ns, ['install', '--backend', 'legacy', ...FULL]);
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stdout, /back end legacy \(forced by --backend legacy\)/);
  const installed = await saveAll(ns, 'iptables-legacy');
  assert.match(installed, /-j HALFCLOSE_OUTPUT/);
  assert.match(cli(ns, ['install', '--backend', 'legacy', ...FULL]).stdout, /IPv4: already installed/);
  assert.equal(await saveAll(ns, 'iptables-legacy'), installed);
  assert.equal(cli(ns, ['uninstall', '--backend', 'legacy']).status, 0);
  assert.equal(await saveAll(ns, 'iptables-legacy'), before);
});

test('a rejected script leaves the tables as they were, in one line', async (t) => {
  const ns = await netns(t);
  await addForeignRules(ns, 'iptables');
  const before = await saveAll(ns);
  // A plan naming a match the kernel does not have: the nat table is rejected as a whole, and the
  // mangle table (--drop-invalid), committed just before it, is rolled back.
  const [v4] = planInterception({ dropInvalid: true });
  assert.deepEqual(v4!.tables.map((tb) => tb.table), ['mangle', 'nat']);
  const broken = { ...v4!, tables: v4!.tables.map((tb) => ({ ...tb, rules: tb.table === 'nat' ? [...tb.rules, '-A HALFCLOSE_OUTPUT -m nosuchmatch -j RETURN'] : tb.rules })) };
  await assert.rejects(applyInterception([broken], { netns: ns }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'HC_ERR_IPTABLES');
    assert.match(err.message, /rejected the script at line \d+ \(-A HALFCLOSE_OUTPUT -m nosuchmatch -j RETURN\).*the tables were left as they were$/);
    assert.ok(!err.message.includes('\n'));
    return true;
  });
  assert.equal(await saveAll(ns), before);
});

const SERVERS = `
import net from 'node:net';
let n = 0;
for (const host of process.argv.at(-1).split(',')) for (const port of process.argv.at(-2).split(',')) {
  n++;
  net.createServer((s) => { s.on('data', (d) => s.end('echo:' + d + ' from ' + s.remoteAddress + ' ' + s.remotePort)); s.on('error', () => {}); })
    .listen(Number(port), host, () => { if (--n === 0) console.log('listening'); });
}`;

const CLIENT = `
import net from 'node:net';
const [host, port] = process.argv.slice(-2);
const s = net.connect({ host, port: Number(port) }, () => s.write('ping'));
let got = '';
s.on('data', (d) => (got += d));
s.on('end', () => { console.log(JSON.stringify({ got, localPort: s.localPort })); s.end(); });
s.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
`;

test('real connections: outbound and inbound through the proxy, IPv4 and IPv6; exclusions bypass it', async (t) => {
  const topo = await topology(t, { prefix: 'hcipt' });
  await run('ip', ['addr', 'add', '10.77.0.3/24', 'dev', topo.podIf], { netns: topo.svc });
  await run('ip', ['-6', 'addr', 'add', 'fd77::3/64', 'dev', topo.podIf, 'nodad'], { netns: topo.svc });
  const reports = await applyInterception(
    planInterception({ ipv6: true, excludeOutboundPorts: [7778], excludeOutboundCidrs: ['10.77.0.3', 'fd77::3'], excludeInboundPorts: [8081] }),
    { netns: topo.pod },
  );
  assert.deepEqual(reports.map((r) => r.action), ['installed', 'installed']);
  t.after(() => removeInterception({ netns: topo.pod }).catch(() => {}));

  const svc = nsNode(topo, topo.svc, SERVERS, ['7777,7778', '10.77.0.2,10.77.0.3,fd77::2,fd77::3']);
  const app = nsNode(topo, topo.pod, SERVERS, ['8080,8081', '::']);
  await svc.waitLine(/listening/);
  await app.waitLine(/listening/);
  // One dual-stack inbound listener: upstream connections come from 127.0.0.6 to IPv4 and from ::6
  // to IPv6 destinations (the default), the sources the interception rules let through.
  const proxy = await startNsProxy(topo, ['--outbound', '127.0.0.1:15001', '--outbound', '[::1]:15001', '--inbound', '[::]:15006']);
  t.after(() => proxy.stop());

  const connect = async (from: string, host: string, port: number): Promise<{ got: string; localPort: number }> => {
    const c = nsNode(topo, from, CLIENT, [host, String(port)]);
    const line = JSON.parse(await c.waitLine(/^\{/));
    assert.ok(!line.error, `${from} -> ${host}:${port}: ${line.error}`);
    assert.match(line.got, /^echo:ping from /);
    return line;
  };
  const peerPort = (got: string): number => Number(got.split(' ').at(-1));
  const peerAddr = (got: string): string => got.split(' ').at(-2)!;

  // Outbound, captured: the service sees the proxy's port, not the app's.
  for (const host of [topo.svcIp, topo.svcIp6]) {
    const r = await connect(topo.pod, host, 7777);
    assert.notEqual(peerPort(r.got), r.localPort, `${host}:7777 went through the proxy`);
  }
  // Outbound, excluded by port and by CIDR: straight through.
  for (const [host, port] of [[topo.svcIp, 7778], [topo.svcIp6, 7778], ['10.77.0.3', 7777], ['fd77::3', 7777]] as const) {
    const r = await connect(topo.pod, host, port);
    assert.equal(peerPort(r.got), r.localPort, `${host}:${port} bypassed the proxy`);
  }
  // Inbound, captured: the app sees the proxy's inbound source (127.0.0.6 / ::6).
  assert.equal(peerAddr((await connect(topo.svc, topo.podIp, 8080)).got), '::ffff:127.0.0.6');
  assert.equal(peerAddr((await connect(topo.svc, topo.podIp6, 8080)).got), '::6');
  // The proxy's own uid calling the pod's address: redirected to the inbound listener (on
  // 127.0.0.1, where REDIRECT sends local traffic), which reaches the app from 127.0.0.6.
  const asProxy = topo.spawn(topo.pod, process.execPath, ['--input-type=module', '-e', CLIENT, topo.podIp, '8080'], { uid: 1337 });
  const ownLine = JSON.parse(await watch(asProxy).waitLine(/^\{/));
  assert.equal(peerAddr(ownLine.got), '::ffff:127.0.0.6', JSON.stringify(ownLine));
  // The same over IPv6: redirected to [::1]:15006 on the dual-stack listener, reaching the app from ::6.
  const asProxy6 = topo.spawn(topo.pod, process.execPath, ['--input-type=module', '-e', CLIENT, topo.podIp6, '8080'], { uid: 1337 });
  const ownLine6 = JSON.parse(await watch(asProxy6).waitLine(/^\{/));
  assert.equal(peerAddr(ownLine6.got), '::6', JSON.stringify(ownLine6));
  // Any other uid calling the pod's address stays local (not captured).
  const local = await connect(topo.pod, topo.podIp, 8080);
  assert.equal(peerPort(local.got), local.localPort);
  // Inbound, excluded port: the app sees the client itself.
  assert.equal(peerAddr((await connect(topo.svc, topo.podIp, 8081)).got), `::ffff:${topo.svcIp}`);

  const closed = (p: { output(): string }): { kind?: string; listener?: string; reason: string; originalDst: { host: string; port: number } }[] =>
    p.output().split('\n').filter((l) => l.includes('"connection closed"')).map((l) => JSON.parse(l));
  await waitUntil(() => closed(proxy).length >= 6, () => `six access-log lines in:\n${proxy.output()}`);
  const seen = closed(proxy).map((l) => `${l.originalDst.host}:${l.originalDst.port}`).sort();
  // Exactly the captured connections, each once: the proxy's own upstream connections were not captured again.
  assert.deepEqual(seen, [`${topo.podIp}:8080`, `${topo.podIp}:8080`, `${topo.svcIp}:7777`, `${topo.podIp6}:8080`, `${topo.podIp6}:8080`, `${topo.svcIp6}:7777`].sort());
  assert.ok(closed(proxy).every((l) => l.reason === 'both-fin'), proxy.output());
});

async function waitUntil(check: () => boolean, what: () => string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
