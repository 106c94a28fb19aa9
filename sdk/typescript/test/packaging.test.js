// `npm install ./sdk/typescript` into a fresh project: the package has no
// dependencies of its own, ships its sources and types (no tests), and
// imports without any agent framework installed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { digest } from '../src/index.js';

const PKG = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', timeout: 300000 });

test('npm pack ships src and types, and a fresh project installs and imports it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sk-npm-'));
  try {
    const [packed] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], PKG));
    const files = packed.files.map((f) => f.path);
    assert.ok(files.includes('src/index.js') && files.includes('src/index.d.ts') && files.includes('README.md'));
    assert.ok(files.includes('src/integrations/langchain.d.ts'));
    assert.ok(!files.some((f) => f.startsWith('test/')), 'tests are not shipped');
    const app = join(dir, 'app');
    npm(['init', '-y'], dir);
    execFileSync('mkdir', ['-p', app]);
    writeFileSync(join(app, 'package.json'), '{"name":"app","private":true,"type":"module"}');
    npm(['install', join(dir, packed.filename)], app);
    assert.ok(!existsSync(join(app, 'node_modules', 'langchain')), 'optional peers are not installed');
    writeFileSync(join(app, 'main.js'), "import { digest, VERSION } from 'secondkey'; console.log(VERSION, digest({ b: 1, a: [1.5, 'x'] }));");
    const out = execFileSync(process.execPath, ['main.js'], { cwd: app, encoding: 'utf8' }).trim();
    assert.equal(out, `0.1.0 ${digest({ a: [1.5, 'x'], b: 1 })}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
