// The relay's basic promises on loopback: bytes both ways, a FIN forwarded as a half-close while
// the other direction keeps flowing, an RST forwarded as an RST, a refused upstream resets the client.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, connectAndObserve, fdCount, observe, startRouteProxy, startServer, waitFor } from '../helpers/proxy.js';

test('server FIN first: client still sends a late message, which arrives', async () => {
  let serverSaw: Promise<{ data: Buffer; end: string }> | null = null;
  const up = await startServer((s) => {
    serverSaw = observe(s);
    s.end('bye from server');
  });
  const px = await startRouteProxy(up.port);
  const fds = fdCount();
  const c = await connect(px.port);
  const clientSaw = observe(c);
  const seen = await new Promise<Buffer>((r) => c.once('end', () => r(Buffer.alloc(0))));
  assert.equal(seen.length, 0);
  c.end('late message');
  const [cs, ss] = await Promise.all([clientSaw, serverSaw!]);
  assert.equal(cs.data.toString(), 'bye from server');
  assert.equal(cs.end, 'eof');
  assert.equal(ss.data.toString(), 'late message');
  assert.equal(ss.end, 'eof');
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'both-fin');
  await waitFor(() => fdCount() <= fds, 2000, 'fds to return');
  await px.close();
  await up.close();
});

test('client RST is forwarded to the upstream as an RST', async () => {
  let serverSaw: Promise<{ data: Buffer; end: string }> | null = null;
  const up = await startServer((s) => {
    serverSaw = observe(s);
  });
  const px = await startRouteProxy(up.port);
  const c = await connect(px.port);
  c.write('x');
  await waitFor(() => serverSaw !== null, 2000, 'upstream accept');
  await waitFor(() => px.proxy.registry.size === 1 && [...px.proxy.registry.all()][0]!.c2s.bytes === 1, 2000, 'byte relayed');
  c.resetAndDestroy();
  const ss = await serverSaw!;
  assert.equal(ss.end, 'reset');
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'downstream-reset');
  await px.close();
  await up.close();
});

test('a refused upstream resets the client and is counted as connect-refused', async () => {
  const up = await startServer(() => {});
  const port = up.port;
  await up.close();
  const px = await startRouteProxy(port);
  const cs = await connectAndObserve(px.port);
  assert.equal(cs.end, 'reset');
  const [entry] = await px.closed(1);
  assert.equal(entry!.reason, 'connect-refused');
  await px.close();
});
