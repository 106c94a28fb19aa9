"""A LangChain agent whose email tool is decided by secondkey.

``SecondkeyMiddleware`` is the human-in-the-loop policy: tools it names are
held at the gateway until policy or a reviewer decides. The model here is
LangChain's fake chat model, scripted to call the tool; use your own.

    SECONDKEY_URL=… SECONDKEY_TOKEN=<agent token> python langchain_agent.py
"""

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

import secondkey
from secondkey.integrations.langchain import SecondkeyMiddleware


class ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


@tool
def send_email(to: str, body: str) -> str:
    """Send an email to a customer."""
    return f"sent to {to}"


def main() -> None:
    model = ScriptedModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "send_email", "id": "call_1", "type": "tool_call",
                                           "args": {"to": "ada@example.com", "body": "Your order shipped."}}]),
        AIMessage(content="Done."),
    ]))
    hitl = SecondkeyMiddleware({"send_email": {"operation": "write", "resource": "crm://customers/email"}},
                               secondkey.Client())
    agent = create_agent(model=model, tools=[send_email], middleware=[hitl])
    result = agent.invoke({"messages": [{"role": "user", "content": "Tell Ada her order shipped."}]})
    for m in result["messages"]:
        print(f"{m.type}: {m.content}")


if __name__ == "__main__":
    main()
