// Vercel AI SDK against the real gateway, with the AI SDK's own mock language
// model (MockLanguageModelV3 from ai/test): the model calls a tool, the
// gateway holds it, a reviewer approves through the API, the tool runs once,
// the model continues; on deny the model sees a tool error naming the policy
// and the request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateText, tool, stepCountIs } from 'ai';
import { MockLanguageModelV3 } from 'ai/test';
import { z } from 'zod';
import { guardTool, guardTools } from '../src/integrations/ai.js';
import { startGateway, unique, decideWhenPending } from './helpers.js';
import { Client } from '../src/index.js';

let gw, bot, rita;
before(async () => { gw = await startGateway(); bot = gw.client(); rita = gw.client('user:rita'); });
after(() => gw.stop());

const usage = { inputTokens: { total: 1, noCache: 1, cacheRead: 0, cacheWrite: 0 }, outputTokens: { total: 1, text: 1, reasoning: 0 } };
const scripted = (input) => new MockLanguageModelV3({
  doGenerate: [
    { content: [{ type: 'tool-call', toolCallId: 'call_1', toolName: 'sendEmail', input: JSON.stringify(input) }], finishReason: { unified: 'tool-calls', raw: undefined }, usage, warnings: [] },
    { content: [{ type: 'text', text: 'All done.' }], finishReason: { unified: 'stop', raw: undefined }, usage, warnings: [] },
  ],
});

for (const decision of ['approve', 'deny']) {
  test(`tool approval backed by secondkey: ${decision}`, async () => {
    const sent = [];
    const resource = unique('aisdk');
    const tools = guardTools({
      sendEmail: tool({ description: 'Send an email.', inputSchema: z.object({ to: z.string(), body: z.string() }), execute: async ({ to }) => { sent.push(to); return `sent to ${to}`; } }),
    }, bot, { sendEmail: { operation: 'write', resource } });
    const model = scripted({ to: 'a@example.com', body: 'hi' });
    const reviewer = decideWhenPending(rita, resource, decision, 'checked');
    const result = await generateText({ model, tools, prompt: 'email a', stopWhen: stepCountIs(3) });
    const rid = await reviewer;
    assert.equal(result.text, 'All done.');
    // what the model was shown on its second call
    const toolMsg = model.doGenerateCalls[1].prompt.find((m) => m.role === 'tool');
    const part = toolMsg.content.find((c) => c.type === 'tool-result');
    if (decision === 'approve') {
      assert.deepEqual(sent, ['a@example.com']);
      assert.deepEqual(part.output, { type: 'text', value: 'sent to a@example.com' });
      assert.equal((await bot.getRequest(rid)).state, 'executed');
    } else {
      assert.deepEqual(sent, []);
      assert.equal(part.output.type, 'error-text');
      assert.ok(part.output.value.includes(rid) && part.output.value.includes('sdk:writes-need-a-reviewer'), part.output.value);
    }
  });
}

test('guardTools: without policies every tool is guarded; with them only the named ones', async () => {
  // A client the gateway refuses: a guarded tool cannot run, an unguarded one runs.
  const refused = new Client({ url: bot.url, token: 'not-a-token-of-anyone' });
  const runs = [];
  const make = (n) => ({ description: n, execute: async () => { runs.push(n); return n; } });
  const call = (t) => t.execute({}, { toolCallId: 'c1', messages: [] });
  const providerTool = { type: 'provider', id: 'web_search' }; // no execute: runs nothing here
  const all = guardTools({ a: make('a'), b: make('b'), search: providerTool }, refused);
  for (const name of ['a', 'b']) await assert.rejects(call(all[name]), /not run: secondkey could not authorize it/);
  assert.equal(all.search, providerTool, 'a tool without execute is returned unchanged');
  assert.deepEqual(runs, [], 'no tool ran unguarded');
  const some = guardTools({ a: make('a'), b: make('b') }, refused, { a: true });
  await assert.rejects(call(some.a), /not run: secondkey could not authorize it/);
  assert.equal(await call(some.b), 'b', 'a tool not named is returned unchanged');
  assert.deepEqual(runs, ['b']);
  assert.throws(() => guardTools({ a: make('a') }, bot, 'a'), /policies must be an object/);
  assert.throws(() => guardTools({ a: make('a') }, bot, null), /policies must be an object/);
});

test("the AI SDK wrapper runs the decided input, not the framework's object changed while the request waits", async () => {
  const seen = [];
  const resource = unique('ai-live');
  const t = guardTool('refund', { execute: async (input) => { seen.push(structuredClone(input)); return 'ok'; } }, bot, { operation: 'write', resource, timeout: 10 });
  const input = { customer: 'c', cents: 100, lines: [1] };
  const reviewer = decideWhenPending(rita, (a) => {
    if (a.resource !== resource) return false;
    input.cents = 100000;
    input.lines.push(2);
    return true;
  });
  assert.equal(await t.execute(input, {}), 'ok');
  const rid = await reviewer;
  assert.deepEqual(seen, [{ customer: 'c', cents: 100, lines: [1] }]);
  assert.deepEqual((await bot.getRequest(rid)).action.params, seen[0]);
  // an input that is not JSON is refused before anything is submitted
  const err = await t.execute({ customer: 'c', when: new Date(0) }, {}).catch((e) => e);
  assert.match(err.message, /Tool refund was not run: .*JcsError: the input of tool refund\.when is a Date/);
  assert.equal(seen.length, 1);
  const pending = (await rita.listRequests({ state: 'pending', limit: 500 })).requests;
  assert.ok(!pending.some((r) => r.action.resource === resource));
});
