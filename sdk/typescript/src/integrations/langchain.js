// LangChain.js / LangGraph.js: put secondkey in front of tools.
//
// guardTool(tool, client, policy) wraps any LangChain tool: each call becomes
// an action, runs only after an allow or a reviewer's approval, and its result
// (or exception) is recorded; a refusal reaches the model as the tool's error
// (ToolNode turns it into an error ToolMessage) naming the policy and request.
//
// secondkeyMiddleware({interruptOn, client}) is a human-in-the-loop policy for
// createAgent: like humanInTheLoopMiddleware's interruptOn it names the tools
// that need a decision, but secondkey makes it (policy, then reviewers),
// recorded in its signed log, instead of a graph interrupt.
import { tool as makeTool } from '@langchain/core/tools';
import { ToolMessage } from '@langchain/core/messages';
import { createMiddleware } from 'langchain';
import { SecondkeyError } from '../errors.js';
import { asPolicy, runAuthorized, toolAction, toolErrorText } from './common.js';

export function guardTool(tool, client, policy = 'call') {
  const pol = asPolicy(policy);
  return makeTool(async (input) => {
    let auth;
    try {
      auth = await client.authorize(toolAction(tool.name, input, pol), { mode: pol.mode, timeout: pol.timeout });
    } catch (e) {
      if (e instanceof SecondkeyError) throw new Error(toolErrorText(tool.name, e));
      throw e;
    }
    return runAuthorized(auth, () => tool.invoke(input));
  }, { name: tool.name, description: tool.description, schema: tool.schema });
}

export function secondkeyMiddleware({ interruptOn, client, name = 'SecondkeyMiddleware' }) {
  const policies = Object.fromEntries(Object.entries(interruptOn).map(([k, v]) => [k, asPolicy(v)]));
  return createMiddleware({
    name,
    wrapToolCall: async (request, handler) => {
      const call = request.toolCall;
      const pol = policies[call.name];
      if (!pol) return handler(request);
      let auth;
      try {
        auth = await client.authorize(toolAction(call.name, call.args, pol), { mode: pol.mode, timeout: pol.timeout });
      } catch (e) {
        if (!(e instanceof SecondkeyError)) throw e;
        return new ToolMessage({ content: toolErrorText(call.name, e), tool_call_id: call.id, name: call.name, status: 'error' });
      }
      let out;
      try {
        out = await handler(request);
      } catch (e) {
        await auth.record(false, { status: 'failed', error: String(e?.message ?? e).slice(0, 2000) }).catch(() => {});
        throw e;
      }
      const failed = out instanceof ToolMessage && out.status === 'error';
      const text = out instanceof ToolMessage ? String(out.content).slice(0, 2000) : 'command';
      await auth.record(!failed, failed ? { status: 'failed', error: text } : { status: 'succeeded', result: text }).catch(() => {});
      return out;
    },
  });
}
