// One real gateway per test file: the `secondkey` binary cargo built
// (SECONDKEY_BIN, default target/debug/secondkey), with sdk/testdata's
// config and policies (shared with the Python suite).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../src/index.js';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, '../../..');
export const TESTDATA = join(ROOT, 'sdk', 'testdata');
const BIN = process.env.SECONDKEY_BIN || join(ROOT, 'target', 'debug', 'secondkey');

const TOKENS = {
  'agent:sdk-bot': 'SK_TEST_TOKEN_BOT',
  'agent:other-bot': 'SK_TEST_TOKEN_OTHER',
  'user:olivia': 'SK_TEST_TOKEN_OLIVIA',
  'user:rita': 'SK_TEST_TOKEN_RITA',
  'user:rex': 'SK_TEST_TOKEN_REX',
  'user:nora': 'SK_TEST_TOKEN_NORA',
  'service:runner': 'SK_TEST_TOKEN_RUNNER',
};
export const token = (who) => `sdk-test-${who.replace(':', '-')}`;

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
    s.on('error', rej);
  });
}

/** Starts a gateway; resolves to {url, stop(), client(who)}. */
export async function startGateway() {
  if (!existsSync(BIN)) throw new Error(`no gateway binary at ${BIN}: run \`cargo build -p secondkey\` or set SECONDKEY_BIN`);
  // A port asked of the kernel and released can be taken again before the
  // gateway binds it (test files run in parallel): then it exits saying
  // so, and it is started again on another port.
  for (let attempt = 1; ; attempt++) {
    const dir = mkdtempSync(join(tmpdir(), 'sk-jssdk-'));
    try {
      return await startOn(dir, await freePort());
    } catch (e) {
      const lost = existsSync(join(dir, 'gateway.log')) && /in use/i.test(readFileSync(join(dir, 'gateway.log'), 'utf8'));
      if (!lost || attempt === 3) throw e;
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

async function startOn(dir, port) {
  const env = { ...process.env, SECONDKEY_LISTEN: `127.0.0.1:${port}`, SECONDKEY_DATA_DIR: join(dir, 'data'), SECONDKEY_POLICY_DIR: join(TESTDATA, 'policies') };
  for (const [who, k] of Object.entries(TOKENS)) env[k] = token(who);
  const log = openSync(join(dir, 'gateway.log'), 'w');
  const child = spawn(BIN, ['serve', '--config', join(TESTDATA, 'gateway.toml')], { env, stdio: ['ignore', 'ignore', log] });
  const url = `http://127.0.0.1:${port}`;
  let exited = null;
  child.on('exit', (c) => { exited = c; });
  const deadline = Date.now() + 30000;
  for (;;) {
    if (exited !== null) throw new Error(`the gateway exited with ${exited} (log: ${join(dir, 'gateway.log')})`);
    // Healthy, and answered by this child: it says where it listens once
    // it has bound the port (test files run in parallel, and another
    // file's gateway could hold the port if this one could not bind it).
    try {
      const r = await fetch(`${url}/healthz`);
      const ours = readFileSync(join(dir, 'gateway.log'), 'utf8').includes(`listening on ${url}\n`);
      if (r.status === 200 && ours) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error('the gateway did not become healthy'); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    client: (who = 'agent:sdk-bot', opts = {}) => new Client({ url, token: token(who), ...opts }),
    env: () => ({ ...process.env, SECONDKEY_URL: url, SECONDKEY_TOKEN: token('agent:sdk-bot') }),
    async stop() {
      if (exited === null) {
        const done = new Promise((r) => child.on('exit', r));
        child.kill('SIGTERM');
        await done;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let n = 0;
/** A fresh resource per test, so identical actions never meet across tests. */
export const unique = (prefix = 'r') => `crm://test/${prefix}-${process.pid}-${++n}-${process.hrtime.bigint()}`;

export const writeAction = (resource = unique('write'), params = { to: 'customer@example.com' }) =>
  ({ kind: 'tool', operation: 'write', resource, params, context: { environment: 'test' } });

/** As a reviewer: wait until a request matching `match(action)` is pending, decide it; its id. */
export async function decideWhenPending(reviewer, match, decision = 'approve', comment = 'ok by test', timeoutMs = 20000) {
  const pred = typeof match === 'string' ? (a) => a.resource === match : match;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const page = await reviewer.listRequests({ state: 'pending' });
    const r = page.requests.find((x) => pred(x.action));
    if (r) {
      await reviewer.review(r.id, decision, comment);
      return r.id;
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error('nothing pending matched');
}
