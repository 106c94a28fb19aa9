// A LangChain.js agent whose email tool is decided by secondkey: the
// middleware is the human-in-the-loop policy. The model is LangChain's fake
// model scripted to call the tool; use your own.
//   SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> node langchain-agent.mjs
import { createAgent, AIMessage } from 'langchain';
import { tool } from '@langchain/core/tools';
import { fakeModel } from '@langchain/core/testing';
import { z } from 'zod';
import { Client } from 'secondkey';
import { secondkeyMiddleware } from 'secondkey/langchain';

const sendEmail = tool(async ({ to }) => `sent to ${to}`, {
  name: 'send_email', description: 'Send an email to a customer.', schema: z.object({ to: z.string(), body: z.string() }),
});
const model = fakeModel()
  .respondWithTools([{ name: 'send_email', args: { to: 'ada@example.com', body: 'Your order shipped.' }, id: 'call_1' }])
  .respond(new AIMessage('Done.'));

const agent = createAgent({
  model,
  tools: [sendEmail],
  middleware: [secondkeyMiddleware({ interruptOn: { send_email: { operation: 'write', resource: 'crm://customers/email' } }, client: new Client() })],
});
const result = await agent.invoke({ messages: [{ role: 'user', content: 'Tell Ada her order shipped.' }] });
for (const m of result.messages) console.log(`${m.type ?? m.getType()}: ${m.content}`);
