"""LangChain / LangGraph against the real gateway, driven by LangChain's own
fake chat model (GenericFakeChatModel; the subclass only accepts the tool
binding that create_agent asks for): the model calls a tool, the gateway
holds it, a reviewer approves through the API, the tool runs once, the
agent continues; on deny the model sees a tool error naming the policy and
the request."""

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

import secondkey
from conftest import approve_when_pending, in_thread, token, unique
from secondkey.integrations.langchain import SecondkeyMiddleware, guard_tool


class ToolCallingFake(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


def script(tool_name, args):
    return ToolCallingFake(messages=iter([
        AIMessage(content="", tool_calls=[{"name": tool_name, "args": args, "id": "call_1", "type": "tool_call"}]),
        AIMessage(content="All done."),
    ]))


def make_tool(sent):
    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        sent.append(to)
        return f"sent to {to}"

    return send_email


def tool_messages(result):
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_guard_tool_in_a_langgraph_agent(bot, rita, decision):
    sent = []
    resource = unique("lc-tool")
    guarded = guard_tool(make_tool(sent), bot, policy={"operation": "write", "resource": resource})
    agent = create_agent(model=script("send_email", {"to": "a@example.com", "body": "hi"}), tools=[guarded])
    join = in_thread(approve_when_pending, rita, resource, decision, "checked")
    result = agent.invoke({"messages": [{"role": "user", "content": "email a"}]})
    rid = join()
    (msg,) = tool_messages(result)
    assert result["messages"][-1].content == "All done."  # the agent continued
    if decision == "approve":
        assert sent == ["a@example.com"] and msg.content == "sent to a@example.com" and msg.status != "error"
        assert bot.get_request(rid).state == "executed"
    else:
        assert sent == []
        assert msg.status == "error" and rid in msg.content and "sdk:writes-need-a-reviewer" in msg.content


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_middleware_routes_the_decision_to_secondkey(bot, rita, decision):
    sent = []
    resource = unique("lc-mw")
    mw = SecondkeyMiddleware({"send_email": {"operation": "write", "resource": resource}}, bot)
    agent = create_agent(model=script("send_email", {"to": "b@example.com", "body": "hi"}), tools=[make_tool(sent)],
                         middleware=[mw])
    join = in_thread(approve_when_pending, rita, resource, decision)
    result = agent.invoke({"messages": [{"role": "user", "content": "email b"}]})
    rid = join()
    (msg,) = tool_messages(result)
    assert result["messages"][-1].content == "All done."
    if decision == "approve":
        assert sent == ["b@example.com"] and bot.get_request(rid).state == "executed"
    else:
        assert sent == [] and msg.status == "error" and rid in msg.content and "sdk:writes-need-a-reviewer" in msg.content


async def test_middleware_async_and_unlisted_tools_run_untouched(gateway, rita):
    sent = []
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as abot:
        resource = unique("lc-async")
        mw = SecondkeyMiddleware({"send_email": {"operation": "write", "resource": resource}}, async_client=abot)
        agent = create_agent(model=script("send_email", {"to": "c@example.com", "body": "x"}),
                             tools=[make_tool(sent)], middleware=[mw])
        join = in_thread(approve_when_pending, rita, resource)
        result = await agent.ainvoke({"messages": [{"role": "user", "content": "email c"}]})
        join()
        assert sent == ["c@example.com"] and result["messages"][-1].content == "All done."
        # a tool the policy does not name runs without a request
        mw2 = SecondkeyMiddleware({"other_tool": "write"}, async_client=abot)
        agent2 = create_agent(model=script("send_email", {"to": "d@example.com", "body": "x"}),
                              tools=[make_tool(sent)], middleware=[mw2])
        await agent2.ainvoke({"messages": [{"role": "user", "content": "email d"}]})
        assert sent == ["c@example.com", "d@example.com"]


async def test_a_blocking_client_alone_serves_an_async_agent(bot, rita):
    # The guides show guard_tool(tool, client) and SecondkeyMiddleware(map,
    # client); an agent run with ainvoke then decides through an AsyncClient
    # made from that Client, instead of failing the whole run.
    sent = []
    resource = unique("lc-twin")
    guarded = guard_tool(make_tool(sent), bot, policy={"operation": "write", "resource": resource})
    agent = create_agent(model=script("send_email", {"to": "g@example.com", "body": "x"}), tools=[guarded])
    join = in_thread(approve_when_pending, rita, resource)
    result = await agent.ainvoke({"messages": [{"role": "user", "content": "email g"}]})
    rid = join()
    (msg,) = tool_messages(result)
    assert sent == ["g@example.com"] and msg.content == "sent to g@example.com", msg
    assert bot.get_request(rid).state == "executed"
    resource = unique("lc-twin-mw")
    mw = SecondkeyMiddleware({"send_email": {"operation": "write", "resource": resource}}, bot)
    agent = create_agent(model=script("send_email", {"to": "h@example.com", "body": "x"}), tools=[make_tool(sent)],
                         middleware=[mw])
    join = in_thread(approve_when_pending, rita, resource, "deny", "no")
    result = await agent.ainvoke({"messages": [{"role": "user", "content": "email h"}]})
    join()
    (msg,) = tool_messages(result)
    assert sent == ["g@example.com"] and msg.status == "error", msg


def test_integrations_refuse_what_is_not_a_client_when_made(bot):
    sent = []
    for bad in ("http://127.0.0.1:8750", object()):
        with pytest.raises(TypeError, match="must be a secondkey.Client"):
            guard_tool(make_tool(sent), bad, policy="write")
        with pytest.raises(TypeError, match="must be a secondkey.Client"):
            SecondkeyMiddleware({"send_email": "write"}, bad)
    with pytest.raises(TypeError, match="async_client must be a secondkey.AsyncClient"):
        guard_tool(make_tool(sent), bot, async_client=bot, policy="write")
    # An AsyncClient given as the client is taken as the asynchronous one:
    # a blocking invoke then says what is missing.
    aclient = secondkey.AsyncClient(bot.url, "t")
    guarded = guard_tool(make_tool(sent), aclient, policy="write")
    assert guarded.client is None and guarded.async_client is aclient
    with pytest.raises(RuntimeError, match="has no Client for a synchronous invoke"):
        guarded.invoke({"to": "x@example.com", "body": "x"})
    assert sent == []


def test_middleware_runs_a_tool_mapped_to_false_as_it_is():
    from conftest import free_port

    # The client points at nothing: any request to it would fail the call.
    sent = []
    down = secondkey.Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    mw = SecondkeyMiddleware({"send_email": False}, down)
    agent = create_agent(model=script("send_email", {"to": "f@example.com", "body": "x"}), tools=[make_tool(sent)],
                         middleware=[mw])
    result = agent.invoke({"messages": [{"role": "user", "content": "email f"}]})
    (msg,) = tool_messages(result)
    assert sent == ["f@example.com"] and msg.content == "sent to f@example.com"
    with pytest.raises(TypeError, match="a tool policy is a ToolPolicy, an operation word, a dict or True, not 5"):
        SecondkeyMiddleware({"send_email": 5}, down)


def test_gateway_down_is_a_tool_error_and_the_tool_never_runs():
    from conftest import free_port

    sent = []
    down = secondkey.Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    agent = create_agent(model=script("send_email", {"to": "e@example.com", "body": "x"}),
                         tools=[guard_tool(make_tool(sent), down, policy="write")])
    result = agent.invoke({"messages": [{"role": "user", "content": "email e"}]})
    (msg,) = tool_messages(result)
    assert sent == [] and msg.status == "error" and "could not authorize" in msg.content


def test_guard_tool_validates_once_and_keeps_injected_arguments_out_of_the_action(bot, rita):
    # A validator that transforms runs once, in the tool; the action holds the
    # arguments as the model sent them; an injected argument (here a
    # connection string with a password) never reaches the gateway.
    from typing import Annotated

    from langchain_core.tools import InjectedToolArg
    from pydantic import BaseModel, field_validator

    class Refund(BaseModel):
        customer: str
        amount: int
        conn: Annotated[str, InjectedToolArg]

        @field_validator("amount")
        @classmethod
        def to_cents(cls, v: int) -> int:
            return v * 100

    ran = []

    @tool(args_schema=Refund)
    def refund(customer: str, amount: int, conn: str) -> str:
        """Refund a customer."""
        ran.append((customer, amount, conn))
        return "refunded"

    resource = unique("lc-once")
    guarded = guard_tool(refund, bot, policy={"operation": "write", "resource": resource})
    assert "conn" not in guarded.tool_call_schema.model_json_schema()["properties"]
    join = in_thread(approve_when_pending, rita, resource)
    call = {"name": "refund", "type": "tool_call", "id": "call_9",
            "args": {"customer": "cus_1", "amount": 5, "conn": "postgres://app:s3cret@db/prod"}}
    out = guarded.invoke(call)
    rid = join()
    assert isinstance(out, ToolMessage) and out.content == "refunded" and out.tool_call_id == "call_9"
    assert ran == [("cus_1", 500, "postgres://app:s3cret@db/prod")]
    view = bot.get_request(rid)
    assert view.action["params"] == {"customer": "cus_1", "amount": 5} and view.state == "executed"


def test_guard_tool_refuses_an_input_that_is_not_json_as_a_tool_error(bot):
    ran = []

    @tool
    def tag(ids: list) -> str:
        """Tag records."""
        ran.append(ids)
        return "ok"

    out = guard_tool(tag, bot, policy="read").invoke(
        {"name": "tag", "type": "tool_call", "id": "call_3", "args": {"ids": {1, 2}}})
    assert ran == [] and out.status == "error" and "is a builtins.set" in out.content


def test_middleware_runs_the_decided_call_once_whatever_middleware_inside_does(bot):
    # A middleware listed after SecondkeyMiddleware runs inside its handler:
    # a retry there must not run the tool twice on one decision, and a
    # rewrite there must not run a call nobody decided.
    from langchain.agents.middleware import AgentMiddleware

    class Twice(AgentMiddleware):
        def wrap_tool_call(self, request, handler):
            first = handler(request)
            return handler(request) if first.status != "error" else first

    class Rewrite(AgentMiddleware):
        def wrap_tool_call(self, request, handler):
            return handler(request.override(tool_call={**request.tool_call, "args": {"to": "mallory@example.com", "body": "x"}}))

    for inner, want_sent, want_text in [(Twice(), ["a@example.com"], "already ran once"),
                                        (Rewrite(), [], "changed after secondkey decided")]:
        sent = []
        mw = SecondkeyMiddleware({"send_email": {"operation": "read", "resource": unique("lc-inner")}}, bot)
        agent = create_agent(model=script("send_email", {"to": "a@example.com", "body": "hi"}), tools=[make_tool(sent)],
                             middleware=[mw, inner])
        result = agent.invoke({"messages": [{"role": "user", "content": "email a"}]})
        (msg,) = tool_messages(result)
        assert sent == want_sent, (type(inner).__name__, sent)
        assert msg.status == "error" and want_text in msg.content, msg.content
