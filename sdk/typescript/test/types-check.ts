// Compiled (not run) by types.test.js: the published types fit the
// frameworks' own types, through the package's exports map.
import { Client, Denied, RateLimited, canonicalize, type Action, type Authorization, type RequestView } from 'secondkey';
import { guardTool, secondkeyMiddleware } from 'secondkey/langchain';
import { guardFunctionTool } from 'secondkey/openai-agents';
import { guardTools } from 'secondkey/ai';
import { secondkeyPermissions } from 'secondkey/claude-agent';
import { tool as lcTool } from '@langchain/core/tools';
import { createAgent } from 'langchain';
import { tool as oaTool } from '@openai/agents';
import { tool as aiTool } from 'ai';
import type { Options } from '@anthropic-ai/claude-agent-sdk';
import { z } from 'zod';

const client = new Client({ url: 'http://127.0.0.1:8750', token: 't', timeout: 5 });
const action: Action = { kind: 'tool', operation: 'write', resource: 'crm://x', params: { to: 'a' } };
const canonical: string = canonicalize(action);

async function main(): Promise<void> {
  const auth: Authorization = await client.authorize(action, { mode: 'grant', timeout: 10 });
  await auth.record(true, { rows: 1 });
  const n: number = await client.guard(action, async (a) => a.approvers.length);
  const view: RequestView = await client.getRequest('req_1', { wait: 5 });
  const send = client.guarded({ operation: 'write' }, async (to: string) => to.length);
  const len: number = await send('x');
  try { await client.submit(action); } catch (e) {
    if (e instanceof Denied) console.log(e.policies, e.requestId);
    if (e instanceof RateLimited) console.log(e.retryAfter, e.code);
  }
  const lc = lcTool(async ({ to }: { to: string }) => to, { name: 'send', description: 'd', schema: z.object({ to: z.string() }) });
  createAgent({ model: 'openai:gpt-4o', tools: [guardTool(lc, client, 'write')], middleware: [secondkeyMiddleware({ interruptOn: { send: 'write' }, client })] });
  guardFunctionTool(oaTool({ name: 'n', description: 'd', parameters: z.object({ a: z.string() }), execute: async ({ a }) => a }), client, { operation: 'write' });
  guardTools({ t: aiTool({ description: 'd', inputSchema: z.object({ a: z.string() }), execute: async ({ a }) => a }) }, client, { t: 'write' });
  const perms = secondkeyPermissions(client);
  const options: Options = { canUseTool: perms.canUseTool, hooks: perms.hooks };
  console.log(canonical, n, view.state, len, options);
}
void main;
