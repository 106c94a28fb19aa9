"""OpenAI Agents SDK: approval backed by secondkey, the execution recorded.

:func:`guard_function_tool` wraps a ``FunctionTool`` (from ``@function_tool``):
each call is submitted to secondkey and held there — policy, then reviewers —
instead of the SDK's in-process ``needs_approval`` pause; the tool runs only
after an allow or an approval, and its output (or failure) is recorded as the
execution's result. A refusal is returned to the model as the tool's output
(naming the policy and the request), so the run continues.

The tool runs with the canonical JSON (RFC 8785) of the arguments that were
submitted and decided, not with the model's own text: the tool's parser
reads exactly what the reviewer saw, and so does a tool that reads its
``ToolContext.tool_arguments`` (it gets a copy of the context holding that
text; ``tool_call`` stays the model's item, which the SDK keys its own
bookkeeping on). Arguments that are not JSON are refused
(:class:`~secondkey.jcs.JcsError`) and nothing is submitted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Union

from agents import FunctionTool

from ..client import AsyncClient, Client
from ..errors import SecondkeyError
from ..jcs import JcsError, canonicalize
from ._common import PolicyLike, ToolPolicy, as_policy, async_for, checked_clients, tool_action, tool_error_text

__all__ = ["guard_function_tool", "ToolPolicy"]


def guard_function_tool(tool: FunctionTool, client: Union[AsyncClient, Client], *, policy: PolicyLike = "call") -> FunctionTool:
    """A copy of ``tool`` that runs only when secondkey authorizes the call."""
    clients = checked_clients("guard_function_tool", client, None)
    pol = as_policy(policy)
    inner = tool.on_invoke_tool

    async def on_invoke_tool(ctx: Any, input_json: str) -> Any:
        try:
            args = _arguments(tool.name, input_json)
            action = tool_action(tool.name, args, pol)
            guard = async_for(*clients).guard(action, mode=pol.mode, timeout=pol.timeout)
            auth = await guard.__aenter__()
        except SecondkeyError as e:
            return tool_error_text(tool.name, e)
        # What runs is what was decided: the submitted params, as canonical JSON.
        params = action["params"]
        decided = canonicalize(params if isinstance(args, dict) else params["input"]).decode("utf-8")
        try:
            out = await inner(_decided_context(ctx, decided), decided)
        except BaseException as e:
            await guard.__aexit__(type(e), e, e.__traceback__)
            raise
        auth.result = out
        await guard.__aexit__(None, None, None)
        return out

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


def _decided_context(ctx: Any, decided: str) -> Any:
    """The tool's context, its ``tool_arguments`` the decided text (a copy:
    the SDK's own object keeps the model's)."""
    if not hasattr(ctx, "tool_arguments"):
        return ctx
    mine = copy.copy(ctx)
    mine.tool_arguments = decided
    return mine


def _arguments(name: str, input_json: str) -> Any:
    """The model's arguments as JSON values; text that is not JSON is refused."""
    if not input_json:
        return {}
    try:
        return json.loads(input_json, parse_constant=_no_constant)
    except ValueError as e:
        raise JcsError(f"the input of tool {name} is not JSON ({e}); nothing was submitted") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
