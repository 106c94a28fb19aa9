"""Claude Agent SDK: secondkey decides Claude Code's tool use.

:class:`SecondkeyPermissions` decides each tool use: it is submitted as an
action (``tool://claude-code/<Tool>``, the tool input as ``params``) in
execute mode and held at the gateway until policy or reviewers decide; the
tool use is then allowed with exactly the input that was approved, or
denied with a message naming the policy and the request. Its ``hooks()``
decide in a PreToolUse hook — which Claude Code runs before every tool use,
in every permission mode, unlike ``can_use_tool``, which it skips for tools
an allow rule or ``allowed_tools`` permits and under ``acceptEdits`` /
``bypassPermissions`` — and record how the tool ran (PostToolUse /
PostToolUseFailure). ``can_use_tool`` decides too when no hook did.

    perms = SecondkeyPermissions(AsyncClient())
    options = ClaudeAgentOptions(can_use_tool=perms.can_use_tool, hooks=perms.hooks())
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from claude_agent_sdk import HookContext, HookInput, HookJSONOutput, HookMatcher, PermissionResultAllow, PermissionResultDeny, ToolPermissionContext

from ..client import AsyncClient, Client
from ..errors import SecondkeyError
from ..guard import Authorization, result_summary
from ._common import ToolPolicy, async_for, checked_clients, tool_action, tool_error_text

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
        client: "AsyncClient | Client",
        *,
        operation: Callable[[str, dict[str, Any]], str] = default_operation,
        resource: Callable[[str], str] = lambda tool: f"tool://claude-code/{tool}",
        justification: Optional[str] = None,
        context: Optional[dict[str, Any]] = None,
        timeout: float = 300.0,
    ):
        # A blocking Client works too: an AsyncClient to the same gateway is
        # made for the event loop the hooks run on.
        self._clients = checked_clients("SecondkeyPermissions", client, None)
        self._operation, self._resource = operation, resource
        self._justification, self._context, self._timeout = justification, context or {}, timeout
        #: Authorizations waiting for their tool's result, by tool_use_id.
        self.pending: dict[str, Authorization] = {}

    @property
    def client(self) -> AsyncClient:
        """The AsyncClient the hooks use."""
        return async_for(*self._clients)

    async def _decide(self, tool_name: str, tool_input: dict[str, Any]) -> Authorization:
        pol = ToolPolicy(operation=self._operation(tool_name, tool_input), resource=self._resource(tool_name),
                         justification=self._justification, context=self._context, timeout=self._timeout)
        return await self.client.authorize(tool_action(tool_name, tool_input, pol), timeout=self._timeout)

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        decided = self.pending.get(context.tool_use_id or "")
        if decided is not None:
            # Already decided by the PreToolUse hook: the same input, no second request.
            return PermissionResultAllow(updated_input=decided.action["params"])
        try:
            auth = await self._decide(tool_name, tool_input)
        except SecondkeyError as e:
            return PermissionResultDeny(message=tool_error_text(tool_name, e))
        if context.tool_use_id:
            self.pending[context.tool_use_id] = auth
        # Exactly the input that was digested and approved.
        return PermissionResultAllow(updated_input=auth.action["params"])

    async def pre_tool_use(self, input: HookInput, tool_use_id: Optional[str], context: HookContext) -> HookJSONOutput:
        """Decides every tool use, whatever the permission mode.

        Claude Code skips ``can_use_tool`` for tools an allow rule or
        ``allowed_tools`` permits and under ``acceptEdits`` /
        ``bypassPermissions``; a PreToolUse hook runs before each tool use
        and its ``deny`` holds in every mode. An approval answers ``allow``
        with exactly the approved input.
        """
        data: dict[str, Any] = dict(input)
        tool_name = str(data.get("tool_name", ""))
        tid = tool_use_id or data.get("tool_use_id")
        try:
            auth = await self._decide(tool_name, data.get("tool_input") or {})
        except SecondkeyError as e:
            return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                           "permissionDecisionReason": tool_error_text(tool_name, e)}}
        if tid:
            self.pending[tid] = auth
        return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow",
                                       "permissionDecisionReason": f"secondkey: {auth.decision}",
                                       "updatedInput": auth.action["params"]}}

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
        """``hooks=`` for ClaudeAgentOptions: decide each tool use (PreToolUse), record its result."""
        return {
            "PreToolUse": [HookMatcher(hooks=[self.pre_tool_use])],
            "PostToolUse": [HookMatcher(hooks=[self.post_tool_use])],
            "PostToolUseFailure": [HookMatcher(hooks=[self.post_tool_use_failure])],
        }
