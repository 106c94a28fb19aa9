"""The whole REST API through the blocking client, against the real gateway."""

import time

import pytest

import secondkey
from conftest import token, unique, write_action
from secondkey import jcs


def test_allow_grant_verified_locally_and_consumed_exactly_once(bot):
    action = {"kind": "tool", "operation": "read", "resource": unique("read")}
    resp = bot.submit(action)
    assert resp.decision == "allow" and resp.grant and resp.digest == jcs.digest(action)
    claims = bot.verify_grant(resp.grant, resp.digest)
    assert claims["dig"] == resp.digest and claims["sub"] == "agent:sdk-bot"
    used = bot.consume_grant(resp.grant, resp.digest)
    assert used.consumed and used.digest == resp.digest and used.request is None
    with pytest.raises(secondkey.Conflict) as e:
        bot.consume_grant(resp.grant, resp.digest)
    assert e.value.status == 409 and e.value.code == "grant_used"


def test_review_events_list_approve_grant_and_outcome(bot, rita):
    action = write_action()
    resp = bot.submit(action)
    assert resp.decision == "review" and resp.request.state == "pending"
    rid = resp.request.id
    assert resp.request.required[0].policy == "sdk:writes-need-a-reviewer"
    events = bot.events(rid)
    first = next(events)
    assert first.id == rid and first.state == "pending" and first.action == action
    page = rita.list_requests("pending", limit=500)
    assert rid in [r.id for r in page.requests]
    view = rita.approve(rid, "fine")
    assert view.state == "approved" and view.reviews[0].reviewer == "user:rita"
    assert view.grant is None  # only the requester sees the grant
    nxt = next(events)
    assert nxt.state == "approved"
    events.close()
    mine = bot.get_request(rid)
    assert mine.grant and mine.grant_expires_at
    claims = bot.verify_grant(mine.grant, resp.digest, rid)
    assert claims["apr"] == ["user:rita"]
    assert bot.consume_grant(mine.grant, resp.digest).request == rid
    done = bot.report_outcome(rid, "succeeded", {"rows": 3})
    assert done.state == "executed"


def test_list_requests_pages_with_next_before(bot, rita):
    for _ in range(3):
        bot.submit(write_action())
    page = rita.list_requests("pending", limit=1)
    assert len(page.requests) == 1 and page.next_before
    older = rita.list_requests("pending", limit=1, before=page.next_before)
    assert older.requests[0].id != page.requests[0].id
    with pytest.raises(secondkey.BadRequest) as e:
        rita.list_requests("pending", limit=0)
    assert e.value.code == "invalid_limit"
    with pytest.raises(secondkey.BadRequest) as e:
        rita.list_requests("nonsense")
    assert e.value.code == "invalid_state"


def test_long_poll_returns_when_the_state_changes(bot, rita):
    rid = bot.submit(write_action()).request.id
    from conftest import in_thread

    join = in_thread(bot.get_request, rid, wait=30)
    time.sleep(0.2)  # let the long-poll start; it returns on the change, not after 30 s
    t0 = time.monotonic()
    rita.deny(rid, "not today")
    view = join()
    assert view.state == "denied" and time.monotonic() - t0 < 10


def test_review_refusals_have_typed_codes(bot, client_for):
    olivia, nora, rita, rex = (client_for(w) for w in ("user:olivia", "user:nora", "user:rita", "user:rex"))
    rid = bot.submit(write_action()).request.id
    with pytest.raises(secondkey.Forbidden) as e:
        olivia.approve(rid)  # owns the requesting agent
    assert e.value.code == "self_review"
    with pytest.raises(secondkey.NotFound):
        nora.approve(rid)  # not a reviewer of it: she cannot even see it
    with pytest.raises(secondkey.Forbidden) as e:
        bot.approve(rid)
    assert e.value.status == 403
    rita.approve(rid)
    with pytest.raises(secondkey.Conflict) as e:
        rex.deny(rid)
    assert e.value.code == "already_decided"
    # quorum 2: the same reviewer twice
    rid2 = bot.submit({"kind": "tool", "operation": "export", "resource": unique("export")}).request.id
    rita.approve(rid2)
    with pytest.raises(secondkey.Conflict) as e:
        rita.approve(rid2)
    assert e.value.code == "duplicate_reviewer"
    assert rex.approve(rid2).state == "approved"
    with pytest.raises(ValueError):
        rex.review(rid2, "maybe")


