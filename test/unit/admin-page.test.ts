// The live admin page in headless Chromium (Debian's chromium driven by playwright-core): it loads,
// shows a half-closed connection this test made with its per-direction states, highlights it, and
// updates when the connection closes. HALFCLOSE_ADMIN_SCREENSHOT=FILE also saves a screenshot
// (docs/img/admin.png is made this way).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { silentLogger } from '../../src/log.js';
import { startAdminServer } from '../../src/admin/server.js';
import { connect, startRouteProxy, startServer, waitFor } from '../helpers/proxy.js';

const CHROMIUM = '/usr/bin/chromium';

async function launch(userDataDir: string): Promise<BrowserContext> {
  // A fresh profile (playwright passes it as --user-data-dir) and no background traffic: the
  // browser only talks to our loopback admin port.
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1360, height: 740 },
    timeout: 60_000,
  });
}

/** Text of the row for connection `id`, cell by cell (locators only: functions shipped to the browser would need the DOM types and survive tsx's rewriting). */
async function rowOf(page: Page, id: number): Promise<Record<string, string>> {
  const tr = page.locator(`#conns tbody tr[data-id="${id}"]`);
  const cell = async (col: string): Promise<string> => (await tr.locator(`td[data-col="${col}"]`).textContent()) ?? '';
  return {
    rowState: (await tr.getAttribute('data-state')) ?? '',
    highlighted: String(((await tr.getAttribute('class')) ?? '').split(' ').includes('half-closed')),
    state: await cell('state'),
    c2s: await cell('c2s'),
    s2c: await cell('s2c'),
    halfClosedFor: await cell('half-closed-for'),
  };
}

test('the live page shows a half-closed connection with its direction states and updates when it closes', { timeout: 120_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} is not installed (scripts/setup-system.sh installs Debian's chromium)`);
    return;
  }
  const ups: net.Socket[] = [];
  const up = await startServer((s) => {
    ups.push(s);
    s.on('data', () => {});
    s.on('error', () => {});
  });
  const px = await startRouteProxy(up.port, { listeners: [{ kind: 'route', name: 'app', listen: '127.0.0.1:0', upstream: `127.0.0.1:${up.port}` }] });
  const admin = await startAdminServer(px.proxy, { address: { host: '127.0.0.1', port: 0, family: 4 }, logger: silentLogger() });
  const profile = mkdtempSync(path.join(os.tmpdir(), 'halfclose-chromium-'));
  const clients: net.Socket[] = [];
  let browser: BrowserContext | null = null;
  t.after(async () => {
    await browser?.close();
    rmSync(profile, { recursive: true, force: true });
    for (const c of clients) c.destroy();
    await admin.close();
    await px.close();
    // An upstream socket that read its EOF no longer reads, so it misses the proxy's reset: destroy it.
    for (const u of ups) u.destroy();
    await up.close();
  });

  browser = await launch(profile);
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(admin.url);
  await page.locator('#status', { hasText: /^ready$/ }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#no-conns').isVisible(), true, 'no connections yet');

  // One connection the client resets (a closed-by-reason count), one left open with traffic,
  // and the one under test: the server half-closes it, the client keeps its side open.
  const gone = await connect(px.port);
  clients.push(gone);
  gone.on('error', () => {});
  await waitFor(() => ups.length === 1, 5000, 'first upstream');
  gone.resetAndDestroy();
  await px.closed(1);

  const open = await connect(px.port);
  clients.push(open);
  open.on('data', () => {});
  open.write('GET / HTTP/1.0\r\n\r\n');
  await waitFor(() => ups.length === 2, 5000, 'second upstream');
  ups[1]!.write('x'.repeat(3000));

  const hc = await connect(px.port);
  clients.push(hc);
  hc.on('data', () => {});
  hc.write('request');
  await waitFor(() => ups.length === 3, 5000, 'third upstream');
  ups[2]!.end('last words'); // the server's FIN: the proxy forwards it, the connection is half-closed
  await waitFor(() => [...px.proxy.registry.all()].some((c) => c.state === 'half-closed-server'), 5000, 'half-closed in the registry');
  const hcId = [...px.proxy.registry.all()].find((c) => c.state === 'half-closed-server')!.id;
  // And one the client half-closes (an HTTP/1.0-style request, then the client's FIN).
  const asking = await connect(px.port);
  clients.push(asking);
  asking.on('data', () => {});
  asking.end('GET /report HTTP/1.0\r\n\r\n');
  await waitFor(() => [...px.proxy.registry.all()].some((c) => c.state === 'half-closed-client'), 5000, 'half-closed by the client');

  // The page finds it on its own (it polls once a second).
  await page.waitForSelector(`#conns tbody tr[data-id="${hcId}"][data-state="half-closed-server"]`, { timeout: 15_000 });
  const row = await rowOf(page, hcId);
  assert.equal(row.state, 'half-closed-server');
  assert.equal(row.highlighted, 'true', 'half-closed rows are highlighted');
  assert.match(row.c2s, /^open/, 'client -> server still open');
  assert.match(row.s2c, /^fin-forwarded/, "the server's FIN was forwarded to the client");
  assert.match(row.s2c, /10 B$/, 'bytes server -> client');
  assert.notEqual(row.halfClosedFor, '\u2014', 'half-closed duration shown');
  await page.locator('#conns tbody tr[data-state="half-closed-client"]').waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#conns tbody tr[data-state="open"]:not(.half-closed)').count(), 1, 'the open connection is listed, not highlighted');
  assert.equal(await page.locator('#conns tbody tr.half-closed').count(), 2, 'both half-closed connections are highlighted');
  await page.locator('#active [data-state="half-closed-server"] .big', { hasText: /^1$/ }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#reasons [data-reason="downstream-reset"] .num').textContent(), '1');
  // The guard's status is what proxy.guard.status() says.
  const g = px.proxy.guard.status();
  const guardText = (await page.locator('#guard').textContent()) ?? '';
  assert.ok(guardText.includes(`mode${g.mode}`), guardText);
  assert.ok(guardText.includes(g.closeWaitSec === null ? 'unknown' : `${g.closeWaitSec} s`), guardText);
  if (g.halfClosed) assert.ok(guardText.includes(`idle ${g.halfClosed.idleSec} s, every ${g.halfClosed.intervalSec} s, ${g.halfClosed.count} probes`), guardText);

  const shot = process.env.HALFCLOSE_ADMIN_SCREENSHOT;
  if (shot) {
    mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });
  }

  // The client sends its late message and its FIN: the row goes, both-fin is counted.
  hc.end('late');
  await page.waitForSelector(`#conns tbody tr[data-id="${hcId}"]`, { state: 'detached', timeout: 15_000 });
  await page.locator('#reasons [data-reason="both-fin"] .num', { hasText: /^1$/ }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#conns tbody tr.half-closed').count(), 1, 'only the client-half-closed row is left highlighted');
  assert.equal(await page.locator('#conns tbody tr').count(), 2, 'the other connections are still listed');
  assert.deepEqual(pageErrors, [], 'no script errors on the page');
});
