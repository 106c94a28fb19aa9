// Claude Agent SDK: secondkey decides each tool use of Claude Code.
//   query({ prompt, options: { canUseTool: perms.canUseTool, hooks: perms.hooks } })
// runs it for real (that needs the Claude Code CLI and an Anthropic API key).
// Without them, this example calls the callback as the CLI would, for one Write.
//   SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> node claude-agent-permissions.mjs
import { Client } from 'secondkey';
import { secondkeyPermissions } from 'secondkey/claude-agent';

const perms = secondkeyPermissions(new Client(), { resource: (tool) => `repo://app/${tool}` });
const input = { file_path: 'config/prod.yaml', content: 'debug: false\n' };
const decision = await perms.canUseTool('Write', input, { signal: new AbortController().signal, toolUseID: 'toolu_1' });
console.log(`decision: ${decision.behavior}`);
if (decision.behavior === 'allow') {
  // ...the CLI runs the tool, then its PostToolUse hook records the result:
  await perms.postToolUse({ hook_event_name: 'PostToolUse', tool_name: 'Write', tool_input: input, tool_response: 'written', tool_use_id: 'toolu_1' }, 'toolu_1');
  console.log('recorded');
} else {
  console.log(`message: ${decision.message}`);
}
