// The short loopback demonstration `make demo` ran before the lab existed, kept as an example of
// embedding the proxy: an upstream that closes first, halfclose in between, and a client that
// keeps its half-closed side open, sends a late message and closes. The last line is the
// connection's access-log entry. Run it with `npx tsx examples/loopback-demo.ts` (or, once built,
// `node dist/examples/loopback-demo.js`).

import net from 'node:net';
import { once } from 'node:events';
import { resolveConfig } from '../src/config/schema.js';
import { silentLogger } from '../src/log.js';
import { Proxy } from '../src/proxy/proxy.js';

const say = (who: string, what: string): void => console.log(`${who.padEnd(9)} ${what}`);

let upstreamDone: Promise<void> = Promise.resolve();
const upstream = net.createServer({ allowHalfOpen: true }, (s) => {
  say('upstream', 'accepted; sends "hello" and closes its side (FIN) at once');
  s.end('hello');
  let got = '';
  s.on('data', (d) => (got += d));
  upstreamDone = new Promise((resolve) =>
    s.on('end', () => {
      say('upstream', `read ${JSON.stringify(got)}, then the client's FIN`);
      resolve();
    }),
  );
});
upstream.listen(0, '127.0.0.1');
await once(upstream, 'listening');
const upPort = (upstream.address() as net.AddressInfo).port;

const config = resolveConfig({ listeners: [{ kind: 'route', name: 'demo', listen: '127.0.0.1:0', upstream: `127.0.0.1:${upPort}` }], admin: { address: 'off' }, accessLog: 'stdout' }, 'demo');
const proxy = new Proxy(config, { logger: silentLogger() });
proxy.observe({
  halfClosed: (_c, dir) => say('halfclose', `FIN read ${dir === 'c2s' ? 'client->server' : 'server->client'}: forwarded as a write-side shutdown`),
  closed: (c) => say('halfclose', `connection ${c.id} closed: ${c.reason} (${c.c2s.bytes} bytes up, ${c.s2c.bytes} down)`),
});
await proxy.start();
const port = proxy.listeners()[0]!.address.port;

const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
let got = '';
client.on('data', (d) => (got += d));
await once(client, 'end');
say('client', `read ${JSON.stringify(got)}, then EOF: the upstream is done, our side stays open`);
await new Promise((r) => setTimeout(r, 500));
say('client', 'half a second later: sends "late message" and closes (FIN)');
client.end('late message');
await once(client, 'close');
await upstreamDone;
await proxy.close();
upstream.close();
