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
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langchain_core.utils.pydantic import get_fields
from pydantic import Field

from ..client import AsyncClient, Client
from ..errors import SecondkeyError
from ..guard import result_summary
from ..jcs import JcsError, canonicalize, json_copy
from ._common import PolicyLike, ToolPolicy, as_policy, async_for, checked_clients, tool_action, tool_error_text

__all__ = ["guard_tool", "SecondkeyMiddleware", "ToolPolicy"]


def guard_tool(
    tool: BaseTool,
    client: Optional[Client] = None,
    *,
    async_client: Optional[AsyncClient] = None,
    policy: PolicyLike = "call",
) -> BaseTool:
    """A copy of ``tool`` that runs only when secondkey authorizes the call.

    The action's ``params`` are the tool call's arguments as the model sent
    them, minus the arguments LangChain injects (``InjectedToolArg``,
    ``InjectedState``, ``InjectedStore``, ``ToolRuntime``, the tool call
    id): those never reach the gateway. The wrapped tool is invoked with a
    copy of exactly those params (plus the injected values) and validates
    them once, itself — a validator that transforms its input cannot make
    what runs differ from what was decided.
    """
    client, async_client = checked_clients("guard_tool", client, async_client)
    return _GuardedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
        return_direct=tool.return_direct,
        func=getattr(tool, "func", None),
        coroutine=getattr(tool, "coroutine", None),
        inner=tool,
        client=client,
        async_client=async_client,
        policy=as_policy(policy),
    )


def _injected_keys(tool: BaseTool) -> frozenset[str]:
    """The argument names LangChain (or LangGraph's ToolNode) fills in, not the model."""
    keys = set(getattr(tool, "_injected_args_keys", ()))
    schema = tool.args_schema
    if schema is not None and not isinstance(schema, dict):
        call_fields = set(get_fields(tool.tool_call_schema))  # type: ignore[arg-type]
        keys |= set(get_fields(schema)) - call_fields
    return frozenset(keys | {"run_manager", "callbacks"})


