"""The guard against the real gateway: it runs once, only when authorized."""

import asyncio
import functools
import json
import signal
import threading
import time

import httpx
import pytest

import secondkey
from conftest import approve_when_pending, in_thread, token, unique, write_action


def test_allow_runs_once_and_records_the_result(bot):
    action = {"kind": "tool", "operation": "read", "resource": unique("g-read")}
    runs = []
    with bot.guard(action) as auth:
        runs.append(1)
        auth.result = {"rows": 2}
    assert runs == [1] and auth.decision == "allow" and auth.execution_id and auth.recorded
    with pytest.raises(secondkey.Conflict):  # already recorded by leaving the block
        bot.report_execution(auth.execution_id, True)


def test_review_waits_for_approval_then_runs_once(bot, rita):
    action = write_action()
    join = in_thread(approve_when_pending, rita, action["resource"])
    runs = []
    with bot.guard(action, timeout=30) as auth:
        runs.append(auth.request_id)
    rid = join()
    assert runs == [rid] and auth.approvers == ["user:rita"] and auth.execution_id == rid
    assert bot.get_request(rid).state == "executed"
    # the approval is used up: the identical action waits for a new approval
    with pytest.raises(secondkey.GuardTimeout) as e:
        with bot.guard(action, timeout=1):
            runs.append("again")
    assert runs == [rid]
    assert bot.get_request(e.value.request_id).state == "withdrawn"


def test_reviewer_denial_never_runs_and_names_policy_and_request(bot, rita):
    action = write_action()
    join = in_thread(approve_when_pending, rita, action["resource"], "deny", "not this customer")
    runs = []
    with pytest.raises(secondkey.Denied) as e:
        with bot.guard(action, timeout=30):
            runs.append(1)
    rid = join()
    assert runs == []
    msg = str(e.value)
    assert rid in msg and "sdk:writes-need-a-reviewer" in msg and "not this customer" in msg
    assert e.value.request_id == rid and e.value.reviewers == ["user:rita"]


def test_policy_denial_never_runs(bot):
    runs = []
    with pytest.raises(secondkey.Denied) as e:
        with bot.guard({"kind": "tool", "operation": "drop", "resource": unique("drop")}):
            runs.append(1)
    assert runs == [] and e.value.policies == ["sdk:no-drops"] and e.value.decision_id.startswith("act_")
    assert "sdk:no-drops" in str(e.value) and e.value.decision_id in str(e.value)


def test_default_denial_names_no_empty_policy(rita):
    # user:rita is in no group a permit names: nothing permits it.
    with pytest.raises(secondkey.Denied) as e:
        with rita.guard({"kind": "tool", "operation": "read", "resource": unique("nobody")}):
            pass
    msg = str(e.value)
    assert e.value.policies == [] and "no permit policy matches" in msg, msg
    assert "policy :" not in msg and "policy  " not in msg, msg


def test_expiry_and_withdrawal_never_run(bot):
    runs = []
    with pytest.raises(secondkey.RequestEnded) as e:
        with bot.guard({"kind": "tool", "operation": "delete", "resource": unique("del")}, timeout=30):
            runs.append(1)
    assert e.value.state == "expired" and runs == []

    other = secondkey.Client(bot.url, token("agent:sdk-bot"))
    action = write_action()

    def withdraw_when_pending():
        while True:
            for r in other.list_requests("pending").requests:
                if r.action["resource"] == action["resource"]:
                    return other.withdraw(r.id)

    join = in_thread(withdraw_when_pending)
    with pytest.raises(secondkey.RequestEnded) as e:
        with bot.guard(action, timeout=30):
            runs.append(1)
    join()
    other.close()
    assert e.value.state == "withdrawn" and runs == []


def test_grant_mode_verifies_and_consumes_the_grant(bot, rita):
    action = write_action()
    join = in_thread(approve_when_pending, rita, action["resource"])
    with bot.guard(action, mode="grant", timeout=30) as auth:
        assert auth.grant_claims["dig"] == auth.digest and auth.grant_claims["rid"] == auth.request_id
    join()
    assert bot.get_request(auth.request_id).state == "executed"
    # allow in grant mode: the grant is consumed before the block
    with bot.guard({"kind": "tool", "operation": "read", "resource": unique("gr")}, mode="grant") as auth:
        assert auth.grant_claims["sub"] == "agent:sdk-bot"


