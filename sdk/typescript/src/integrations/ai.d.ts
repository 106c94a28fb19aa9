import type { Tool, ToolSet } from 'ai';
import type { Client } from '../index.js';
import type { ToolPolicy } from './common.js';
export type { ToolPolicy } from './common.js';
/** `tool` with its execute held at secondkey until policy or a reviewer decides. */
export declare function guardTool<T extends Tool>(name: string, tool: T, client: Client, policy?: ToolPolicy): T;
/** The same tool set: without `policies` every tool guarded (as `tool.call`); with them, each tool they name guarded and the others unchanged. */
export declare function guardTools<T extends ToolSet>(tools: T, client: Client, policies?: Partial<Record<keyof T, ToolPolicy>>): T;
