// OpenAI Agents SDK (JS): approval backed by secondkey, the execution recorded.
//
// guardFunctionTool(tool, client, policy) wraps a FunctionTool (from `tool()`):
// each call is held at secondkey — policy, then reviewers — instead of the
// SDK's in-process needsApproval pause; it runs only after an allow or an
// approval, its output (or failure) is recorded, and a refusal is returned to
// the model as the tool's output naming the policy and the request.
// The tool runs with the canonical JSON (RFC 8785) of the arguments that were
// submitted and decided, not with the model's own text; arguments that are
// not JSON are refused (JcsError) before anything is submitted.
import { SecondkeyError } from '../errors.js';
import { canonicalize, JcsError } from '../jcs.js';
import { asPolicy, decidedInput, runAuthorized, toolAction, toolErrorText } from './common.js';

export function guardFunctionTool(tool, client, policy = 'call') {
  const pol = asPolicy(policy);
  const inner = tool.invoke.bind(tool);
  return {
    ...tool,
    invoke: async (runContext, input, details) => {
      let args, action, auth;
      try {
        args = parseArguments(tool.name, input);
        action = toolAction(tool.name, args, pol);
        auth = await client.authorize(action, { mode: pol.mode, timeout: pol.timeout, signal: details?.signal });
      } catch (e) {
        if (e instanceof SecondkeyError) return toolErrorText(tool.name, e);
        throw e;
      }
      return runAuthorized(auth, () => inner(runContext, canonicalize(decidedInput(args, action)), details));
    },
  };
}

/** The model's arguments as JSON values; text that is not JSON is refused. */
function parseArguments(name, input) {
  if (!input) return {};
  try {
    return JSON.parse(input);
  } catch (e) {
    throw new JcsError(`the input of tool ${name} is not JSON (${e.message}); nothing was submitted`);
  }
}
