// An OpenAI Agents SDK agent whose refund tool is approved through secondkey,
// its execution recorded. The model is a scripted stand-in for the SDK's Model
// interface (no API key needed); pass your own model instead.
//   SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> node openai-agents-agent.mjs
import { Agent, Runner, tool, Usage } from '@openai/agents';
import { z } from 'zod';
import { Client } from 'secondkey';
import { guardFunctionTool } from 'secondkey/openai-agents';

let turn = 0;
const model = {
  async getResponse() {
    turn += 1;
    const output = turn === 1
      ? [{ type: 'function_call', callId: 'call_1', name: 'refund', arguments: JSON.stringify({ customer: 'cus_42', amountCents: 1500 }), status: 'completed' }]
      : [{ type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: 'Done.' }] }];
    return { usage: new Usage(), output };
  },
  async *getStreamedResponse() { throw new Error('not streaming'); },
};

const refund = tool({
  name: 'refund', description: 'Refund a customer.', parameters: z.object({ customer: z.string(), amountCents: z.number().int() }),
  execute: async ({ customer, amountCents }) => `refunded ${amountCents} cents to ${customer}`,
});
const agent = new Agent({ name: 'support', instructions: 'Help customers.', model,
  tools: [guardFunctionTool(refund, new Client(), { operation: 'write', resource: 'billing://refunds' })] });
const result = await new Runner({ tracingDisabled: true }).run(agent, 'Refund cus_42 for the broken mug.');
for (const item of result.newItems) if (item.type === 'tool_call_output_item') console.log(`tool: ${item.output}`);
console.log(`ai: ${result.finalOutput}`);
