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
import { StructuredTool } from '@langchain/core/tools';
import { ToolMessage } from '@langchain/core/messages';
import { createMiddleware } from 'langchain';
import { SecondkeyError } from '../errors.js';
import { canonicalize, JcsError, jsonCopy } from '../jcs.js';
import { asPolicy, runAuthorized, toolAction, toolErrorText } from './common.js';

/**
 * The action's params are the tool call's arguments as the model sent them;
 * the wrapped tool is invoked with a copy of exactly those and validates
 * them once, itself, so a schema that transforms its input cannot make what
 * runs differ from what was decided.
 */
export function guardTool(tool, client, policy = 'call') {
  return new GuardedTool(tool, client, asPolicy(policy));
}

class GuardedTool extends StructuredTool {
  static lc_name() { return 'GuardedTool'; }

  constructor(inner, client, policy) {
    super({ name: inner.name, description: inner.description, schema: inner.schema, returnDirect: inner.returnDirect });
    this.name = inner.name;
    this.description = inner.description;
    this.schema = inner.schema;
    this.inner = inner;
    this.client = client;
    this.policy = policy;
  }

  async invoke(input, config) {
    const isCall = !!input && typeof input === 'object' && input.type === 'tool_call';
    const raw = isCall ? input.args : input;
    let action, auth;
    try {
      action = toolAction(this.name, raw, this.policy);
      auth = await this.client.authorize(action, { mode: this.policy.mode, timeout: this.policy.timeout, signal: config?.signal });
    } catch (e) {
      if (e instanceof SecondkeyError) throw new Error(toolErrorText(this.name, e));
      throw e;
    }
    const isObject = !!raw && typeof raw === 'object' && !Array.isArray(raw);
    const args = isObject ? jsonCopy(action.params) : raw;
    return runAuthorized(auth, () => this.inner.invoke(isCall ? { ...input, args } : args, config));
  }

  _call() {
    // call() would validate here, apart from the decision: only invoke is offered.
    throw new Error(`call the guarded tool ${this.name} with invoke`);
  }
}

/**
 * The request secondkeyMiddleware passes on: the decided arguments, and a
 * stand-in for the tool that runs the inner tool once, only with those. The
 * handler is the rest of the stack, so a middleware listed after this one
 * (a retry, a rewrite) would otherwise run the tool again on one decision,
 * or run a call nobody decided; those are refused as tool errors.
 */
function decided(request, action) {
  const { toolCall, tool } = request;
  const args = jsonCopy(action.params);
  if (!tool) return { ...request, toolCall: { ...toolCall, args } };
  const want = canonicalize(action.params);
  let ran = false;
  const refuse = (input, why) => new ToolMessage({ content: `Tool ${tool.name} was not run: ${why}`, tool_call_id: input?.id ?? toolCall.id, name: tool.name, status: 'error' });
  const standIn = Object.create(tool, {
    invoke: {
      value: async (input, config) => {
        const raw = input && typeof input === 'object' && input.type === 'tool_call' ? input.args : input;
        const got = raw && typeof raw === 'object' && !Array.isArray(raw) ? raw : { input: raw };
        if (ran) return refuse(input, 'it already ran once under this decision; another run (a retry by a middleware listed after secondkeyMiddleware) needs a decision of its own: list secondkeyMiddleware last');
        let same;
        try { same = canonicalize(got) === want; } catch (e) { if (!(e instanceof JcsError)) throw e; same = false; }
        if (!same) return refuse(input, 'its arguments were changed after secondkey decided the call (by a middleware listed after secondkeyMiddleware); the decided call is the one that may run');
        ran = true;
        const runArgs = got === raw ? jsonCopy(action.params) : raw;
        return tool.invoke(input?.type === 'tool_call' ? { ...input, args: runArgs } : runArgs, config);
      },
    },
  });
  return { ...request, toolCall: { ...toolCall, args }, tool: standIn };
}

export function secondkeyMiddleware({ interruptOn, client, name = 'SecondkeyMiddleware' }) {
  // `false` runs the tool as it is, as in humanInTheLoopMiddleware's interruptOn.
  const policies = Object.fromEntries(Object.entries(interruptOn).filter(([, v]) => v !== false).map(([k, v]) => [k, asPolicy(v)]));
  return createMiddleware({
    name,
    wrapToolCall: async (request, handler) => {
      const call = request.toolCall;
      const pol = policies[call.name];
      if (!pol) return handler(request);
      let action, auth;
      try {
        action = toolAction(call.name, call.args, pol);
        auth = await client.authorize(action, { mode: pol.mode, timeout: pol.timeout, signal: request.runtime?.signal ?? request.config?.signal });
      } catch (e) {
        if (!(e instanceof SecondkeyError)) throw e;
        return new ToolMessage({ content: toolErrorText(call.name, e), tool_call_id: call.id, name: call.name, status: 'error' });
      }
      let out;
      try {
        out = await handler(decided(request, action));
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
