"""Bad input: a gateway that is down, slow, answers garbage or lies.

Each case gives a typed error and the guarded function never runs. The
liars are in-process transports in front of the real gateway that change
its answers (a different digest, a tampered or foreign grant).
"""

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import secondkey
from conftest import free_port, token, unique, write_action

READ = {"kind": "tool", "operation": "read", "resource": "crm://hostile/x"}


def guarded_call(client, action=READ, **kw):
    runs = []
    with pytest.raises(secondkey.SecondkeyError) as e:
        with client.guard(action, **kw):
            runs.append(1)
    assert runs == [], "the guarded block ran"
    return e.value


def test_gateway_down():
    c = secondkey.Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2)
    err = guarded_call(c)
    assert isinstance(err, secondkey.TransportError) and "cannot reach" in str(err)


def test_gateway_slow():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # accepts connections, never answers
    c = secondkey.Client(f"http://127.0.0.1:{srv.getsockname()[1]}", "t", timeout=0.5)
    t0 = time.monotonic()
    err = guarded_call(c)
    assert isinstance(err, secondkey.GatewayTimeout) and time.monotonic() - t0 < 5
    srv.close()


class Canned(BaseHTTPRequestHandler):
    answers: list = []

    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        status, ctype, body, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.send_response(status)
        self.send_header("content-type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *a):
        pass


@pytest.fixture
def canned():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def serve(*answers):
        Canned.answers = [(s, c, b if isinstance(b, bytes) else b.encode(), h) for s, c, b, h in answers]
        return secondkey.Client(f"http://127.0.0.1:{srv.server_address[1]}", "t", timeout=2)

    yield serve
    srv.shutdown()


ALLOW = {"id": "act_1", "digest": secondkey.digest(READ), "decision": "allow", "reasons": [],
         "execution": {"id": "act_1", "approvers": []}}


@pytest.mark.parametrize(
    "status,ctype,body,error",
    [
        (200, "text/html", "<html>hello</html>", secondkey.ProtocolError),
        (200, "application/json", "{\"id\": 1}", secondkey.ProtocolError),
        (200, "application/json", json.dumps({**ALLOW, "decision": "maybe"}), secondkey.ProtocolError),
        (200, "application/json", json.dumps({**ALLOW, "execution": None}), secondkey.ProtocolError),
        (200, "application/json", json.dumps({**ALLOW, "reasons": "none"}), secondkey.ProtocolError),
        (200, "application/json", "[1, 2", secondkey.ProtocolError),
        (502, "text/html", "<h1>Bad Gateway</h1>", secondkey.ServerError),
        (500, "application/json", '{"error": {"code": "internal", "message": "boom"}}', secondkey.ServerError),
        (503, "application/json", '{"error": {"code": "log_unavailable", "message": "disk"}}', secondkey.Unavailable),
        (404, "text/plain", "nope", secondkey.NotFound),
        (204, "application/json", "", secondkey.ProtocolError),
    ],
)
def test_garbage_answers_are_typed_errors(canned, status, ctype, body, error):
    err = guarded_call(canned((status, ctype, body, {})))
    assert isinstance(err, error), repr(err)


def test_digest_mismatch_from_a_lying_gateway_is_refused(canned):
    err = guarded_call(canned((200, "application/json", json.dumps({**ALLOW, "digest": "0" * 64}), {})))
    assert isinstance(err, secondkey.DigestMismatch)


def test_rate_limited_is_typed_and_the_guard_waits_retry_after(canned):
    limited = (429, "application/json", '{"error": {"code": "too_many_pending", "message": "slow down"}}',
               {"Retry-After": "1"})
    c = canned(limited, (200, "application/json", json.dumps(ALLOW), {}), (204, "application/json", "", {}))
    t0 = time.monotonic()
    with c.guard(READ, timeout=10) as auth:
        pass
    assert auth.execution_id == "act_1" and time.monotonic() - t0 >= 0.9
    c = canned(limited)
    with pytest.raises(secondkey.RateLimited) as e:
        c.submit(READ)
    assert e.value.retry_after == 1.0 and e.value.code == "too_many_pending" and e.value.status == 429
    # a guard whose deadline comes before Retry-After gives up at once
    err = guarded_call(canned(limited), timeout=0.5)
    assert isinstance(err, secondkey.RateLimited)


class Rewriting(httpx.BaseTransport):
    """Forwards to the real gateway; rewrites the answers to POST /v1/actions."""

    def __init__(self, rewrite):
        self.real = httpx.HTTPTransport()
        self.rewrite = rewrite

    def handle_request(self, request):
        resp = self.real.handle_request(request)
        if request.url.path == "/v1/actions" and resp.status_code == 200:
            resp.read()
            body = self.rewrite(json.loads(resp.content))
            return httpx.Response(200, json=body)
        return resp


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def tamper_claims(resp):
    h, p, s = resp["grant"].split(".")
    claims = json.loads(unb64(p))
    claims["exp"] += 3600  # a longer life: the signature no longer covers it
    resp["grant"] = f"{h}.{b64(json.dumps(claims).encode())}.{s}"
    return resp


def foreign_key(resp):
    h, p, _ = resp["grant"].split(".")
    sig = Ed25519PrivateKey.generate().sign(f"{h}.{p}".encode())
    resp["grant"] = f"{h}.{p}.{b64(sig)}"
    return resp


def alg_none(resp):
    _, p, _ = resp["grant"].split(".")
    resp["grant"] = f"{b64(json.dumps({'alg': 'none', 'kid': 'x'}).encode())}.{p}."
    return resp


def other_digest(resp):
    resp["digest"] = "f" * 64
    return resp


@pytest.mark.parametrize("rewrite,error", [
    (tamper_claims, secondkey.GrantInvalid),
    (foreign_key, secondkey.GrantInvalid),
    (alg_none, secondkey.GrantInvalid),
    (other_digest, secondkey.DigestMismatch),
])
def test_tampered_grant_or_digest_is_refused_locally_and_never_consumed(gateway, rewrite, error):
    consumed = []
    inner = Rewriting(rewrite)

    class Watch(httpx.BaseTransport):
        def handle_request(self, request):
            if request.url.path == "/v1/grants/consume":
                consumed.append(1)
            return inner.handle_request(request)

    c = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=Watch()))
    err = guarded_call(c, {"kind": "tool", "operation": "read", "resource": unique("tamper")}, mode="grant")
    assert isinstance(err, error), repr(err)
    assert consumed == [], "a refused grant was sent to be consumed"


