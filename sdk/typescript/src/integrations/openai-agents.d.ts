import type { FunctionTool } from '@openai/agents';
import type { Client } from '../index.js';
import type { ToolPolicy } from './common.js';
export type { ToolPolicy } from './common.js';
/** A copy of `tool` whose calls are held at secondkey and run only when authorized; the execution is recorded. */
export declare function guardFunctionTool<T extends FunctionTool<any, any, any>>(tool: T, client: Client, policy?: ToolPolicy): T;
