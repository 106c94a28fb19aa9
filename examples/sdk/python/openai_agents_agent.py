"""An OpenAI Agents SDK agent whose refund tool is approved through secondkey,
its execution recorded in the gateway's log.

The model is a scripted stand-in for the SDK's ``Model`` interface (no API
key needed); pass your own model instead.

    SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> python openai_agents_agent.py
"""

import asyncio
import json

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

import secondkey
from secondkey.integrations.openai_agents import guard_function_tool


class ScriptedModel(Model):
    def __init__(self):
        self.turn = 0

    async def get_response(self, *args, **kwargs):
        self.turn += 1
        if self.turn == 1:
            out = [ResponseFunctionToolCall(type="function_call", call_id="call_1", name="refund",
                                            arguments=json.dumps({"customer": "cus_42", "amount_cents": 1500}))]
        else:
            out = [ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed",
                                         content=[ResponseOutputText(type="output_text", text="Done.",
                                                                     annotations=[])])]
        return ModelResponse(output=out, usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


@function_tool
def refund(customer: str, amount_cents: int) -> str:
    """Refund a customer."""
    return f"refunded {amount_cents} cents to {customer}"


async def main() -> None:
    set_tracing_disabled(True)
    async with secondkey.AsyncClient() as client:
        tool = guard_function_tool(refund, client, policy={"operation": "write", "resource": "billing://refunds"})
        agent = Agent(name="support", instructions="Help customers.", model=ScriptedModel(), tools=[tool])
        result = await Runner.run(agent, "Refund cus_42 for the broken mug.")
        for item in result.new_items:
            if item.type == "tool_call_output_item":
                print(f"tool: {item.output}")
        print(f"ai: {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
