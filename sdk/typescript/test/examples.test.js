// Every TypeScript example under examples/sdk/typescript runs end to end
// against the real gateway, with a reviewer deciding through the API. Their
// node_modules is laid out as `npm install` there would (a link to this
// package for `file:`, the frameworks linked from this package's install),
// so CI installs nothing twice.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, symlinkSync, existsSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { startGateway, decideWhenPending, ROOT } from './helpers.js';

const EXAMPLES = join(ROOT, 'examples', 'sdk', 'typescript');
const PKG = join(ROOT, 'sdk', 'typescript');
let gw, rita;

before(async () => {
  const deps = JSON.parse(readFileSync(join(EXAMPLES, 'package.json'), 'utf8')).dependencies;
  for (const name of Object.keys(deps)) {
    const link = join(EXAMPLES, 'node_modules', name);
    if (existsSync(link)) continue;
    mkdirSync(dirname(link), { recursive: true });
    symlinkSync(name === 'secondkey' ? PKG : join(PKG, 'node_modules', name), link, 'dir');
  }
  gw = await startGateway();
  rita = gw.client('user:rita');
});
after(() => gw.stop());

async function runExample(file, resource, decision = 'approve') {
  const child = spawn(process.execPath, [join(EXAMPLES, file)], { env: gw.env(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((r) => child.on('exit', r));
  await decideWhenPending(rita, resource, decision, 'from the example test', 60000);
  const code = await exited;
  assert.equal(code, 0, err);
  return out;
}

for (const decision of ['approve', 'deny']) {
  test(`guard quickstart: ${decision}`, async () => {
    const out = await runExample('guard-quickstart.mjs', 'crm://customers/refunds', decision);
    if (decision === 'approve') assert.equal(out.trim(), 'refunded 1500 cents to cus_42');
    else assert.ok(out.startsWith('not run:') && out.includes('sdk:writes-need-a-reviewer'), out);
  });
}

test('LangChain.js agent', async () => {
  const out = await runExample('langchain-agent.mjs', 'crm://customers/email');
  assert.match(out, /tool: sent to ada@example.com/);
  assert.match(out, /ai: Done\./);
});

test('OpenAI Agents SDK agent', async () => {
  const out = await runExample('openai-agents-agent.mjs', 'billing://refunds');
  assert.match(out, /tool: refunded 1500 cents to cus_42/);
  assert.match(out, /ai: Done\./);
});

test('Vercel AI SDK agent, denied', async () => {
  const out = await runExample('ai-sdk-agent.mjs', 'k8s://prod/deployments', 'deny');
  assert.match(out, /tool error: Tool deploy was not run: .*sdk:writes-need-a-reviewer/);
  assert.match(out, /ai: Done\./);
});

test('Vercel AI SDK agent, approved', async () => {
  const out = await runExample('ai-sdk-agent.mjs', 'k8s://prod/deployments');
  assert.match(out, /tool: deployed checkout 2.4.1/);
});

test('Claude Agent SDK permission callback', async () => {
  const out = await runExample('claude-agent-permissions.mjs', 'repo://app/Write');
  assert.match(out, /decision: allow/);
  assert.match(out, /recorded/);
});
