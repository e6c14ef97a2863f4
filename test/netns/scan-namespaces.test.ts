// `scan --all-netns` on a node where pods come and go: a namespace that `ip netns del` is halfway
// through removing (unmounted, name not yet unlinked) counts as gone, not as an error.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../../src/kernel/run.js';
import { listHostNamespaces, namespaceExists } from '../../src/scan/collect.js';

test('a named namespace whose mount is gone but whose file remains no longer exists for the scan', async (t) => {
  const name = `hcscanns-${process.pid}`;
  await run('ip', ['netns', 'add', name]);
  t.after(() => run('ip', ['netns', 'del', name]).catch(() => run('rm', ['-f', `/run/netns/${name}`]).catch(() => {})));
  const ns = listHostNamespaces().find((n) => n.name === name);
  assert.ok(ns, `${name} is listed`);
  assert.equal(namespaceExists(ns), true);
  // What `ip netns del` does first; entering the name now fails with "Invalid argument".
  await run('umount', [`/run/netns/${name}`]);
  await assert.rejects(run('ip', ['netns', 'exec', name, 'true']));
  assert.equal(namespaceExists(ns), false);
});
