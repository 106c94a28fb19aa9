// Vercel AI SDK: tool approval backed by secondkey.
//
// guardTools({name: tool, …}, client, {name: policy, …}) returns the same tool
// set with each named tool's execute held at secondkey until policy or a
// reviewer decides; it runs once, its result (or exception) is recorded, and a
// refusal becomes the tool's error (a tool-error the model reads on its next
// step) naming the policy and the request. Tools not named are unchanged.
// Without the map every tool that has an execute is guarded (as tool.call);
// tools without one (provider-defined, client-side) run nothing here and are
// returned unchanged.
// The tool's execute gets a copy of exactly the input that was submitted and
// decided, not the AI SDK's object (which may change while a reviewer
// decides); an input that is not JSON is refused (JcsError) before anything
// is submitted.
import { SecondkeyError } from '../errors.js';
import { asPolicy, decidedInput, runAuthorized, toolAction, toolErrorText } from './common.js';

export function guardTool(name, tool, client, policy = 'call') {
  if (typeof tool.execute !== 'function') throw new TypeError(`tool ${name} has no execute to guard`);
  const pol = asPolicy(policy);
  const inner = tool.execute;
  return {
    ...tool,
    execute: async (input, options) => {
      let action, auth;
      try {
        action = toolAction(name, input, pol);
        auth = await client.authorize(action, { mode: pol.mode, timeout: pol.timeout, signal: options?.abortSignal });
      } catch (e) {
        if (e instanceof SecondkeyError) throw new Error(toolErrorText(name, e));
        throw e;
      }
      return runAuthorized(auth, () => inner(decidedInput(input, action), options));
    },
  };
}

// Without `policies` every tool is guarded (as `tool.call`); with them, only
// the tools they name: the others are returned unchanged.
export function guardTools(tools, client, policies) {
  if (policies === undefined) {
    return Object.fromEntries(Object.entries(tools).map(([name, t]) => [name, typeof t.execute === 'function' ? guardTool(name, t, client, true) : t]));
  }
  if (policies === null || typeof policies !== 'object') throw new TypeError('guardTools: policies must be an object naming the tools to guard (or left out to guard them all)');
  return Object.fromEntries(Object.entries(tools).map(([name, t]) => [name, Object.hasOwn(policies, name) ? guardTool(name, t, client, policies[name]) : t]));
}
