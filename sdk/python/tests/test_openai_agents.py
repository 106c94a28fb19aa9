"""OpenAI Agents SDK against the real gateway, with a test double of the
SDK's ``Model`` interface (no network): the model calls a tool, the gateway
holds it, a reviewer approves through the API, the tool runs once, the run
continues; on deny the model receives a tool output naming the policy and
the request."""

import dataclasses
import json

import pytest
from agents import Agent, Runner, function_tool
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.tool_context import ToolContext
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

import secondkey
from agents import set_tracing_disabled

set_tracing_disabled(True)
from conftest import approve_when_pending, in_thread, token, unique
from secondkey.integrations.openai_agents import guard_function_tool


class ScriptedModel(Model):
    """First a tool call, then a final answer; remembers what it was shown."""

    def __init__(self, tool: str, args: "dict | str"):
        self.tool, self.args, self.inputs = tool, args, []

    async def get_response(self, system_instructions, input, model_settings, tools, output_schema, handoffs,
                           tracing, *, previous_response_id=None, conversation_id=None, prompt=None, **kw):
        self.inputs.append(input)
        if len(self.inputs) == 1:
            args = self.args if isinstance(self.args, str) else json.dumps(self.args)
            out = [ResponseFunctionToolCall(arguments=args, call_id="call_1", name=self.tool,
                                            type="function_call", id="fc_1", status="completed")]
        else:
            out = [ResponseOutputMessage(id="msg_1", role="assistant", status="completed", type="message",
                                         content=[ResponseOutputText(text="All done.", type="output_text",
                                                                     annotations=[])])]
        return ModelResponse(output=out, usage=Usage(), response_id=None)

    def stream_response(self, *a, **kw):
        raise NotImplementedError("this test runs without streaming")

    def tool_output_seen(self) -> str:
        items = self.inputs[-1]
        return next(i["output"] for i in items if isinstance(i, dict) and i.get("type") == "function_call_output")


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_tool_approval_backed_by_secondkey(gateway, rita, decision):
    sent = []

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        sent.append(to)
        return f"sent to {to}"

    resource = unique("oa")
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        tool = guard_function_tool(send_email, bot, policy={"operation": "write", "resource": resource})
        model = ScriptedModel("send_email", {"to": "a@example.com", "body": "hi"})
        agent = Agent(name="mailer", instructions="Send emails.", model=model, tools=[tool])
        join = in_thread(approve_when_pending, rita, resource, decision, "checked")
        result = await Runner.run(agent, "email a@example.com")
        rid = join()
        assert result.final_output == "All done."  # the run continued after the tool
        seen = model.tool_output_seen()
        if decision == "approve":
            assert sent == ["a@example.com"] and seen == "sent to a@example.com"
            view = await bot.get_request(rid)
            assert view.state == "executed" and view.action["params"] == {"to": "a@example.com", "body": "hi"}
        else:
            assert sent == [] and rid in seen and "sdk:writes-need-a-reviewer" in seen


async def test_a_blocking_client_works_and_anything_else_is_refused_when_made(bot, rita):
    sent = []

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        sent.append(to)
        return f"sent to {to}"

    for bad in ("http://127.0.0.1:8750", object()):
        with pytest.raises(TypeError, match="must be a secondkey.Client"):
            guard_function_tool(send_email, bad, policy="write")
    # A blocking Client: the run decides through an AsyncClient made from it.
    resource = unique("oa-twin")
    tool = guard_function_tool(send_email, bot, policy={"operation": "write", "resource": resource})
    model = ScriptedModel("send_email", {"to": "b@example.com", "body": "hi"})
    agent = Agent(name="mailer", instructions="Send emails.", model=model, tools=[tool])
    join = in_thread(approve_when_pending, rita, resource)
    result = await Runner.run(agent, "email b@example.com")
    join()
    assert result.final_output == "All done." and sent == ["b@example.com"]


async def test_policy_denial_reaches_the_model_without_running(gateway):
    ran = []

    @function_tool
    def drop_table(name: str) -> str:
        """Drop a table."""
        ran.append(name)
        return "dropped"

    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        tool = guard_function_tool(drop_table, bot, policy={"operation": "drop", "resource": unique("oa-drop")})
        model = ScriptedModel("drop_table", {"name": "customers"})
        result = await Runner.run(Agent(name="dba", model=model, tools=[tool]), "drop it")
        assert ran == [] and "sdk:no-drops" in model.tool_output_seen() and result.final_output == "All done."


async def test_the_tool_runs_with_the_decided_arguments_not_the_models_text(gateway, rita):
    # The tool gets the canonical JSON of what was submitted and decided. Here
    # the model repeats a key: json.loads keeps the last, so the reviewer saw
    # b@example.com, and a parser that keeps the first would have run another.
    got, sent = [], []

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        sent.append(to)
        return f"sent to {to}"

    real = send_email.on_invoke_tool

    async def recording(ctx, input_json: str):
        got.append(input_json)
        return await real(ctx, input_json)

    resource = unique("oa-decided")
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        tool = guard_function_tool(dataclasses.replace(send_email, on_invoke_tool=recording), bot,
                                   policy={"operation": "write", "resource": resource, "timeout": 10})
        model = ScriptedModel("send_email", '{ "to": "a@example.com", "body": "hi",  "to": "b@example.com" }')
        join = in_thread(approve_when_pending, rita, resource)
        await Runner.run(Agent(name="mailer", model=model, tools=[tool]), "email b")
        view = await bot.get_request(join())
        assert view.action["params"] == {"to": "b@example.com", "body": "hi"} and view.state == "executed"
        assert got == ['{"body":"hi","to":"b@example.com"}'] and sent == ["b@example.com"]

        # Text that is not JSON is refused, and nothing is submitted.
        for text in ['{"to": "a@example.com", body: hi}', '{"to": NaN}']:
            out = await tool.on_invoke_tool(None, text)
            assert "Tool send_email was not run" in out and "JcsError: the input of tool send_email is not JSON" in out
        assert len(got) == 1
        pending = await bot.list_requests("pending", limit=500)
        assert not [r for r in pending.requests if r.action["resource"] == resource]


async def test_the_tools_context_holds_the_decided_arguments_too(gateway):
    # A tool that reads its ToolContext sees the same text it was invoked
    # with: the canonical JSON of what was decided, not the model's.
    seen = []

    @function_tool
    def lookup(ctx: ToolContext, customer: str) -> str:
        """Look a customer up."""
        seen.append((ctx.tool_arguments, customer))
        return "found"

    resource = unique("oa-ctx")
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        tool = guard_function_tool(lookup, bot, policy={"operation": "read", "resource": resource})
        model = ScriptedModel("lookup", '{"customer": "a",  "customer": "b"}')
        result = await Runner.run(Agent(name="support", model=model, tools=[tool]), "look b up")
        assert result.final_output == "All done." and model.tool_output_seen() == "found"
    assert seen == [('{"customer":"b"}', "b")]