def test_expired_request_cannot_be_decided(bot, rita):
    rid = bot.submit({"kind": "tool", "operation": "delete", "resource": unique("delete")}).request.id
    view = bot.get_request(rid, wait=15)  # returns when it expires (2 s TTL)
    assert view.state == "expired"
    with pytest.raises(secondkey.Conflict) as e:
        rita.approve(rid)
    assert e.value.code in ("expired", "already_decided")


def test_withdraw_and_revoke(bot, rita, client_for):
    rid = bot.submit(write_action()).request.id
    assert bot.withdraw(rid).state == "withdrawn"
    with pytest.raises(secondkey.Conflict):
        bot.withdraw(rid)
    rid = bot.submit(write_action()).request.id
    rita.approve(rid)
    assert client_for("user:rex").revoke(rid).state == "revoked"
    with pytest.raises(secondkey.NotFound):  # not its request
        client_for("agent:other-bot").withdraw(bot.submit(write_action()).request.id)


def test_batch_review_of_one_session(bot, rita):
    session = unique("session")
    ids = []
    for _ in range(2):
        a = write_action()
        a["context"]["session"] = session
        ids.append(bot.submit(a).request.id)
    out = rita.review_batch(ids, "approve", "both fine")
    assert [r.id for r in out] == ids
    assert all(r.request and r.request.state == "approved" and r.error is None for r in out)
    again = rita.review_batch(ids, "deny")
    assert all(r.error and r.error.code == "already_decided" for r in again)
    with pytest.raises(secondkey.BadRequest):
        rita.review_batch([], "approve")


def test_execute_mode_results_and_lineage(bot):
    ds = unique("dataset")
    action = {"kind": "tool", "operation": "read", "resource": unique("exec"), "lineage": {"reads": [ds]}}
    resp = bot.submit(action, execute=True)
    assert resp.decision == "allow" and resp.execution and resp.grant is None
    bot.report_execution(resp.execution.id, True, {"rows": 1}, reads=[ds])
    with pytest.raises(secondkey.Conflict) as e:
        bot.report_execution(resp.execution.id, True)
    assert e.value.code == "outcome_recorded"
    lin = bot.lineage("agent:sdk-bot")
    assert any(r.dataset == ds and r.reads >= 1 and r.last_execution == resp.execution.id for r in lin)
    graph = bot.lineage_graph(agent="agent:sdk-bot")
    assert any(n["kind"] == "dataset" and ds in n["id"] for n in graph["nodes"]), graph
    assert graph["agent"] == "agent:sdk-bot"
    with pytest.raises(secondkey.BadRequest) as e:
        bot.lineage_graph("last tuesday")
    assert e.value.code == "invalid_period"
    # batch: one new, one already recorded, one unknown
    r2 = bot.submit({"kind": "tool", "operation": "read", "resource": unique("exec")}, execute=True)
    out = bot.report_executions([
        {"execution": r2.execution.id, "ok": False, "summary": {"status": "unknown"}},
        {"execution": resp.execution.id, "ok": True},
        {"execution": "act_nope", "ok": True},
    ])
    assert [o.recorded for o in out] == [True, False, False]
    assert out[1].error.code == "outcome_recorded" and out[2].error.code == "not_found"


def test_log_checkpoint_proof_tiles_keys_health_metrics(gateway, client_for, bot):
    bot.submit({"kind": "tool", "operation": "read", "resource": unique("log")})
    rita = client_for("user:rita")  # an auditor: may read entries and receipts
    cp = rita.checkpoint()
    lines = cp.splitlines()
    assert lines[0] == "sdk.test.secondkey/log" and int(lines[1]) >= 1
    size = int(lines[1])
    assert rita.verifier_key().startswith("sdk.test.secondkey/log+")
    receipt = rita.proof(0)
    assert isinstance(receipt, dict) and receipt
    with pytest.raises(secondkey.NotFound):
        rita.proof(10**9)
    if size < 256:
        assert len(rita.tile(f"0/000.p/{size}")) == 32 * size
    jwks = rita.jwks()
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert rita.health()["status"] == "ok"
    assert "secondkey_log_size" in rita.metrics()


