// Original destination through a real REDIRECT rule: the proxy in the pod namespace reads
// SO_ORIGINAL_DST (IPv4 and IPv6), connects to the service, and data flows both ways.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { installRedirect } from '../../src/kernel/topology.js';
import { nsNode, startNsProxy, topology } from '../helpers/netns.js';

const ECHO_SERVER = `
import net from 'node:net';
for (const host of ['10.77.0.2', 'fd77::2']) {
  net.createServer((s) => { s.on('data', (d) => s.write('echo:' + d + ' from ' + s.remoteAddress + ':' + s.remotePort)); s.on('end', () => s.end()); })
    .listen(7777, host, () => console.log('listening ' + host));
}`;

const CLIENT = `
import net from 'node:net';
const [host, port] = process.argv.slice(-2);
const s = net.connect({ host, port: Number(port) }, () => s.end('ping'));
let got = '';
s.on('data', (d) => (got += d));
s.on('end', () => { console.log(JSON.stringify({ got, local: s.localAddress + ':' + s.localPort })); });
s.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
`;

test('outbound original destination, IPv4 and IPv6, through a REDIRECT rule', async (t) => {
  const topo = await topology(t);
  await installRedirect(topo, 15001, 1337);
  const server = nsNode(topo, topo.svc, ECHO_SERVER);
  await server.waitLine(/listening fd77::2/);
  const proxy = await startNsProxy(topo, ['--outbound', '127.0.0.1:15001', '--outbound', '[::1]:15001']);
  for (const host of [topo.svcIp, topo.svcIp6]) {
    const client = nsNode(topo, topo.pod, CLIENT, [host, '7777']);
    const line = JSON.parse(await client.waitLine(/^\{/));
    assert.match(line.got, /^echo:ping from /, `client to ${host} got ${JSON.stringify(line)}`);
    // The service saw the proxy's connection, not the client's port.
    const clientPort = line.local.split(':').pop();
    assert.notEqual(line.got.split(':').pop(), clientPort);
  }
  // A client has its echo and EOF before the proxy has closed both sockets and logged the line.
  const closedLines = () => proxy.output().split('\n').filter((l) => l.includes('"connection closed"')).map((l) => JSON.parse(l));
  const deadline = Date.now() + 5000;
  while (closedLines().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const logged = closedLines();
  assert.equal(logged.length, 2);
  assert.deepEqual(logged.map((l) => l.originalDst.host).sort(), ['10.77.0.2', 'fd77::2']);
  assert.ok(logged.every((l) => l.reason === 'both-fin' && l.originalDst.port === 7777));
  await proxy.stop();
});

test('the loop guard resets connections aimed back at the proxy (IPv4, IPv6, wildcard listener) and only those', async (t) => {
  const topo = await topology(t);
  await installRedirect(topo, 15001, 1337);
  const proxy = await startNsProxy(topo, ['--outbound', '127.0.0.1:15001', '--outbound', '[::1]:15001', '--outbound', '0.0.0.0:15002']);
  t.after(() => proxy.stop());
  // Straight at a listener, on loopback and on the pod's own address (through the wildcard
  // listener): conntrack reports the listener itself as the original destination.
  const loops = [
    ['127.0.0.1', '15001'],
    ['::1', '15001'],
    [topo.podIp, '15002'],
  ] as const;
  for (const [host, port] of loops) {
    const client = nsNode(topo, topo.pod, CLIENT, [host, port]);
    const line = JSON.parse(await client.waitLine(/^\{/));
    assert.equal(line.error, 'ECONNRESET', `client to ${host}:${port} should be reset, got ${JSON.stringify(line)}`);
  }
  // Redirected to the proxy, aimed at a remote host that happens to use a listener's port: not a
  // loop. Nothing listens there, so the proxy's connect is refused and the client reset for that.
  const remote = nsNode(topo, topo.pod, CLIENT, [topo.svcIp, '15001']);
  assert.equal(JSON.parse(await remote.waitLine(/^\{/)).error, 'ECONNRESET');
  const logged = () => proxy.output().split('\n').filter((l) => l.includes('"connection closed"')).map((l) => JSON.parse(l));
  const deadline = Date.now() + 5000;
  while (logged().length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const entries = logged();
  assert.deepEqual(
    entries.map((e) => [e.originalDst?.host ?? null, e.reason]).sort(),
    [
      ['10.77.0.2', 'connect-refused'],
      [null, 'loop-refused'],
      [null, 'loop-refused'],
      [null, 'loop-refused'],
    ].sort(),
    JSON.stringify(entries),
  );
  assert.deepEqual(entries.filter((e) => e.reason === 'loop-refused').map((e) => e.listener).sort(), ['outbound', 'outbound-1', 'outbound-2']);
});
