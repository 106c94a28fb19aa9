// The SDKs follow the gateway's version (the workspace Cargo.toml).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VERSION } from '../src/index.js';
import { ROOT } from './helpers.js';

test('versions agree with the gateway', () => {
  const cargo = readFileSync(join(ROOT, 'Cargo.toml'), 'utf8').match(/\[workspace\.package\][^[]*?version = "([^"]+)"/)[1];
  const pkg = JSON.parse(readFileSync(join(ROOT, 'sdk', 'typescript', 'package.json'), 'utf8')).version;
  const py = readFileSync(join(ROOT, 'sdk', 'python', 'pyproject.toml'), 'utf8').match(/^version = "([^"]+)"/m)[1];
  assert.deepEqual([VERSION, pkg, py], [cargo, cargo, cargo]);
});