def test_decorator_builds_the_action_and_records_result_or_exception(bot, rita):
    calls = []

    @bot.guarded("write", resource="crm://customers", justification="the customer asked")
    def send_email(to: str, body: str = "hello") -> str:
        calls.append(to)
        if to == "bad@example.com":
            raise RuntimeError("smtp refused")
        return f"sent to {to}"

    to = unique("addr") + "@example.com"
    join = in_thread(approve_when_pending_params, rita, to)
    assert send_email(to) == f"sent to {to}"
    rid = join()
    view = bot.get_request(rid)
    assert view.action["params"] == {"to": to, "body": "hello"} and view.state == "executed"
    assert view.action["justification"] == "the customer asked"

    join = in_thread(approve_when_pending_params, rita, "bad@example.com")
    with pytest.raises(RuntimeError, match="smtp refused"):
        send_email("bad@example.com")
    rid = join()
    assert bot.get_request(rid).state == "failed"
    assert calls == [to, "bad@example.com"]


def approve_when_pending_params(client, to: str) -> str:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for r in client.list_requests("pending").requests:
            if r.action.get("params", {}).get("to") == to:
                client.approve(r.id)
                return r.id
        time.sleep(0.05)
    raise AssertionError("nothing pending")


def test_events_unavailable_falls_back_to_long_poll(gateway, rita):
    """A proxy that refuses event streams (as an overloaded gateway would)."""
    real = httpx.HTTPTransport()
    streams = []

    class NoEvents(httpx.BaseTransport):
        def handle_request(self, request):
            if request.url.path.endswith("/events"):
                streams.append(1)
                return httpx.Response(503, json={"error": {"code": "log_unavailable", "message": "busy"}})
            return real.handle_request(request)

    bot = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=NoEvents()))
    action = write_action()
    join = in_thread(approve_when_pending, rita, action["resource"])
    with bot.guard(action, timeout=30) as auth:
        pass
    join()
    assert streams and auth.execution_id


async def test_async_guard_and_decorator(gateway, rita):
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        action = write_action()
        join = in_thread(approve_when_pending, rita, action["resource"])
        runs = []
        async with bot.guard(action, timeout=30) as auth:
            runs.append(1)
        join()
        assert runs == [1] and auth.approvers == ["user:rita"]

        @bot.guarded("read", resource=unique("async"))
        async def lookup(q: str) -> dict:
            await asyncio.sleep(0)
            return {"q": q}

        assert await lookup("x") == {"q": "x"}

        @bot.guarded("drop", resource=unique("async-drop"))
        async def drop() -> None:
            runs.append("dropped")

        with pytest.raises(secondkey.Denied):
            await drop()
        assert runs == [1]
    with pytest.raises(TypeError):
        bot.guarded("read")(lambda: None)


def test_a_function_without_a_name_needs_a_resource(bot):
    # Its default resource, tool://<function name>, would be the same for
    # every lambda (or partial): a policy on one would cover them all.
    for fn in (lambda q: q, functools.partial(lambda q, r: q, r=1)):
        with pytest.raises(TypeError, match="guarded needs a resource .* for a function without a name"):
            bot.guarded("read")(fn)
        bot.guarded("read", resource="crm://customers")(fn)
        bot.guarded("read", action=lambda q: {"kind": "tool", "operation": "read", "resource": "x"})(fn)

    def lookup(q: str) -> str:
        return q

    bot.guarded("read")(lookup)


def test_decorator_runs_the_submitted_values_not_the_callers_live_objects(bot, rita):
    # The caller changes its argument while the request waits for a reviewer:
    # the function still runs with what was submitted and approved.
    seen = []

    @bot.guarded("write", resource=unique("live"))
    def send(msg: dict, tags: list) -> None:
        seen.append((dict(msg), list(tags)))
        msg["sent"] = True  # the function's own changes stay its own

    msg, tags = {"to": unique("alice")}, ["a"]
    to = msg["to"]

    def tamper_then_approve():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for r in rita.list_requests("pending").requests:
                if r.action.get("params", {}).get("msg", {}).get("to") == to:
                    msg["to"] = "mallory@example.com"
                    tags.append("b")
                    rita.approve(r.id)
                    return r.id
            time.sleep(0.05)
        raise AssertionError("nothing pending")

    join = in_thread(tamper_then_approve)
    send(msg, tags)
    rid = join()
    assert seen == [({"to": to}, ["a"])]
    assert bot.get_request(rid).action["params"] == {"msg": {"to": to}, "tags": ["a"]}
    assert "sent" not in msg