class _GuardedTool(BaseTool):
    """What :func:`guard_tool` returns: decides, then invokes the inner tool."""

    inner: BaseTool
    client: Optional[Any] = None
    async_client: Optional[Any] = None
    policy: ToolPolicy
    # The inner tool's function, shown so LangGraph's ToolNode finds the
    # arguments it injects (state, store, runtime) as it would on the inner
    # tool; never called from here.
    func: Optional[Callable[..., Any]] = None
    coroutine: Optional[Callable[..., Awaitable[Any]]] = None

    @property
    def _injected_args_keys(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(getattr(self.inner, "_injected_args_keys", ()))

    def _prepare(self, input: Any) -> tuple[dict[str, Any], Any]:
        """The action, and the input to invoke the inner tool with: a copy of its params."""
        is_call = _is_call(input)
        raw = input.get("args", {}) if is_call else input
        if not isinstance(raw, dict):
            return tool_action(self.name, raw, self.policy), input
        injected = _injected_keys(self.inner)
        action = tool_action(self.name, {k: v for k, v in raw.items() if k not in injected}, self.policy)
        run_args = {**json_copy(action["params"]), **{k: v for k, v in raw.items() if k in injected}}
        return action, ({**input, "args": run_args} if is_call else run_args)

    def _refused(self, call_id: Optional[str], err: SecondkeyError) -> Any:
        text = tool_error_text(self.name, err)
        if call_id is None:
            return text
        return ToolMessage(content=text, tool_call_id=call_id, name=self.name, status="error")

    def invoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:
        if self.client is None:
            raise RuntimeError(f"the guarded tool {self.name} has no Client for a synchronous invoke")
        try:
            action, run_input = self._prepare(input)
        except SecondkeyError as e:
            return self._refused(_call_id(input), e)
        return _run_decided(self.client, action, self.policy, lambda: self.inner.invoke(run_input, config, **kwargs),
                            lambda e: self._refused(_call_id(input), e))

    async def ainvoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:
        try:
            action, run_input = self._prepare(input)
        except SecondkeyError as e:
            return self._refused(_call_id(input), e)
        return await _arun_decided(async_for(self.client, self.async_client), action, self.policy,
                                   lambda: self.inner.ainvoke(run_input, config, **kwargs),
                                   lambda e: self._refused(_call_id(input), e))

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        # run() would validate the input here, apart from the decision: only invoke is offered.
        raise NotImplementedError(f"call the guarded tool {self.name} with invoke or ainvoke")


class _DecidedCall(BaseTool):
    """Stands in for the tool in the request :class:`SecondkeyMiddleware` passes on.

    The middleware's handler is the rest of the stack: a middleware inside
    it may call the tool again (a retry) or change the call. This stand-in
    runs the inner tool once, and only with the arguments that were decided;
    a second run, or a call whose arguments differ, is refused as a tool
    error and never reaches the tool.
    """

    inner: BaseTool
    params: dict[str, Any]
    runs: list[int] = Field(default_factory=list)
    func: Optional[Callable[..., Any]] = None
    coroutine: Optional[Callable[..., Awaitable[Any]]] = None

    @property
    def _injected_args_keys(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(getattr(self.inner, "_injected_args_keys", ()))

    def _admit(self, input: Any) -> tuple[Optional[str], Any]:
        """(why it is refused, or None; the input to invoke the inner tool with)."""
        is_call = _is_call(input)
        raw = input.get("args", {}) if is_call else input
        injected = _injected_keys(self.inner) if isinstance(raw, dict) else frozenset()
        public = {k: v for k, v in raw.items() if k not in injected} if isinstance(raw, dict) else {"input": raw}
        if self.runs:
            return ("it already ran once under this decision; another run (a retry by a middleware placed after "
                    "SecondkeyMiddleware) needs a decision of its own: list SecondkeyMiddleware last"), None
        try:
            same = canonicalize(public) == canonicalize(self.params)
        except JcsError:
            same = False
        if not same:
            return ("its arguments were changed after secondkey decided the call (by a middleware placed after "
                    "SecondkeyMiddleware); the decided call is the one that may run"), None
        self.runs.append(1)
        if not isinstance(raw, dict):
            return None, input
        run_args = {**json_copy(self.params), **{k: v for k, v in raw.items() if k in injected}}
        return None, ({**input, "args": run_args} if is_call else run_args)

    def _refusal(self, input: Any, why: str) -> Any:
        text = f"Tool {self.name} was not run: {why}"
        if _call_id(input) is None:
            raise ToolException(text)
        return ToolMessage(content=text, tool_call_id=_call_id(input), name=self.name, status="error")

    def invoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:
        why, run_input = self._admit(input)
        if why is not None:
            return self._refusal(input, why)
        return self.inner.invoke(run_input, config, **kwargs)

    async def ainvoke(self, input: Any, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Any:
        why, run_input = self._admit(input)
        if why is not None:
            return self._refusal(input, why)
        return await self.inner.ainvoke(run_input, config, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"call {self.name} with invoke or ainvoke")


def _decided(request: Any, action: dict[str, Any]) -> Any:
    """The request to pass on: the decided arguments, and a tool that runs them once."""
    tool = request.tool
    call = {**request.tool_call, "args": json_copy(action["params"])}
    if tool is None:
        return request.override(tool_call=call)
    stand_in = _DecidedCall(name=tool.name, description=tool.description,
                            args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
                            func=getattr(tool, "func", None), coroutine=getattr(tool, "coroutine", None),
                            inner=tool, params=action["params"])
    return request.override(tool_call=call, tool=stand_in)


def _is_call(input: Any) -> bool:
    """A ToolCall input, as LangGraph's ToolNode passes it."""
    return isinstance(input, dict) and input.get("type") == "tool_call"


def _call_id(input: Any) -> Optional[str]:
    return input.get("id") if _is_call(input) else None


def _run_decided(client: Client, action: dict[str, Any], pol: ToolPolicy, run: Callable[[], Any],
                 refused: Callable[[SecondkeyError], Any]) -> Any:
    """Runs ``run()`` once ``action`` is authorized and records its outcome; else ``refused(error)``."""
    try:
        guard = client.guard(action, mode=pol.mode, timeout=pol.timeout)
        auth = guard.__enter__()
    except SecondkeyError as e:
        return refused(e)
    try:
        out = run()
    except BaseException as e:
        guard.__exit__(type(e), e, e.__traceback__)
        raise
    ok, summary = _outcome(out)
    try:
        client.record(auth, ok, summary)
    except SecondkeyError:
        pass  # the tool ran; nothing to undo
    return out


async def _arun_decided(client: AsyncClient, action: dict[str, Any], pol: ToolPolicy, run: Callable[[], Awaitable[Any]],
                        refused: Callable[[SecondkeyError], Any]) -> Any:
    """The asyncio twin of :func:`_run_decided`."""
    try:
        guard = client.guard(action, mode=pol.mode, timeout=pol.timeout)
        auth = await guard.__aenter__()
    except SecondkeyError as e:
        return refused(e)
    try:
        out = await run()
    except BaseException as e:
        await guard.__aexit__(type(e), e, e.__traceback__)
        raise
    ok, summary = _outcome(out)
    try:
        await client.record(auth, ok, summary)
    except SecondkeyError:
        pass  # the tool ran; nothing to undo
    return out


def _outcome(msg: Any) -> tuple[bool, Any]:
    """How a tool's output is recorded: an error ToolMessage is a failed run."""
    if isinstance(msg, ToolMessage):
        ok = msg.status != "error"
        return ok, result_summary(msg.content) if ok else {"status": "failed", "error": str(msg.content)[:2000]}
    return True, result_summary(msg if isinstance(msg, (str, int, float, bool, type(None), list, dict)) else repr(msg))


def _middleware_base() -> type:
    from langchain.agents.middleware import AgentMiddleware

    return AgentMiddleware


class SecondkeyMiddleware(_middleware_base()):  # type: ignore[misc]
    """Human-in-the-loop for ``create_agent``, decided by secondkey.

    ``interrupt_on`` maps tool names to their policy (an operation word, a
    dict of :class:`ToolPolicy` fields, a ``ToolPolicy`` or ``True``); a
    tool mapped to ``False``, as in LangChain's ``HumanInTheLoopMiddleware``,
    and a tool not named run as they are. Give a ``Client`` for ``invoke`` and an
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
        client, async_client = checked_clients("SecondkeyMiddleware", client, async_client)
        self.policies = {name: as_policy(p) for name, p in interrupt_on.items() if p is not False}
        self.client = client
        self.async_client = async_client

    @staticmethod
    def _refused(call: dict[str, Any], err: SecondkeyError) -> ToolMessage:
        return ToolMessage(content=tool_error_text(call["name"], err), tool_call_id=call["id"], name=call["name"],
                           status="error")

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        pol = self.policies.get(call["name"])
        if pol is None:
            return handler(request)
        if self.client is None:
            raise RuntimeError("SecondkeyMiddleware has no Client for a synchronous invoke")
        try:
            action = tool_action(call["name"], call["args"], pol)
        except SecondkeyError as e:
            return self._refused(call, e)
        return _run_decided(self.client, action, pol, lambda: handler(_decided(request, action)),
                            lambda e: self._refused(call, e))

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        call = request.tool_call
        pol = self.policies.get(call["name"])
        if pol is None:
            return await handler(request)
        try:
            action = tool_action(call["name"], call["args"], pol)
        except SecondkeyError as e:
            return self._refused(call, e)
        return await _arun_decided(async_for(self.client, self.async_client), action, pol, lambda: handler(_decided(request, action)),
                                   lambda e: self._refused(call, e))


Tools = Union[BaseTool, Callable[..., Any]]
