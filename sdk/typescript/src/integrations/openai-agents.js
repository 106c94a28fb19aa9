// OpenAI Agents SDK (JS): approval backed by secondkey, the execution recorded.
//
// guardFunctionTool(tool, client, policy) wraps a FunctionTool (from `tool()`):
// each call is held at secondkey — policy, then reviewers — instead of the
// SDK's in-process needsApproval pause; it runs only after an allow or an
// approval, its output (or failure) is recorded, and a refusal is returned to
// the model as the tool's output naming the policy and the request.
import { SecondkeyError } from '../errors.js';
import { asPolicy, runAuthorized, toolAction, toolErrorText } from './common.js';

export function guardFunctionTool(tool, client, policy = 'call') {
  const pol = asPolicy(policy);
  const inner = tool.invoke.bind(tool);
  return {
    ...tool,
    invoke: async (runContext, input, details) => {
      let args;
      try { args = input ? JSON.parse(input) : {}; } catch { args = { input }; }
      let auth;
      try {
        auth = await client.authorize(toolAction(tool.name, args, pol), { mode: pol.mode, timeout: pol.timeout, signal: details?.signal });
      } catch (e) {
        if (e instanceof SecondkeyError) return toolErrorText(tool.name, e);
        throw e;
      }
      return runAuthorized(auth, () => inner(runContext, input, details));
    },
  };
}