@pytest.mark.parametrize("value, where", [
    ({"alice", "bob"}, "argument 'to'"),
    ((x for x in "ab"), "argument 'to'"),
    ({"nested": {1: "x"}}, "argument 'to'['nested']"),
    ([b"bytes"], "argument 'to'[0]"),
])
def test_decorator_refuses_arguments_that_are_not_json(bot, value, where):
    runs = []

    @bot.guarded("read", resource=unique("notjson"))
    def send(to):
        runs.append(to)

    with pytest.raises(secondkey.JcsError) as e:
        send(value)
    assert runs == [] and where in str(e.value), str(e.value)


def test_tool_actions_refuse_inputs_that_are_not_json():
    from secondkey.integrations._common import ToolPolicy, tool_action

    with pytest.raises(secondkey.JcsError, match="the input of tool t\\['ids'\\] is a builtins.set"):
        tool_action("t", {"ids": {1, 2}}, ToolPolicy())
    args = {"ids": [1, 2]}
    action = tool_action("t", args, ToolPolicy())
    args["ids"].append(3)
    assert action["params"] == {"ids": [1, 2]}


async def test_cancelling_a_wait_withdraws_the_pending_request(gateway, rita):
    # A caller that gives up (a task cancelled, asyncio.wait_for) leaves no
    # pending request behind whose approval an identical call could use.
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        action = write_action()
        runs = []

        async def guarded() -> None:
            async with bot.guard(action, timeout=10):
                runs.append(1)

        task = asyncio.create_task(guarded())
        rid = None
        deadline = time.monotonic() + 10
        while rid is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = await bot.list_requests("pending")
            rid = next((r.id for r in pending.requests if r.action["resource"] == action["resource"]), None)
        assert rid is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runs == [] and (await bot.get_request(rid)).state == "withdrawn"


async def test_a_cancellation_repeated_at_every_await_still_withdraws(gateway):
    # anyio's cancel scopes (MCP servers, Starlette, …) cancel every await after
    # the first one: the withdraw, once started, still reaches the gateway.
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot:
        action = write_action()
        task = asyncio.create_task(bot.authorize(action, timeout=30))
        rid = None
        deadline = time.monotonic() + 10
        while rid is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = await bot.list_requests("pending", limit=500)
            rid = next((r.id for r in pending.requests if r.action["resource"] == action["resource"]), None)
        assert rid is not None
        while not task.done():
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        state = "pending"
        for _ in range(200):
            state = (await bot.get_request(rid)).state
            if state != "pending":
                break
            await asyncio.sleep(0.05)
        assert state == "withdrawn"


def test_interrupting_a_blocking_wait_withdraws_the_pending_request(gateway, bot):
    # The blocking client: an exception that is not the SDK's (here raised by
    # the transport while it waits, as KeyboardInterrupt would be) withdraws.
    class Interrupted(BaseException):
        pass

    action = write_action()
    waits = []

    def transport(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") or "wait" in request.url.params:
            waits.append(request.url.path)
            raise Interrupted()
        return real.handle_request(request)

    real = httpx.HTTPTransport()
    c = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=httpx.MockTransport(transport)))
    with pytest.raises(Interrupted):
        with c.guard(action, timeout=10):
            pass
    rid = waits[0].split("/")[3]
    assert bot.get_request(rid).state == "withdrawn"
    c.close()


def test_a_held_request_times_out_at_its_deadline_and_is_withdrawn(bot):
    action = write_action()
    t0 = time.monotonic()
    with pytest.raises(secondkey.GuardTimeout) as e:
        with bot.guard(action, timeout=3):
            pytest.fail("the guarded block ran")
    took = time.monotonic() - t0
    assert 3 <= took < 3 + 2, f"the guard gave up after {took:.1f} s"
    assert bot.get_request(e.value.request_id).state == "withdrawn"


async def test_a_held_request_times_out_at_its_deadline_and_is_withdrawn_async(gateway, bot):
    action = write_action()
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as c:
        t0 = time.monotonic()
        with pytest.raises(secondkey.GuardTimeout) as e:
            async with c.guard(action, timeout=3):
                pytest.fail("the guarded block ran")
        took = time.monotonic() - t0
    assert 3 <= took < 3 + 2, f"the guard gave up after {took:.1f} s"
    assert bot.get_request(e.value.request_id).state == "withdrawn"


