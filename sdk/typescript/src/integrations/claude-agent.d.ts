import type { CanUseTool, HookCallback, HookCallbackMatcher, HookEvent } from '@anthropic-ai/claude-agent-sdk';
import type { Authorization, Client, Json } from '../index.js';
/** `read` for Claude Code's read-only tools, `exec` for Bash, `write` otherwise. */
export declare function defaultOperation(toolName: string, input?: Record<string, unknown>): string;
export interface SecondkeyPermissions {
  /** For `options.canUseTool`. */
  canUseTool: CanUseTool;
  /** Decides every tool use, in every permission mode (part of `hooks`). */
  preToolUse: HookCallback;
  postToolUse: HookCallback;
  postToolUseFailure: HookCallback;
  /** For `options.hooks`: decide each tool use (PreToolUse), record its result. */
  hooks: Partial<Record<HookEvent, HookCallbackMatcher[]>>;
  /** Authorizations waiting for their tool's result, by tool use id. */
  pending: Map<string, Authorization>;
}
export declare function secondkeyPermissions(client: Client, options?: {
  operation?: (toolName: string, input: Record<string, unknown>) => string;
  resource?: (toolName: string) => string;
  justification?: string;
  context?: Record<string, Json>;
  timeout?: number;
}): SecondkeyPermissions;