def test_a_grant_for_another_action_is_refused(gateway, bot):
    other = bot.submit({"kind": "tool", "operation": "read", "resource": unique("other")})

    def swap(resp):
        resp["grant"] = other.grant  # genuine, but bound to another digest
        return resp

    c = secondkey.Client(gateway.url, token("agent:sdk-bot"), http=httpx.Client(transport=Rewriting(swap)))
    err = guarded_call(c, {"kind": "tool", "operation": "read", "resource": unique("mine")}, mode="grant")
    assert isinstance(err, secondkey.GrantInvalid) and "digest" in str(err)


def test_unserializable_action_is_refused_before_sending(bot):
    err = guarded_call(bot, {"kind": "tool", "operation": "read", "resource": "x://y", "params": {"n": float("nan")}})
    assert isinstance(err, secondkey.jcs.JcsError) and isinstance(err, ValueError)


def test_concurrent_guards_of_one_action_run_it_once_per_approval(gateway, rita):
    """Two agents' threads guard the identical write; one approval runs it once."""
    action = write_action()
    runs, errors = [], []

    def agent():
        with secondkey.Client(gateway.url, token("agent:sdk-bot")) as c:
            try:
                with c.guard(action, timeout=4):
                    runs.append(1)
            except secondkey.SecondkeyError as e:
                errors.append(e)

    threads = [threading.Thread(target=agent) for _ in range(2)]
    for t in threads:
        t.start()
    from conftest import approve_when_pending

    approve_when_pending(rita, action["resource"])
    for t in threads:
        t.join(30)
    assert runs == [1], (runs, errors)
    assert len(errors) == 1 and isinstance(errors[0], (secondkey.GuardTimeout, secondkey.RequestEnded))


def test_oversized_action_is_a_typed_refusal_and_never_runs(bot):
    err = guarded_call(bot, {"kind": "tool", "operation": "read", "resource": unique("big"),
                             "params": {"blob": "x" * (2 * 1024 * 1024)}})
    assert isinstance(err, secondkey.PayloadTooLarge) and err.code == "too_large"


def test_oversized_answer_is_refused(canned):
    from secondkey._http import MAX_ANSWER_BYTES

    huge = '{"pad": "' + "x" * (MAX_ANSWER_BYTES + 10) + '"}'
    err = guarded_call(canned((200, "application/json", huge, {})))
    assert isinstance(err, secondkey.ProtocolError) and "larger than" in str(err)


WRITE = {"kind": "tool", "operation": "write", "resource": "crm://hostile/w"}


class NeverWithdraws(BaseHTTPRequestHandler):
    """A gateway stand-in: it opens a review, keeps the event stream open and
    silent, and never answers a withdraw."""

    protocol_version = "HTTP/1.1"
    seen: list = []
    release = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(f"POST {self.path.split('?')[0]}")
        if not self.path.startswith("/v1/actions"):
            self.release.wait(60)  # the withdraw: never answered
            return
        body = json.dumps({
            "id": "req_1", "digest": secondkey.digest(WRITE), "decision": "review", "reasons": [],
            "request": {"id": "req_1", "state": "pending", "url": "http://127.0.0.1/requests/req_1",
                        "expires_at": "2099-01-01T00:00:00Z", "required": []},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.seen.append(f"GET {self.path}")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()
        self.release.wait(60)

    def log_message(self, *a):
        pass


@pytest.fixture
def never_withdraws():
    NeverWithdraws.seen = []
    NeverWithdraws.release = threading.Event()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), NeverWithdraws)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    NeverWithdraws.release.set()
    srv.shutdown()
    srv.server_close()


