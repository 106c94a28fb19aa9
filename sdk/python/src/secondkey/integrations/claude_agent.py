"""Claude Agent SDK: secondkey decides Claude Code's tool use.

:class:`SecondkeyPermissions` gives ``ClaudeAgentOptions`` a ``can_use_tool``
callback: each tool use is submitted as an action (``tool://claude-code/<Tool>``,
the tool input as ``params``) in execute mode and held at the gateway until
policy or reviewers decide; the callback then allows it with exactly the
input that was approved, or denies it with a message naming the policy and
the request. Its ``hooks()`` (PostToolUse / PostToolUseFailure) record how
the tool ran as the execution's result.

    perms = SecondkeyPermissions(AsyncClient())
    options = ClaudeAgentOptions(can_use_tool=perms.can_use_tool, hooks=perms.hooks())
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from claude_agent_sdk import HookContext, HookInput, HookJSONOutput, HookMatcher, PermissionResultAllow, PermissionResultDeny, ToolPermissionContext

from ..client import AsyncClient
from ..errors import SecondkeyError
from ..guard import Authorization, result_summary
from ._common import ToolPolicy, tool_action, tool_error_text

__all__ = ["SecondkeyPermissions", "default_operation"]

READ_ONLY = {"Read", "Glob", "Grep", "LS", "WebFetch", "WebSearch", "NotebookRead", "TodoWrite"}


def default_operation(tool_name: str, tool_input: dict[str, Any]) -> str:
    """``read`` for Claude Code's read-only tools, ``exec`` for Bash, ``write`` otherwise."""
    if tool_name in READ_ONLY:
        return "read"
    if tool_name == "Bash":
        return "exec"
    return "write"


class SecondkeyPermissions:
    def __init__(
        self,
        client: AsyncClient,
        *,
        operation: Callable[[str, dict[str, Any]], str] = default_operation,
        resource: Callable[[str], str] = lambda tool: f"tool://claude-code/{tool}",
        justification: Optional[str] = None,
        context: Optional[dict[str, Any]] = None,
        timeout: float = 300.0,
    ):
        self.client = client
        self._operation, self._resource = operation, resource
        self._justification, self._context, self._timeout = justification, context or {}, timeout
        #: Authorizations waiting for their tool's result, by tool_use_id.
        self.pending: dict[str, Authorization] = {}

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        pol = ToolPolicy(operation=self._operation(tool_name, tool_input), resource=self._resource(tool_name),
                         justification=self._justification, context=self._context, timeout=self._timeout)
        try:
            action = tool_action(tool_name, tool_input, pol)
            auth = await self.client.authorize(action, timeout=self._timeout)
        except SecondkeyError as e:
            return PermissionResultDeny(message=tool_error_text(tool_name, e))
        if context.tool_use_id:
            self.pending[context.tool_use_id] = auth
        # Exactly the input that was digested and approved.
        return PermissionResultAllow(updated_input=action["params"])

    async def _record(self, tool_use_id: Optional[str], ok: bool, summary: Any) -> None:
        auth = self.pending.pop(tool_use_id or "", None)
        if auth is None:
            return
        try:
            await self.client.record(auth, ok, summary)
        except SecondkeyError:
            pass  # the tool ran; nothing to undo

    async def post_tool_use(self, input: HookInput, tool_use_id: Optional[str], context: HookContext) -> HookJSONOutput:
        data: dict[str, Any] = dict(input)
        await self._record(tool_use_id or data.get("tool_use_id"), True, result_summary(data.get("tool_response")))
        return {}

    async def post_tool_use_failure(self, input: HookInput, tool_use_id: Optional[str], context: HookContext) -> HookJSONOutput:
        data: dict[str, Any] = dict(input)
        err = data.get("error", "the tool failed")
        await self._record(tool_use_id or data.get("tool_use_id"), False, {"status": "failed", "error": str(err)[:2000]})
        return {}

    def hooks(self) -> dict[str, list[HookMatcher]]:
        """``hooks=`` for ClaudeAgentOptions: record each guarded tool's result."""
        return {
            "PostToolUse": [HookMatcher(hooks=[self.post_tool_use])],
            "PostToolUseFailure": [HookMatcher(hooks=[self.post_tool_use_failure])],
        }
