// An upstream the kernel cannot route to: the client is reset (never a clean EOF that looks like
// an empty reply) and the connection is logged once as connect-unreachable. The pod namespace
// gets an `unreachable` route, so the connect fails at once with EHOSTUNREACH.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../../src/kernel/run.js';
import { nsNode, startNsProxy, topology } from '../helpers/netns.js';

const CLIENT = `
import net from 'node:net';
const c = net.connect({ host: '127.0.0.1', port: Number(process.argv[1]), allowHalfOpen: true });
let got = '';
c.on('data', (d) => (got += d));
c.on('end', () => console.log(JSON.stringify({ ended: 'eof', got })));
c.on('error', (e) => console.log(JSON.stringify({ ended: e.code, got })));
`;

test('an unreachable upstream resets the client and is logged as connect-unreachable', async (t) => {
  const topo = await topology(t, { prefix: 'hcunr' });
  await run('ip', ['route', 'add', 'unreachable', '10.99.0.0/16'], { netns: topo.pod });
  const proxy = await startNsProxy(topo, ['--route', '127.0.0.1:15009=10.99.0.1:80']);
  t.after(() => proxy.stop());

  const client = nsNode(topo, topo.pod, CLIENT, ['15009']);
  const seen = JSON.parse(await client.waitLine(/^\{/));
  assert.deepEqual(seen, { ended: 'ECONNRESET', got: '' }, 'the client is reset, not given an empty reply');

  const closed = (): { reason: string; target: { host: string } }[] =>
    proxy.output().split('\n').filter((l) => l.includes('"connection closed"')).map((l) => JSON.parse(l));
  for (let i = 0; i < 100 && closed().length === 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(closed().map((l) => [l.reason, l.target.host]), [['connect-unreachable', '10.99.0.1']], proxy.output());
});