async def test_a_cancel_returns_within_the_withdraw_bound_when_the_gateway_never_answers(never_withdraws):
    import asyncio

    from secondkey.guard import WITHDRAW_TIMEOUT

    async with secondkey.AsyncClient(never_withdraws, "t") as c:  # each call may take the default 30 s
        task = asyncio.create_task(c.authorize(WRITE, timeout=120))
        while "GET /v1/requests/req_1/events" not in NeverWithdraws.seen:
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # the caller's cancellation, not the withdraw's timeout
            await task
        took = time.monotonic() - t0
    assert "POST /v1/requests/req_1/withdraw" in NeverWithdraws.seen
    assert took < WITHDRAW_TIMEOUT + 3, f"the cancel took {took:.1f} s"


def test_an_interrupt_returns_within_the_withdraw_bound_when_the_gateway_never_answers(never_withdraws):
    from secondkey.guard import WITHDRAW_TIMEOUT

    class Interrupted(BaseException):
        pass

    real = httpx.HTTPTransport()

    def transport(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise Interrupted()  # as KeyboardInterrupt would, while the guard waits
        return real.handle_request(request)

    c = secondkey.Client(never_withdraws, "t", http=httpx.Client(transport=httpx.MockTransport(transport)))
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        c.authorize(WRITE, timeout=120)
    took = time.monotonic() - t0
    c.close()
    assert "POST /v1/requests/req_1/withdraw" in NeverWithdraws.seen
    assert took < WITHDRAW_TIMEOUT + 3, f"the interrupt took {took:.1f} s"


class KeepsAlive(BaseHTTPRequestHandler):
    """A gateway stand-in: it opens a review and keeps the event stream open,
    sending the pending state once, then only a keep-alive comment every
    second (for 10 s at most, so a wait that ignores its deadline still ends);
    it answers a withdraw."""

    protocol_version = "HTTP/1.1"
    seen: list = []

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(f"POST {self.path.split('?')[0]}")
        if not self.path.startswith("/v1/actions"):
            self._answer(404, {"error": "not_found", "message": "withdrawn meanwhile"})
            return
        self._answer(200, {
            "id": "req_1", "digest": secondkey.digest(WRITE), "decision": "review", "reasons": [],
            "request": {"id": "req_1", "state": "pending", "url": "http://127.0.0.1/requests/req_1",
                        "expires_at": "2099-01-01T00:00:00Z", "required": []},
        })

    def do_GET(self):
        self.seen.append(f"GET {self.path}")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            self.wfile.write(b"event: state\ndata: " + json.dumps(PENDING).encode() + b"\n\n")
            self.wfile.flush()
            for _ in range(10):
                time.sleep(1)
                self.wfile.write(b":\n\n")
                self.wfile.flush()
        except OSError:
            pass  # the client went away
        self.close_connection = True

    def log_message(self, *a):
        pass


PENDING = {
    "id": "req_1", "state": "pending", "url": "http://127.0.0.1/requests/req_1", "action": WRITE,
    "digest": secondkey.digest(WRITE),
    "requester": "agent:sdk-bot", "created_at": "2026-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
    "required": [], "reviews": [],
}


@pytest.fixture
def keeps_alive():
    KeepsAlive.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), KeepsAlive)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_the_timeout_holds_while_keep_alives_keep_the_stream_open(keeps_alive):
    c = secondkey.Client(keeps_alive, "t")
    t0 = time.monotonic()
    err = guarded_call(c, WRITE, timeout=3)
    took = time.monotonic() - t0
    c.close()
    assert isinstance(err, secondkey.GuardTimeout) and err.request_id == "req_1"
    assert took < 3 + 2, f"the guard gave up after {took:.1f} s"
    assert "POST /v1/requests/req_1/withdraw" in KeepsAlive.seen


async def test_the_async_timeout_holds_while_keep_alives_keep_the_stream_open(keeps_alive):
    async with secondkey.AsyncClient(keeps_alive, "t") as c:
        t0 = time.monotonic()
        with pytest.raises(secondkey.GuardTimeout) as e:
            async with c.guard(WRITE, timeout=3):
                pytest.fail("the guarded block ran")
        took = time.monotonic() - t0
    assert e.value.request_id == "req_1"
    assert took < 3 + 2, f"the guard gave up after {took:.1f} s"
    assert "POST /v1/requests/req_1/withdraw" in KeepsAlive.seen