def test_unknown_token_and_bad_action_are_typed(gateway):
    with secondkey.Client(gateway.url, "not-a-token") as c:
        with pytest.raises(secondkey.Unauthorized) as e:
            c.submit(write_action())
        assert e.value.status == 401
    with secondkey.Client(gateway.url, token("agent:sdk-bot")) as c:
        with pytest.raises(secondkey.BadRequest) as e:
            c.submit({"kind": "tool", "operation": "read", "resource": "x://y", "colour": "red"})
        assert e.value.code == "unknown_field"
        with pytest.raises(secondkey.NotFound):
            c.get_request("req_does_not_exist")


async def test_async_client_covers_the_same_api(gateway):
    async with secondkey.AsyncClient(gateway.url, token("agent:sdk-bot")) as bot, \
            secondkey.AsyncClient(gateway.url, token("user:rita")) as rita:
        resp = await bot.submit(write_action())
        rid = resp.request.id
        stream = bot.events(rid)
        assert (await stream.__anext__()).state == "pending"
        await rita.approve(rid)
        assert (await stream.__anext__()).state == "approved"
        await stream.aclose()
        view = await bot.get_request(rid)
        await bot.verify_grant(view.grant, resp.digest, rid)
        assert (await bot.consume_grant(view.grant, resp.digest)).consumed
        assert (await bot.report_outcome(rid, "failed", {"error": "boom"})).state == "failed"
        assert "secondkey_requests" in await rita.metrics()


REFUSED = (r"refusing the gateway URL http://\S+: plain HTTP .* bearer token in clear; use https://, or opt in .* "
           r"allow_insecure_http=True or SECONDKEY_ALLOW_INSECURE_HTTP=1")


@pytest.mark.parametrize("cls", [secondkey.Client, secondkey.AsyncClient])
def test_plain_http_off_loopback_is_refused_unless_opted_in(cls, monkeypatch):
    monkeypatch.delenv("SECONDKEY_ALLOW_INSECURE_HTTP", raising=False)
    for url in ["http://gw.example.com:8750", "http://10.0.0.5", "http://[2001:db8::1]:80/",
                "http://localhost.example.com", "http://127.0.0.1.nip.io", "http://user@gw.example.com"]:
        with pytest.raises(ValueError, match=REFUSED):
            cls(url, "t")
        assert cls(url, "t", allow_insecure_http=True).url.startswith("http://")
    for url in ["http://127.0.0.1:8750", "http://127.8.9.10/", "http://localhost:1", "http://LOCALHOST",
                "http://[::1]:8750", "https://gw.example.com"]:
        assert cls(url, "t").url == url.rstrip("/")
    with pytest.raises(ValueError, match="is not a URL"):
        cls("http://gw:not-a-port", "t")
    with pytest.raises(ValueError, match="is not a URL") as bad:
        cls("http://user:s3cret@gw:not-a-port", "t")
    assert "s3cret" not in str(bad.value), bad.value
    # The refusal names the host with its port, and never the user part.
    with pytest.raises(ValueError, match=r"refusing the gateway URL http://10\.1\.2\.3:8750: "):
        cls("http://10.1.2.3:8750", "t")
    with pytest.raises(ValueError) as refused:
        cls("http://user:s3cret@gw.example.com:81", "t")
    assert "http://gw.example.com:81:" in str(refused.value) and "s3cret" not in str(refused.value)
    monkeypatch.setenv("SECONDKEY_URL", "http://gw.example.com")
    with pytest.raises(ValueError, match=REFUSED):
        cls(token="t")
    monkeypatch.setenv("SECONDKEY_ALLOW_INSECURE_HTTP", "1")
    assert cls(token="t").url == "http://gw.example.com"
