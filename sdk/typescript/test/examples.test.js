// Every TypeScript example under examples/sdk/typescript runs end to end
// against the real gateway, with a reviewer deciding through the API. The
// examples are installed as their guide says (`npm install` there, whose
// .npmrc sets install-links, so `secondkey` is copied, not linked), into a
// copy of the repository's layout: a linked package could not resolve the
// frameworks it imports from the examples' node_modules.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, basename } from 'node:path';
import { startGateway, decideWhenPending, ROOT } from './helpers.js';

const noModules = (src) => basename(src) !== 'node_modules';
let copy, EXAMPLES, gw, rita;

before(async () => {
  copy = mkdtempSync(join(tmpdir(), 'sk-examples-'));
  EXAMPLES = join(copy, 'examples', 'sdk', 'typescript');
  cpSync(join(ROOT, 'examples', 'sdk', 'typescript'), EXAMPLES, { recursive: true, filter: noModules });
  cpSync(join(ROOT, 'sdk', 'typescript'), join(copy, 'sdk', 'typescript'), { recursive: true, filter: noModules });
  try {
    execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'],
      { cwd: EXAMPLES, encoding: 'utf8', timeout: 300000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`npm install in examples/sdk/typescript failed: ${e.stderr || e.message}`);
  }
  assert.ok(!lstatSync(join(EXAMPLES, 'node_modules', 'secondkey')).isSymbolicLink(),
    'the .npmrc installs secondkey as a copy');
  gw = await startGateway();
  rita = gw.client('user:rita');
});
after(() => {
  gw?.stop();
  if (copy) rmSync(copy, { recursive: true, force: true });
});

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
