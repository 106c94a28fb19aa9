"""Claude Agent SDK: secondkey decides each tool use of Claude Code.

Wire it in with ``ClaudeAgentOptions(can_use_tool=perms.can_use_tool,
hooks=perms.hooks())`` and run ``query(...)`` as usual (that needs the Claude
Code CLI and an Anthropic API key). Without them, this example calls the
callback as the CLI would, for one Write.

    SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> python claude_agent_permissions.py
"""

import asyncio

from claude_agent_sdk import ClaudeAgentOptions, ToolPermissionContext

import secondkey
from secondkey.integrations.claude_agent import SecondkeyPermissions


async def main() -> None:
    async with secondkey.AsyncClient() as client:
        perms = SecondkeyPermissions(client, resource=lambda tool: f"repo://app/{tool}")
        options = ClaudeAgentOptions(can_use_tool=perms.can_use_tool, hooks=perms.hooks())
        # What the CLI does when Claude wants to write a file:
        tool_input = {"file_path": "config/prod.yaml", "content": "debug: false\n"}
        decision = await options.can_use_tool("Write", tool_input, ToolPermissionContext(tool_use_id="toolu_1"))
        print(f"decision: {decision.behavior}")
        if decision.behavior == "allow":
            # ...the CLI runs the tool, then its PostToolUse hook records the result:
            await perms.post_tool_use({"tool_name": "Write", "tool_input": tool_input, "tool_response": "written",
                                       "tool_use_id": "toolu_1"}, "toolu_1", None)
            print("recorded")
        else:
            print(f"message: {decision.message}")


if __name__ == "__main__":
    asyncio.run(main())
