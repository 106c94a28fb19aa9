import type { StructuredToolInterface } from '@langchain/core/tools';
import type { AgentMiddleware } from 'langchain';
import type { Client } from '../index.js';
import type { ToolPolicy } from './common.js';
export type { ToolPolicy } from './common.js';
/** A copy of `tool` that runs only when secondkey authorizes the call. */
export declare function guardTool<T extends StructuredToolInterface>(tool: T, client: Client, policy?: ToolPolicy): StructuredToolInterface;
/** Human-in-the-loop for createAgent, decided by secondkey: `interruptOn` names the tools that need a decision; a tool mapped to `false` (as in humanInTheLoopMiddleware) runs as it is. */
export declare function secondkeyMiddleware(options: { interruptOn: Record<string, ToolPolicy | false>; client: Client; name?: string }): AgentMiddleware;
