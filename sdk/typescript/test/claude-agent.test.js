// Claude Agent SDK (TypeScript): the canUseTool callback and the result hooks,
// called directly, and through the real SDK's query() loop driving a stand-in
// for the Claude Code CLI (sdk/testdata/fake-claude-code: the CLI's stdio
// protocol, one scripted turn) — the real CLI needs Anthropic's service.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { query } from '@anthropic-ai/claude-agent-sdk';
import { secondkeyPermissions } from '../src/integrations/claude-agent.js';
import { Client } from '../src/index.js';
import { startGateway, unique, decideWhenPending, freePort, TESTDATA } from './helpers.js';

let gw, bot, rita;
before(async () => { gw = await startGateway(); bot = gw.client(); rita = gw.client('user:rita'); });
after(() => gw.stop());

const opts = (toolUseID) => ({ signal: new AbortController().signal, toolUseID });

test('an approved tool use is allowed with the approved input, and recorded', async () => {
  const resource = unique('cc');
  const perms = secondkeyPermissions(bot, { resource: () => resource });
  const input = { file_path: '/srv/app/config.yaml', content: 'debug: false\n' };
  const reviewer = decideWhenPending(rita, resource);
  const result = await perms.canUseTool('Write', input, opts('toolu_1'));
  const rid = await reviewer;
  assert.deepEqual(result, { behavior: 'allow', updatedInput: input });
  await perms.hooks.PostToolUse[0].hooks[0]({ hook_event_name: 'PostToolUse', tool_name: 'Write', tool_input: input, tool_response: 'ok', tool_use_id: 'toolu_1' }, 'toolu_1', { signal: new AbortController().signal });
  assert.equal((await bot.getRequest(rid)).state, 'executed');
  assert.equal(perms.pending.size, 0);
});

test('a denied tool use names the policy and the request', async () => {
  const resource = unique('cc-deny');
  const perms = secondkeyPermissions(bot, { resource: () => resource });
  const reviewer = decideWhenPending(rita, resource, 'deny', 'not in prod');
  const result = await perms.canUseTool('Edit', { file_path: '/etc/hosts' }, opts('t2'));
  const rid = await reviewer;
  assert.equal(result.behavior, 'deny');
  assert.ok(result.message.includes(rid) && result.message.includes('sdk:writes-need-a-reviewer') && result.message.includes('not in prod'));
});

test('a failed tool is recorded as failed; a gateway that is down denies', async () => {
  const resource = unique('cc-fail');
  const perms = secondkeyPermissions(bot, { resource: () => resource });
  const reviewer = decideWhenPending(rita, resource);
  await perms.canUseTool('Write', { file_path: '/x' }, opts('t3'));
  const rid = await reviewer;
  await perms.postToolUseFailure({ hook_event_name: 'PostToolUseFailure', tool_name: 'Write', tool_input: {}, tool_use_id: 't3', error: 'disk full' }, 't3');
  assert.equal((await bot.getRequest(rid)).state, 'failed');
  const down = secondkeyPermissions(new Client({ url: `http://127.0.0.1:${await freePort()}`, token: 't', timeout: 2 }));
  const r = await down.canUseTool('Read', { file_path: '/x' }, opts('t4'));
  assert.equal(r.behavior, 'deny');
  assert.match(r.message, /could not authorize/);
});

for (const decision of ['approve', 'deny']) {
  test(`through the SDK's query() loop with a stand-in CLI: ${decision}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sk-cc-'));
    try {
      const target = join(dir, 'prod.yaml');
      const resource = unique('cc-cli');
      const perms = secondkeyPermissions(bot, { resource: () => resource });
      const env = { ...process.env, FAKE_CLAUDE_TOOL: JSON.stringify({ name: 'Write', input: { file_path: target, content: 'debug: false\n' } }), FAKE_CLAUDE_LOG: join(dir, 'cli.log') };
      async function* prompt() { yield { type: 'user', message: { role: 'user', content: 'turn debug off' }, parent_tool_use_id: null, session_id: '' }; }
      const reviewer = decideWhenPending(rita, resource, decision, 'checked');
      const texts = [];
      let result;
      for await (const msg of query({ prompt: prompt(), options: { pathToClaudeCodeExecutable: join(TESTDATA, 'fake-claude-code'), canUseTool: perms.canUseTool, hooks: perms.hooks, env } })) {
        if (msg.type === 'assistant') texts.push(...msg.message.content.filter((b) => b.type === 'text').map((b) => b.text));
        if (msg.type === 'result') result = msg;
      }
      const rid = await reviewer;
      assert.deepEqual(texts, ['All done.']);
      assert.equal(result.is_error, false);
      const seen = readFileSync(join(dir, 'cli.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.event === 'result');
      if (decision === 'approve') {
        assert.equal(readFileSync(target, 'utf8'), 'debug: false\n');
        assert.equal((await bot.getRequest(rid)).state, 'executed');
      } else {
        assert.ok(!existsSync(target));
        assert.ok(seen.is_error && seen.tool_result.includes(rid) && seen.tool_result.includes('sdk:writes-need-a-reviewer'), seen.tool_result);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('the PreToolUse hook decides every tool use (Claude Code skips canUseTool under bypassPermissions)', async () => {
  const resource = unique('cc-pre');
  const perms = secondkeyPermissions(bot, { resource: () => resource });
  assert.deepEqual(perms.hooks.PreToolUse, [{ hooks: [perms.preToolUse] }]);
  const input = { file_path: '/srv/app/prod.yaml', content: 'debug: false\n' };
  const hookInput = { hook_event_name: 'PreToolUse', tool_name: 'Write', tool_input: input, tool_use_id: 'toolu_7' };
  const reviewer = decideWhenPending(rita, resource);
  const out = await perms.hooks.PreToolUse[0].hooks[0](hookInput, 'toolu_7', { signal: new AbortController().signal });
  const rid = await reviewer;
  assert.equal(out.hookSpecificOutput.permissionDecision, 'allow');
  assert.deepEqual(out.hookSpecificOutput.updatedInput, input);
  // asked again through canUseTool: the decision is reused, no second request
  assert.deepEqual(await perms.canUseTool('Write', input, opts('toolu_7')), { behavior: 'allow', updatedInput: input });
  assert.equal((await bot.listRequests({ state: 'pending' })).requests.filter((r) => r.action.resource === resource).length, 0);
  await perms.postToolUse({ ...hookInput, hook_event_name: 'PostToolUse', tool_response: 'ok' }, 'toolu_7', {});
  assert.equal((await bot.getRequest(rid)).state, 'executed');
  const reviewer2 = decideWhenPending(rita, resource, 'deny', 'not in prod');
  const denied = await perms.preToolUse({ ...hookInput, tool_use_id: 'toolu_8' }, 'toolu_8', {});
  const rid2 = await reviewer2;
  assert.equal(denied.hookSpecificOutput.permissionDecision, 'deny');
  assert.match(denied.hookSpecificOutput.permissionDecisionReason, new RegExp(rid2));
  assert.equal(perms.pending.has('toolu_8'), false);
});
