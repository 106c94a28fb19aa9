"""Every Python example under examples/sdk/python runs end to end against the
real gateway, with a reviewer approving (or denying) through the API."""

import subprocess
import sys

import pytest

from conftest import ROOT, approve_when_pending, in_thread

EXAMPLES = ROOT / "examples" / "sdk" / "python"


def run_example(gateway, name: str, reviewer, resource: str, decision: str = "approve") -> str:
    # The example is the agent (its token from the environment); the test is the reviewer.
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / name)], env=gateway.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    join = in_thread(approve_when_pending, reviewer, resource, decision, "from the example test", 60)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    join(60)
    assert proc.returncode == 0, err
    return out


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_guard_quickstart(gateway, rita, decision):
    out = run_example(gateway, "guard_quickstart.py", rita, "crm://customers/refunds", decision)
    if decision == "approve":
        assert out.strip() == "refunded 1500 cents to cus_42"
    else:
        assert out.startswith("not run:") and "sdk:writes-need-a-reviewer" in out


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_langchain_example(gateway, rita, decision):
    out = run_example(gateway, "langchain_agent.py", rita, "crm://customers/email", decision)
    assert "ai: Done." in out
    if decision == "approve":
        assert "tool: sent to ada@example.com" in out
    else:
        assert "tool: Tool send_email was not run" in out and "sdk:writes-need-a-reviewer" in out


def test_openai_agents_example(gateway, rita):
    out = run_example(gateway, "openai_agents_agent.py", rita, "billing://refunds")
    assert "tool: refunded 1500 cents to cus_42" in out and "ai: Done." in out


def test_claude_agent_example(gateway, rita):
    out = run_example(gateway, "claude_agent_permissions.py", rita, "repo://app/Write")
    assert "decision: allow" in out and "recorded" in out
