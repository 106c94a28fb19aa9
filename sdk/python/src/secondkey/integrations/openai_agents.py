"""OpenAI Agents SDK: approval backed by secondkey, the execution recorded.

:func:`guard_function_tool` wraps a ``FunctionTool`` (from ``@function_tool``):
each call is submitted to secondkey and held there — policy, then reviewers —
instead of the SDK's in-process ``needs_approval`` pause; the tool runs only
after an allow or an approval, and its output (or failure) is recorded as the
execution's result. A refusal is returned to the model as the tool's output
(naming the policy and the request), so the run continues.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agents import FunctionTool

from ..client import AsyncClient
from ..errors import SecondkeyError
from ._common import PolicyLike, ToolPolicy, as_policy, tool_action, tool_error_text

__all__ = ["guard_function_tool", "ToolPolicy"]


def guard_function_tool(tool: FunctionTool, client: AsyncClient, *, policy: PolicyLike = "call") -> FunctionTool:
    """A copy of ``tool`` that runs only when secondkey authorizes the call."""
    pol = as_policy(policy)
    inner = tool.on_invoke_tool

    async def on_invoke_tool(ctx: Any, input_json: str) -> Any:
        try:
            args = json.loads(input_json) if input_json else {}
        except ValueError:
            args = {"input": input_json}
        try:
            guard = client.guard(tool_action(tool.name, args, pol), mode=pol.mode, timeout=pol.timeout)
            auth = await guard.__aenter__()
        except SecondkeyError as e:
            return tool_error_text(tool.name, e)
        try:
            out = await inner(ctx, input_json)
        except BaseException as e:
            await guard.__aexit__(type(e), e, e.__traceback__)
            raise
        auth.result = out
        await guard.__aexit__(None, None, None)
        return out

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


