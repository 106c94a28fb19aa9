import type { Json } from '../index.js';
/** How one tool's calls are described to the gateway (the call's arguments become `params`). */
export interface ToolPolicyObject {
  /** The verb class policy matches (`read`, `write`, `delete`, …); default `call`. */
  operation?: string;
  /** Default `tool`. */
  kind?: string;
  /** Default `tool://<tool name>`. */
  resource?: string;
  justification?: string;
  context?: Record<string, Json>;
  mode?: 'execute' | 'grant';
  /** Seconds to wait for a decision (default 300). */
  timeout?: number;
}
export type ToolPolicy = string | true | ToolPolicyObject;
