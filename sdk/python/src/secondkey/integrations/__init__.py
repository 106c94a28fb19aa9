"""Framework integrations. Each module imports its framework lazily, so
installing ``secondkey`` alone pulls in none of them:

* :mod:`secondkey.integrations.langchain` — LangChain / LangGraph: ``guard_tool``
  and ``SecondkeyMiddleware`` (human-in-the-loop routed to secondkey);
* :mod:`secondkey.integrations.openai_agents` — OpenAI Agents SDK: ``guard_function_tool``;
* :mod:`secondkey.integrations.claude_agent` — Claude Agent SDK: ``SecondkeyPermissions``
  (a ``can_use_tool`` callback and result-recording hooks).

MCP clients need no integration: point them at the MCP gateway.
"""

from ._common import ToolPolicy, tool_action, tool_error_text

__all__ = ["ToolPolicy", "tool_action", "tool_error_text"]
