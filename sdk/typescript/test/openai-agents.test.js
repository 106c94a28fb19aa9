// OpenAI Agents SDK (JS) against the real gateway, with a test double of the
// SDK's Model interface (no network): the model calls a tool, the gateway
// holds it, a reviewer approves through the API, the tool runs once, the run
// continues; on deny the model receives a tool output naming the policy and
// the request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, Runner, tool, Usage, setTracingDisabled } from '@openai/agents';
import { z } from 'zod';
import { guardFunctionTool } from '../src/integrations/openai-agents.js';
import { startGateway, unique, decideWhenPending } from './helpers.js';

setTracingDisabled(true);
let gw, bot, rita;
before(async () => { gw = await startGateway(); bot = gw.client(); rita = gw.client('user:rita'); });
after(() => gw.stop());

class ScriptedModel {
  constructor(name, args) { this.name = name; this.args = args; this.inputs = []; }
  async getResponse(request) {
    this.inputs.push(request.input);
    const output = this.inputs.length === 1
      ? [{ type: 'function_call', callId: 'call_1', name: this.name, arguments: JSON.stringify(this.args), status: 'completed' }]
      : [{ type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: 'All done.' }] }];
    return { usage: new Usage(), output };
  }
  // eslint-disable-next-line require-yield
  async *getStreamedResponse() { throw new Error('this test runs without streaming'); }
  toolOutputSeen() {
    const item = this.inputs.at(-1).find((i) => i.type === 'function_call_result');
    return typeof item.output === 'string' ? item.output : item.output.text;
  }
}

const runner = new Runner({ tracingDisabled: true });

for (const decision of ['approve', 'deny']) {
  test(`tool approval backed by secondkey: ${decision}`, async () => {
    const sent = [];
    const sendEmail = tool({
      name: 'send_email', description: 'Send an email.', parameters: z.object({ to: z.string(), body: z.string() }),
      execute: async ({ to }) => { sent.push(to); return `sent to ${to}`; },
    });
    const resource = unique('oajs');
    const model = new ScriptedModel('send_email', { to: 'a@example.com', body: 'hi' });
    const agent = new Agent({ name: 'mailer', instructions: 'Send emails.', model, tools: [guardFunctionTool(sendEmail, bot, { operation: 'write', resource })] });
    const reviewer = decideWhenPending(rita, resource, decision, 'checked');
    const result = await runner.run(agent, 'email a@example.com');
    const rid = await reviewer;
    assert.equal(result.finalOutput, 'All done.');
    const seen = model.toolOutputSeen();
    if (decision === 'approve') {
      assert.deepEqual(sent, ['a@example.com']);
      assert.equal(seen, 'sent to a@example.com');
      const view = await bot.getRequest(rid);
      assert.equal(view.state, 'executed');
      assert.deepEqual(view.action.params, { to: 'a@example.com', body: 'hi' });
    } else {
      assert.deepEqual(sent, []);
      assert.ok(seen.includes(rid) && seen.includes('sdk:writes-need-a-reviewer'), seen);
    }
  });
}

test('the tool runs with the canonical JSON of the decided arguments, not the model\'s text; text that is not JSON is refused', async () => {
  const got = [];
  const inner = { type: 'function', name: 'send_email', invoke: async (ctx, input) => { got.push(input); return 'sent'; } };
  const resource = unique('oajs-decided');
  const guarded = guardFunctionTool(inner, bot, { operation: 'write', resource, timeout: 10 });
  // A repeated key: JSON.parse keeps the last, a parser that keeps the first would run another address.
  const text = '{ "to": "a@example.com", "body": "hi",  "to": "b@example.com" }';
  const reviewer = decideWhenPending(rita, resource);
  assert.equal(await guarded.invoke({}, text, {}), 'sent');
  const rid = await reviewer;
  const view = await bot.getRequest(rid);
  assert.deepEqual(view.action.params, { to: 'b@example.com', body: 'hi' });
  assert.deepEqual(got, ['{"body":"hi","to":"b@example.com"}']);
  assert.equal(view.state, 'executed');

  const out = await guarded.invoke({}, '{"to": "a@example.com", body: hi}', {});
  assert.match(out, /Tool send_email was not run: .*JcsError: the input of tool send_email is not JSON/);
  assert.equal(got.length, 1);
  const pending = (await rita.listRequests({ state: 'pending', limit: 500 })).requests;
  assert.ok(!pending.some((r) => r.action.resource === resource));
});
