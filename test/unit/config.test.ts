// The config file: schema validation (unknown keys rejected, renamed keys hinted), defaults,
// flags over the file, and --print-config output that loads back to the same configuration.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { loadConfig, mergeConfig, readConfigFile } from '../../src/config/load.js';
import { DEFAULTS, describeConfig, fileSchema, parseBytes, parseKeepalive, resolveConfig, upstreamSourceFor, validateFile, type FileConfig } from '../../src/config/schema.js';
import { HalfcloseError, type ErrorCode } from '../../src/errors.js';

const route = { kind: 'route' as const, listen: '127.0.0.1:9000', upstream: '127.0.0.1:6379' };

function fails(fn: () => unknown, code: ErrorCode, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof HalfcloseError, `not a HalfcloseError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), `message is one line: ${err.message}`);
    return true;
  });
}

function withFile(text: string, fn: (file: string) => void): void {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'halfclose-config-'));
  try {
    const file = path.join(dir, 'proxy.yaml');
    writeFileSync(file, text);
    fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('defaults: connect 5s, idle 1h, half-close off, max duration off, drain 30s, 1 MiB buffer', () => {
  const c = resolveConfig({}, 'test');
  assert.equal(c.connectTimeoutMs, 5000);
  assert.equal(c.idleTimeoutMs, 3_600_000);
  assert.equal(c.halfCloseTimeoutMs, 0);
  assert.equal(c.maxDurationMs, 0);
  assert.equal(c.drainTimeoutMs, 30_000);
  assert.equal(c.bufferLimitBytes, 1 << 20);
  assert.deepEqual(c.keepaliveHalfClosed, { mode: 'auto' });
  assert.deepEqual(c.keepaliveEstablished, { mode: 'off' });
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 15000, family: 4 });
  assert.equal(c.accessLog, 'stdout');
  assert.equal(c.logLevel, 'info');
  assert.ok(Object.isFrozen(c));
});

test('listeners: route needs an upstream, original-destination kinds refuse one, inbound binds 127.0.0.6 or ::6', () => {
  const c = resolveConfig({ listeners: [route, { kind: 'outbound', listen: '127.0.0.1:15001' }, { kind: 'inbound', listen: '0.0.0.0:15006' }] }, 'f.yaml');
  assert.deepEqual(
    c.listeners.map((l) => [l.name, l.kind, l.upstream?.port ?? null, l.upstreamSource]),
    [
      ['route-9000', 'route', 6379, null],
      ['outbound', 'outbound', null, null],
      ['inbound', 'inbound', null, '127.0.0.6,::6'],
    ],
  );
  // The source of the destination's family is bound; none of that family: the kernel chooses.
  assert.equal(upstreamSourceFor('127.0.0.6,::6', '10.77.0.1'), '127.0.0.6');
  assert.equal(upstreamSourceFor('127.0.0.6,::6', 'fd77::1'), '::6');
  assert.equal(upstreamSourceFor('127.0.0.6', 'fd77::1'), null);
  assert.equal(upstreamSourceFor(null, '10.77.0.1'), null);
  fails(() => resolveConfig({ listeners: [{ kind: 'inbound', listen: '0.0.0.0:15006', upstreamSource: '127.0.0.6,127.0.0.7' }] }, 'f.yaml'), 'HC_ERR_CONFIG', /listeners\[0\]\.upstreamSource: at most one IPv4 address/);
  fails(() => resolveConfig({ listeners: [{ kind: 'inbound', listen: '0.0.0.0:15006', upstreamSource: 'localhost' }] }, 'f.yaml'), 'HC_ERR_CONFIG', /listeners\[0\]\.upstreamSource: expected an IP address/);
  fails(() => resolveConfig({ listeners: [{ kind: 'route', listen: '127.0.0.1:9000' }] }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: listeners\[0\]\.upstream: a route listener needs/);
  fails(() => resolveConfig({ listeners: [{ kind: 'outbound', listen: '127.0.0.1:1', upstream: '127.0.0.1:2' }] }, 'f.yaml'), 'HC_ERR_CONFIG', /only route listeners have a fixed upstream/);
  fails(() => resolveConfig({ listeners: [route, route] }, 'f.yaml'), 'HC_ERR_CONFIG', /two listeners are named "route-9000"/);
  fails(() => resolveConfig({ listeners: [{ ...route, listen: '127.0.0.1' }] }, 'f.yaml'), 'HC_ERR_ADDRESS', /^f\.yaml: listeners\[0\]\.listen: expected HOST:PORT/);
});

test('unknown keys are rejected with their full path; renamed keys say what to write instead', () => {
  fails(() => validateFile({ listner: [] }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: unknown key "listner"$/);
  fails(() => validateFile({ timeouts: { idel: '5s' } }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: unknown key "timeouts\.idel"$/);
  fails(() => validateFile({ listeners: [{ ...route, port: 1 }] }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: unknown key "listeners\[0\]\.port"$/);
  fails(() => validateFile({ idle_timeout: '5s' }, 'f.yaml'), 'HC_ERR_CONFIG', /unknown key "idle_timeout"; use timeouts\.idle instead/);
  fails(() => validateFile({ routes: [] }, 'f.yaml'), 'HC_ERR_CONFIG', /use listeners \(kind: route\) instead/);
  fails(() => validateFile({ listeners: [{ kind: 'sideways', listen: '127.0.0.1:1' }] }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: listeners\[0\]\.kind: /);
  fails(() => validateFile({ logLevel: 'loud' }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: logLevel: /);
});

test('values: durations need a unit, sizes and keepalive have their own forms, admin stays on loopback', () => {
  fails(() => resolveConfig({ timeouts: { idle: 30 } }, 'f.yaml'), 'HC_ERR_DURATION', /^f\.yaml: timeouts\.idle: expected a duration with a unit/);
  fails(() => resolveConfig({ timeouts: { drain: '30' } }, 'f.yaml'), 'HC_ERR_DURATION', /^f\.yaml: timeouts\.drain: /);
  assert.equal(resolveConfig({ timeouts: { idle: 0 } }, 'f.yaml').idleTimeoutMs, 0);
  assert.equal(parseBytes('64KiB', 'x'), 65536);
  assert.equal(parseBytes('2m', 'x'), 2 << 20);
  assert.equal(parseBytes(1 << 20, 'x'), 1 << 20);
  fails(() => parseBytes('1k', 'bufferLimit'), 'HC_ERR_CONFIG', /bufferLimit: must be at least 16KiB/);
  fails(() => resolveConfig({ bufferLimit: 1000 }, 'f.yaml'), 'HC_ERR_CONFIG', /^f\.yaml: bufferLimit: must be at least 16KiB/);
  fails(() => parseBytes('lots', 'bufferLimit'), 'HC_ERR_CONFIG', /expected a size such as 65536, 64KiB or 1MiB/);
  assert.deepEqual(parseKeepalive('20s:20s:3', 'x'), { mode: 'fixed', idleSec: 20, intervalSec: 20, count: 3 });
  assert.deepEqual(parseKeepalive('30:10:5', 'x'), { mode: 'fixed', idleSec: 30, intervalSec: 10, count: 5 });
  assert.deepEqual(parseKeepalive('0', 'x'), { mode: 'off' });
  fails(() => parseKeepalive('auto', 'keepalive.established', false), 'HC_ERR_CONFIG', /expected off, or IDLE:INTERVAL:COUNT/);
  fails(() => parseKeepalive('500ms:1s:3', 'keepalive.halfClosed'), 'HC_ERR_CONFIG', /IDLE must be whole seconds/);
  fails(() => parseKeepalive('1s:1s:0', 'keepalive.halfClosed'), 'HC_ERR_CONFIG', /COUNT must be 1-127/);
  fails(() => resolveConfig({ admin: { address: '0.0.0.0:15000' } }, 'f.yaml'), 'HC_ERR_CONFIG', /not a loopback address.*allowNonLoopback/);
  assert.equal(resolveConfig({ admin: { address: '0.0.0.0:15000', allowNonLoopback: true } }, 'f.yaml').admin?.host, '0.0.0.0');
  assert.equal(resolveConfig({ admin: { address: 'off' } }, 'f.yaml').admin, null);
});

test('the file: malformed YAML, a list at the top, duplicate keys and a missing file are one line each', () => {
  withFile('listeners: [\n', (f) => fails(() => readConfigFile(f), 'HC_ERR_CONFIG_FILE', /proxy\.yaml: not valid YAML: .*line 2, column 1$/));
  withFile('- a\n- b\n', (f) => fails(() => readConfigFile(f), 'HC_ERR_CONFIG_FILE', /expected a mapping of keys/));
  withFile('timeouts:\n  idle: 1s\n  idle: 2s\n', (f) => fails(() => readConfigFile(f), 'HC_ERR_CONFIG_FILE', /not valid YAML: Map keys must be unique/));
  fails(() => readConfigFile('/nonexistent/halfclose.yaml'), 'HC_ERR_CONFIG_FILE', /^--config: cannot read \/nonexistent\/halfclose\.yaml: ENOENT$/);
  withFile('', (f) => assert.deepEqual(readConfigFile(f), {}));
  withFile('# only a comment\n', (f) => assert.equal(loadConfig(f, {}).idleTimeoutMs, 3_600_000));
});

test('flags override the file key by key; listener flags replace the file listeners', () => {
  const yaml = 'listeners:\n  - kind: outbound\n    listen: 127.0.0.1:15001\ntimeouts:\n  idle: 10m\n  connect: 2s\naccessLog: off\n';
  withFile(yaml, (f) => {
    const fileOnly = loadConfig(f, {});
    assert.equal(fileOnly.idleTimeoutMs, 600_000);
    assert.equal(fileOnly.connectTimeoutMs, 2000);
    assert.equal(fileOnly.listeners[0]!.kind, 'outbound');
    const flags: FileConfig = { listeners: [{ ...route, name: 'route-0' }], timeouts: { idle: '30s' }, keepalive: {}, accessLog: 'stdout' };
    const both = loadConfig(f, flags);
    assert.equal(both.idleTimeoutMs, 30_000, 'flag wins');
    assert.equal(both.connectTimeoutMs, 2000, 'file value kept where no flag is given');
    assert.deepEqual(both.listeners.map((l) => l.name), ['route-0']);
    assert.equal(both.accessLog, 'stdout');
  });
  assert.deepEqual(mergeConfig({ listeners: [route] }, { listeners: [] }).listeners, [route], 'no listener flags keep the file listeners');
});

test('--print-config output is a config file that loads back to the same configuration', () => {
  const c = resolveConfig(
    {
      listeners: [route, { kind: 'inbound', listen: '[::]:15006', upstreamSource: '::6' }],
      timeouts: { connect: '250ms', idle: '1h30m', halfClose: '5m', maxDuration: '1d', drain: '0' },
      bufferLimit: '256KiB',
      keepalive: { halfClosed: '20s:20s:3', established: '1m:10s:5', userTimeout: '30s' },
      admin: { address: '127.0.0.1:0' },
      accessLog: '/var/log/halfclose.json',
      logLevel: 'warn',
    },
    'f.yaml',
  );
  const printed = YAML.stringify(describeConfig(c));
  assert.match(printed, /idle: 90m\n/);
  assert.match(printed, /drain: "0"\n/);
  const again = resolveConfig(validateFile(YAML.parse(printed), 'printed'), 'printed');
  assert.deepEqual(again, c);
  // And the defaults print in the units they are documented with.
  const d = describeConfig(resolveConfig({}, 'x')) as { timeouts: Record<string, string> };
  assert.deepEqual(d.timeouts, { connect: DEFAULTS.connect, idle: DEFAULTS.idle, halfClose: DEFAULTS.halfClose, maxDuration: DEFAULTS.maxDuration, drain: DEFAULTS.drain });
});

test('docs/config.md has a section for every key the schema accepts, and none for keys it does not', () => {
  // Every key path of the file schema: `timeouts.idle`, `listeners[].kind`, …
  const keys: string[] = [];
  const walk = (schema: unknown, prefix: string): void => {
    let s = schema as { def?: { type?: string; innerType?: unknown; element?: unknown }; shape?: Record<string, unknown> };
    while (s.def?.type === 'optional') s = s.def.innerType as typeof s;
    if (s.def?.type === 'array') return walk(s.def.element, `${prefix}[]`);
    if (s.def?.type === 'object' && s.shape) {
      for (const [k, v] of Object.entries(s.shape)) walk(v, prefix ? `${prefix}.${k}` : k);
      return;
    }
    keys.push(prefix);
  };
  walk(fileSchema, '');
  assert.ok(keys.includes('timeouts.idle') && keys.includes('listeners[].upstreamSource'), `walked ${keys.join(', ')}`);
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'docs', 'config.md'))) dir = path.dirname(dir);
  const doc = readFileSync(path.join(dir, 'docs', 'config.md'), 'utf8');
  const documented = [...doc.matchAll(/^### `([^`]+)`$/gm)].map((m) => m[1]!);
  for (const k of keys) {
    assert.ok(documented.includes(k), `docs/config.md has no "### \`${k}\`" section`);
    const section = doc.split(`### \`${k}\``)[1]!.split(/^##/m)[0]!;
    assert.match(section, /\*\*(Summary|Default)\*\*|^A list/m, `${k}: the section has a summary or default`);
  }
  for (const d of documented) assert.ok(keys.includes(d) || d === 'listeners[]', `docs/config.md documents "${d}", which the schema does not accept`);
});
