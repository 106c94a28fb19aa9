// Claude Agent SDK (TypeScript): secondkey decides Claude Code's tool use.
//
//   const perms = secondkeyPermissions(client);
//   query({ prompt, options: { canUseTool: perms.canUseTool, hooks: perms.hooks } });
//
// Each tool use is submitted as an action (tool://claude-code/<Tool>, the
// input as params) in execute mode and waits for the decision; it is allowed
// with exactly the input that was approved, or denied with a message naming
// the policy and the request. The PreToolUse hook decides every tool use, in
// every permission mode (canUseTool, which Claude Code skips under
// acceptEdits / bypassPermissions and for allowed tools, decides when no hook
// did); the PostToolUse / PostToolUseFailure hooks record how the tool ran.
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
  const decide = (toolName, input, signal) => client.authorize(
    toolAction(toolName, input, { operation: operation(toolName, input), resource: resource(toolName), justification, context }),
    { timeout, signal },
  );
  const canUseTool = async (toolName, input, options = {}) => {
    const decided = options.toolUseID ? pending.get(options.toolUseID) : undefined;
    // Already decided by the PreToolUse hook: the same input, no second request.
    if (decided) return { behavior: 'allow', updatedInput: decided.action.params };
    let auth;
    try {
      auth = await decide(toolName, input, options.signal);
    } catch (e) {
      if (e instanceof SecondkeyError) return { behavior: 'deny', message: toolErrorText(toolName, e) };
      throw e;
    }
    if (options.toolUseID) pending.set(options.toolUseID, auth);
    return { behavior: 'allow', updatedInput: auth.action.params };
  };
  // Claude Code skips canUseTool for tools an allow rule or allowedTools
  // permits and under acceptEdits / bypassPermissions; a PreToolUse hook runs
  // before every tool use and its deny holds in every mode.
  const preToolUse = async (input, toolUseID, options = {}) => {
    const id = toolUseID ?? input.tool_use_id;
    let auth;
    try {
      auth = await decide(input.tool_name, input.tool_input ?? {}, options.signal);
    } catch (e) {
      if (!(e instanceof SecondkeyError)) throw e;
      return { hookSpecificOutput: { hookEventName: 'PreToolUse', permissionDecision: 'deny', permissionDecisionReason: toolErrorText(input.tool_name, e) } };
    }
    if (id) pending.set(id, auth);
    return { hookSpecificOutput: { hookEventName: 'PreToolUse', permissionDecision: 'allow', permissionDecisionReason: `secondkey: ${auth.decision}`, updatedInput: auth.action.params } };
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
    preToolUse,
    postToolUse,
    postToolUseFailure,
    pending,
    hooks: { PreToolUse: [{ hooks: [preToolUse] }], PostToolUse: [{ hooks: [postToolUse] }], PostToolUseFailure: [{ hooks: [postToolUseFailure] }] },
  };
}
