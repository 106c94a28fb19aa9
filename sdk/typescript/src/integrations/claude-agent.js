// Claude Agent SDK (TypeScript): secondkey decides Claude Code's tool use.
//
//   const perms = secondkeyPermissions(client);
//   query({ prompt, options: { canUseTool: perms.canUseTool, hooks: perms.hooks } });
//
// canUseTool submits each tool use as an action (tool://claude-code/<Tool>,
// the input as params) in execute mode and waits for the decision; it allows
// with exactly the input that was approved, or denies with a message naming
// the policy and the request. The PostToolUse / PostToolUseFailure hooks
// record how the tool ran.
import { SecondkeyError } from '../errors.js';
import { resultSummary } from '../client.js';
import { toolAction, toolErrorText } from './common.js';

const READ_ONLY = new Set(['Read', 'Glob', 'Grep', 'LS', 'WebFetch', 'WebSearch', 'NotebookRead', 'TodoWrite']);

/** `read` for Claude Code's read-only tools, `exec` for Bash, `write` otherwise. */
export function defaultOperation(toolName) {
  if (READ_ONLY.has(toolName)) return 'read';
  if (toolName === 'Bash') return 'exec';
  return 'write';
}

export function secondkeyPermissions(client, { operation = defaultOperation, resource = (t) => `tool://claude-code/${t}`, justification, context, timeout = 300 } = {}) {
  const pending = new Map();
  const record = async (id, ok, summary) => {
    const auth = pending.get(id);
    if (!auth) return;
    pending.delete(id);
    await auth.record(ok, summary).catch(() => {});
  };
  const canUseTool = async (toolName, input, options = {}) => {
    let action, auth;
    try {
      action = toolAction(toolName, input, { operation: operation(toolName, input), resource: resource(toolName), justification, context });
      auth = await client.authorize(action, { timeout, signal: options.signal });
    } catch (e) {
      if (e instanceof SecondkeyError) return { behavior: 'deny', message: toolErrorText(toolName, e) };
      throw e;
    }
    if (options.toolUseID) pending.set(options.toolUseID, auth);
    return { behavior: 'allow', updatedInput: action.params };
  };
  const postToolUse = async (input, toolUseID) => {
    await record(toolUseID ?? input.tool_use_id, true, resultSummary(input.tool_response));
    return {};
  };
  const postToolUseFailure = async (input, toolUseID) => {
    await record(toolUseID ?? input.tool_use_id, false, { status: 'failed', error: String(input.error ?? 'the tool failed').slice(0, 2000) });
    return {};
  };
  return {
    canUseTool,
    postToolUse,
    postToolUseFailure,
    pending,
    hooks: { PostToolUse: [{ hooks: [postToolUse] }], PostToolUseFailure: [{ hooks: [postToolUseFailure] }] },
  };
}
