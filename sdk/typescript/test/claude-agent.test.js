// Claude Agent SDK (TypeScript): the canUseTool callback and the result hooks,
// called directly. The SDK drives the Claude Code CLI, which needs Anthropic's
// service, so no agent loop runs here; the callback is what the CLI calls for
// each tool use, and it is typed against the SDK's own CanUseTool (see
// src/integrations/claude-agent.d.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { secondkeyPermissions } from '../src/integrations/claude-agent.js';
import { Client } from '../src/index.js';
import { startGateway, unique, decideWhenPending, freePort } from './helpers.js';

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
