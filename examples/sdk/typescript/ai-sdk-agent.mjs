// Vercel AI SDK: a tool whose execution is approved through secondkey. The
// model is the AI SDK's mock language model, scripted to call the tool; use
// your provider's model instead.
//   SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> node ai-sdk-agent.mjs
import { generateText, tool, stepCountIs } from 'ai';
import { MockLanguageModelV3 } from 'ai/test';
import { z } from 'zod';
import { Client } from 'secondkey';
import { guardTools } from 'secondkey/ai';

const usage = { inputTokens: { total: 1, noCache: 1, cacheRead: 0, cacheWrite: 0 }, outputTokens: { total: 1, text: 1, reasoning: 0 } };
const model = new MockLanguageModelV3({
  doGenerate: [
    { content: [{ type: 'tool-call', toolCallId: 'call_1', toolName: 'deploy', input: JSON.stringify({ service: 'checkout', version: '2.4.1' }) }], finishReason: { unified: 'tool-calls', raw: undefined }, usage, warnings: [] },
    { content: [{ type: 'text', text: 'Done.' }], finishReason: { unified: 'stop', raw: undefined }, usage, warnings: [] },
  ],
});

const tools = guardTools({
  deploy: tool({
    description: 'Deploy a service version.',
    inputSchema: z.object({ service: z.string(), version: z.string() }),
    execute: async ({ service, version }) => `deployed ${service} ${version}`,
  }),
}, new Client(), { deploy: { operation: 'write', resource: 'k8s://prod/deployments' } });

const result = await generateText({ model, tools, prompt: 'Ship checkout 2.4.1', stopWhen: stepCountIs(3) });
for (const step of result.steps) {
  for (const part of step.content) {
    if (part.type === 'tool-result') console.log(`tool: ${part.output}`);
    if (part.type === 'tool-error') console.log(`tool error: ${part.error?.message ?? part.error}`);
  }
}
console.log(`ai: ${result.text}`);