class _LateAnswers(httpx.AsyncBaseTransport):
    """Forwards to the gateway; a submit's answer is read, then held back a
    moment: the gateway has acted on it when the caller gives up."""

    def __init__(self) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.answered = asyncio.Event()
        self.answers: list[dict] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.real.handle_async_request(request)
        if request.url.path == "/v1/actions":
            self.answers.append(json.loads(await resp.aread()))
            self.answered.set()
            await asyncio.sleep(0.5)
        return resp


def _states(client, resource: str) -> list[str]:
    out = []
    for state in ("pending", "withdrawn"):
        out += [r.state for r in client.list_requests(state, limit=500).requests if r.action["resource"] == resource]
    return out


@pytest.mark.parametrize("repeated", [False, True])
async def test_cancelling_during_the_first_submit_withdraws_the_request_it_opened(gateway, bot, repeated):
    # Repeated: anyio's cancel scopes cancel every await after the first; the
    # caller then stops waiting, and the withdraw still reaches the gateway.
    late = _LateAnswers()
    action = write_action()
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot"), http=httpx.AsyncClient(transport=late)) as c:
        task = asyncio.create_task(c.authorize(action, timeout=30))
        await asyncio.wait_for(late.answered.wait(), 10)
        task.cancel()
        while repeated and not task.done():
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            states = _states(bot, action["resource"])
            if states != ["pending"]:
                break
            await asyncio.sleep(0.05)
    assert late.answers[0]["decision"] == "review"
    assert states == ["withdrawn"]


async def test_cancelling_during_a_submit_answered_with_an_execution_records_it_not_run(gateway, bot):
    # An execute-mode allow hands out an execution the caller must run and
    # report; a caller gone before the answer came never runs it.
    late = _LateAnswers()
    action = {"kind": "tool", "operation": "read", "resource": unique("late-allow"), "params": {}}
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot"), http=httpx.AsyncClient(transport=late)) as c:
        task = asyncio.create_task(c.authorize(action, timeout=30))
        await asyncio.wait_for(late.answered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    execution = late.answers[0]["execution"]
    with pytest.raises(secondkey.Conflict) as e:
        bot.report_execution(execution["id"], True, {"status": "succeeded"})
    assert e.value.code == "outcome_recorded"
    if execution.get("request_id"):
        assert bot.get_request(execution["request_id"]).state == "failed"


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill (POSIX)")
def test_interrupting_the_first_submit_withdraws_the_request_it_opened(gateway, bot):
    # The blocking client: KeyboardInterrupt (here a real SIGINT to the main
    # thread) comes while the submit's answer is on its way.
    main = threading.main_thread().ident
    answers = []

    def transport(request: httpx.Request) -> httpx.Response:
        resp = real.handle_request(request)
        if request.url.path == "/v1/actions":
            answers.append(json.loads(resp.read()))
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.5)
        return resp

    real = httpx.HTTPTransport()
    action = write_action()
    c = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=httpx.MockTransport(transport)))
    # A process started in the background by a non-interactive shell (as CI
    # runs) inherits SIGINT ignored, and Python then installs no handler:
    # install the interactive one for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            c.authorize(action, timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert answers[0]["decision"] == "review"
    assert _states(bot, action["resource"]) == ["withdrawn"]
    c.close()


def test_a_blocking_wait_ends_at_its_deadline_when_long_polling(gateway):
    # The gateway's long-poll waits whole seconds; each poll's HTTP call is
    # still bounded by the time left, so the wait ends at the guard's
    # deadline (not up to a second past it). Checked on what each poll asked
    # of the transport, not on the clock.
    real = httpx.HTTPTransport()
    polls = []

    class NoEvents(httpx.BaseTransport):
        def handle_request(self, request):
            if request.url.path.endswith("/events"):
                return httpx.Response(503, json={"error": {"code": "log_unavailable", "message": "busy"}})
            if request.method == "GET" and "wait" in request.url.params:
                polls.append(request.extensions["timeout"]["read"])
            return real.handle_request(request)

    c = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=NoEvents()))
    with pytest.raises(secondkey.GuardTimeout):
        c.authorize(write_action(), timeout=0.3)
    c.close()
    assert polls, "the guard never long-polled"
    assert all(0 < t <= 0.3 for t in polls), f"a poll outlived the deadline: read timeouts {polls}"
