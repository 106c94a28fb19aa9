"""Claude Agent SDK: the ``can_use_tool`` callback and the result hooks,
called directly with the SDK's own types, and through the real SDK's
``query()`` loop driving a stand-in for the Claude Code CLI (the real CLI
needs Anthropic's service; sdk/testdata/fake-claude-code speaks its stdio
protocol and plays one scripted tool use)."""

import pytest
from claude_agent_sdk import ClaudeAgentOptions, PermissionResultAllow, PermissionResultDeny, ToolPermissionContext

import secondkey
from conftest import approve_when_pending, free_port, in_thread, token, unique
from secondkey.integrations.claude_agent import SecondkeyPermissions


def perms_for(client, resource):
    return SecondkeyPermissions(client, resource=lambda tool: resource)


async def test_approved_tool_use_is_allowed_with_the_approved_input_and_recorded(gateway, rita):
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        resource = unique("claude")
        perms = perms_for(bot, resource)
        options = ClaudeAgentOptions(can_use_tool=perms.can_use_tool, hooks=perms.hooks())
        assert options.can_use_tool is not None and "PostToolUse" in options.hooks
        join = in_thread(approve_when_pending, rita, resource)
        tool_input = {"file_path": "/srv/app/config.yaml", "content": "debug: false\n"}
        result = await options.can_use_tool("Write", tool_input, ToolPermissionContext(tool_use_id="toolu_1"))
        rid = join()
        assert isinstance(result, PermissionResultAllow) and result.updated_input == tool_input
        view = await bot.get_request(rid)
        assert view.action["operation"] == "write" and view.action["params"] == tool_input
        # Claude Code ran the tool: the hook records the result
        await perms.post_tool_use({"hook_event_name": "PostToolUse", "tool_name": "Write", "tool_input": tool_input,
                                   "tool_response": {"ok": True}, "tool_use_id": "toolu_1"}, "toolu_1", None)
        assert (await bot.get_request(rid)).state == "executed" and perms.pending == {}


async def test_denied_tool_use_names_the_policy_and_request(gateway, rita):
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        resource = unique("claude-deny")
        perms = perms_for(bot, resource)
        join = in_thread(approve_when_pending, rita, resource, "deny", "not in prod")
        result = await perms.can_use_tool("Edit", {"file_path": "/etc/hosts"}, ToolPermissionContext(tool_use_id="t2"))
        rid = join()
        assert isinstance(result, PermissionResultDeny)
        assert rid in result.message and "sdk:writes-need-a-reviewer" in result.message and "not in prod" in result.message
        assert perms.pending == {}


async def test_failure_hook_records_a_failed_execution(gateway, rita):
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        resource = unique("claude-fail")
        perms = perms_for(bot, resource)
        join = in_thread(approve_when_pending, rita, resource)
        await perms.can_use_tool("Write", {"file_path": "/x"}, ToolPermissionContext(tool_use_id="t3"))
        rid = join()
        await perms.post_tool_use_failure({"hook_event_name": "PostToolUseFailure", "tool_name": "Write",
                                           "tool_input": {}, "tool_use_id": "t3", "error": "disk full"}, "t3", None)
        assert (await bot.get_request(rid)).state == "failed"


async def test_read_only_tools_and_a_gateway_that_is_down():
    async with secondkey.AsyncClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as down:
        result = await SecondkeyPermissions(down).can_use_tool("Read", {"file_path": "/x"}, ToolPermissionContext())
        assert isinstance(result, PermissionResultDeny) and "could not authorize" in result.message


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_through_the_sdk_query_loop_with_a_stand_in_cli(gateway, rita, tmp_path, monkeypatch, decision):
    """The real SDK's ``query()`` drives a stand-in for the Claude Code CLI
    (sdk/testdata/fake-claude-code, the CLI's stdio protocol, one scripted
    turn): the permission request reaches the callback, the gateway holds it,
    a reviewer decides, the tool runs once (or not), the hook records it."""
    import json

    from claude_agent_sdk import AssistantMessage, ResultMessage, TextBlock, query

    from conftest import TESTDATA

    target = tmp_path / "prod.yaml"
    monkeypatch.setenv("FAKE_CLAUDE_TOOL", json.dumps({"name": "Write", "input": {"file_path": str(target),
                                                                                   "content": "debug: false\n"}}))
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(tmp_path / "cli.log"))
    resource = unique("claude-cli")
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        perms = perms_for(bot, resource)
        options = ClaudeAgentOptions(can_use_tool=perms.can_use_tool, hooks=perms.hooks(),
                                     cli_path=str(TESTDATA / "fake-claude-code"))

        async def prompt():
            yield {"type": "user", "message": {"role": "user", "content": "turn debug off in prod.yaml"}}

        join = in_thread(approve_when_pending, rita, resource, decision, "checked")
        texts, results = [], []
        async for msg in query(prompt=prompt(), options=options):
            if isinstance(msg, AssistantMessage):
                texts += [b.text for b in msg.content if isinstance(b, TextBlock)]
            if isinstance(msg, ResultMessage):
                results.append(msg)
        rid = join()
        events = [json.loads(x) for x in (tmp_path / "cli.log").read_text().splitlines()]
        assert texts == ["All done."] and results and not results[0].is_error  # the agent continued
        (seen,) = [e for e in events if e["event"] == "result"]
        if decision == "approve":
            assert target.read_text() == "debug: false\n"  # ran exactly once
            assert (await bot.get_request(rid)).state == "executed"  # the hook recorded it
        else:
            assert not target.exists()
            assert seen["is_error"] and rid in seen["tool_result"] and "sdk:writes-need-a-reviewer" in seen["tool_result"]


async def test_pre_tool_use_hook_decides_every_tool_use(gateway, rita):
    # Claude Code skips can_use_tool under bypassPermissions / acceptEdits and
    # for allowed_tools; the PreToolUse hook runs on every tool use and decides.
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        resource = unique("claude-pre")
        perms = perms_for(bot, resource)
        hooks = perms.hooks()
        assert [m.hooks for m in hooks["PreToolUse"]] == [[perms.pre_tool_use]]
        tool_input = {"file_path": "/srv/app/prod.yaml", "content": "debug: false\n"}
        hook_input = {"hook_event_name": "PreToolUse", "tool_name": "Write", "tool_input": tool_input,
                      "tool_use_id": "toolu_7", "session_id": "s", "transcript_path": "", "cwd": "/"}
        join = in_thread(approve_when_pending, rita, resource)
        out = await perms.pre_tool_use(hook_input, "toolu_7", None)
        rid = join()
        spec = out["hookSpecificOutput"]
        assert spec["permissionDecision"] == "allow" and spec["updatedInput"] == tool_input
        # if Claude Code asks the callback as well, the decision is reused: no second request
        again = await perms.can_use_tool("Write", tool_input, ToolPermissionContext(tool_use_id="toolu_7"))
        assert isinstance(again, PermissionResultAllow) and again.updated_input == tool_input
        assert [r for r in (await bot.list_requests("pending")).requests if r.action["resource"] == resource] == []
        await perms.post_tool_use({**hook_input, "hook_event_name": "PostToolUse", "tool_response": "ok"}, "toolu_7", None)
        assert (await bot.get_request(rid)).state == "executed"

        join = in_thread(approve_when_pending, rita, resource, "deny", "not in prod")
        out = await perms.pre_tool_use({**hook_input, "tool_use_id": "toolu_8"}, "toolu_8", None)
        rid = join()
        spec = out["hookSpecificOutput"]
        assert spec["permissionDecision"] == "deny" and rid in spec["permissionDecisionReason"]
        assert "toolu_8" not in perms.pending
