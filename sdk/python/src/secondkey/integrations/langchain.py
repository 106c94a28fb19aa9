"""LangChain / LangGraph: put secondkey in front of tools.

* :func:`guard_tool` wraps any ``BaseTool``: each call becomes an action,
  runs only after an allow or a reviewer's approval, and its result (or
  exception) is recorded. A refusal comes back to the model as the tool's
  error (naming the policy and the request), and the agent continues.
* :class:`SecondkeyMiddleware` is a human-in-the-loop policy for
  ``langchain.agents.create_agent``: like ``HumanInTheLoopMiddleware``'s
  ``interrupt_on``, it names the tools that need a decision, but the decision
  is secondkey's (policy, then reviewers in the web UI, Slack, Teams or the
  API) instead of a graph ``interrupt()``; a signed log records it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, Union

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException

from ..client import AsyncClient, Client
from ..errors import SecondkeyError
from ..guard import result_summary
from ._common import PolicyLike, ToolPolicy, as_policy, tool_action, tool_error_text

__all__ = ["guard_tool", "SecondkeyMiddleware", "ToolPolicy"]


def guard_tool(
    tool: BaseTool,
    client: Optional[Client] = None,
    *,
    async_client: Optional[AsyncClient] = None,
    policy: PolicyLike = "call",
) -> StructuredTool:
    """A copy of ``tool`` that runs only when secondkey authorizes the call."""
    if client is None and async_client is None:
        raise TypeError("guard_tool needs a Client, an AsyncClient, or both")
    pol = as_policy(policy)

    def run(**kwargs: Any) -> Any:
        assert client is not None
        try:
            with client.guard(tool_action(tool.name, kwargs, pol), mode=pol.mode, timeout=pol.timeout) as auth:
                out = tool.invoke(kwargs)
                auth.result = out
                return out
        except SecondkeyError as e:
            raise ToolException(tool_error_text(tool.name, e)) from e

    async def arun(**kwargs: Any) -> Any:
        assert async_client is not None
        try:
            async with async_client.guard(tool_action(tool.name, kwargs, pol), mode=pol.mode, timeout=pol.timeout) as auth:
                out = await tool.ainvoke(kwargs)
                auth.result = out
                return out
        except SecondkeyError as e:
            raise ToolException(tool_error_text(tool.name, e)) from e

    return StructuredTool.from_function(
        func=run if client is not None else None,
        coroutine=arun if async_client is not None else None,
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        handle_tool_error=True,
    )


def _middleware_base() -> type:
    from langchain.agents.middleware import AgentMiddleware

    return AgentMiddleware


class SecondkeyMiddleware(_middleware_base()):  # type: ignore[misc]
    """Human-in-the-loop for ``create_agent``, decided by secondkey.

    ``interrupt_on`` maps tool names to their policy (an operation word, a
    dict of :class:`ToolPolicy` fields, a ``ToolPolicy`` or ``True``); tools
    not named run as they are. Give a ``Client`` for ``invoke`` and an
    ``AsyncClient`` for ``ainvoke`` (or both).
    """

    def __init__(
        self,
        interrupt_on: dict[str, PolicyLike],
        client: Optional[Client] = None,
        *,
        async_client: Optional[AsyncClient] = None,
    ):
        super().__init__()
        if client is None and async_client is None:
            raise TypeError("SecondkeyMiddleware needs a Client, an AsyncClient, or both")
        self.policies = {name: as_policy(p) for name, p in interrupt_on.items()}
        self.client = client
        self.async_client = async_client

    @staticmethod
    def _refused(call: dict[str, Any], err: SecondkeyError) -> ToolMessage:
        return ToolMessage(content=tool_error_text(call["name"], err), tool_call_id=call["id"], name=call["name"],
                           status="error")

    @staticmethod
    def _outcome(msg: Any) -> tuple[bool, Any]:
        if isinstance(msg, ToolMessage):
            ok = msg.status != "error"
            return ok, result_summary(msg.content) if ok else {"status": "failed", "error": str(msg.content)[:2000]}
        return True, result_summary(repr(msg))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        pol = self.policies.get(call["name"])
        if pol is None:
            return handler(request)
        if self.client is None:
            raise RuntimeError("SecondkeyMiddleware has no Client for a synchronous invoke")
        try:
            guard = self.client.guard(tool_action(call["name"], call["args"], pol), mode=pol.mode, timeout=pol.timeout)
            auth = guard.__enter__()
        except SecondkeyError as e:
            return self._refused(call, e)
        try:
            out = handler(request)
        except BaseException as e:
            guard.__exit__(type(e), e, e.__traceback__)
            raise
        ok, summary = self._outcome(out)
        try:
            self.client.record(auth, ok, summary)
        except SecondkeyError:
            pass  # the tool ran; the guard logs what could not be recorded
        return out

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        call = request.tool_call
        pol = self.policies.get(call["name"])
        if pol is None:
            return await handler(request)
        if self.async_client is None:
            raise RuntimeError("SecondkeyMiddleware has no AsyncClient for an asynchronous invoke")
        try:
            guard = self.async_client.guard(tool_action(call["name"], call["args"], pol), mode=pol.mode,
                                            timeout=pol.timeout)
            auth = await guard.__aenter__()
        except SecondkeyError as e:
            return self._refused(call, e)
        try:
            out = await handler(request)
        except BaseException as e:
            await guard.__aexit__(type(e), e, e.__traceback__)
            raise
        ok, summary = self._outcome(out)
        try:
            await self.async_client.record(auth, ok, summary)
        except SecondkeyError:
            pass
        return out


Tools = Union[BaseTool, Callable[..., Any]]
