"""One real gateway per test session: the `secondkey` binary cargo built.

SECONDKEY_BIN names it (scripts/test sets it); by default the workspace's
target/debug/secondkey. The config and policies are sdk/testdata's, shared
with the TypeScript suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
TESTDATA = ROOT / "sdk" / "testdata"
BIN = os.environ.get("SECONDKEY_BIN") or str(ROOT / "target" / "debug" / "secondkey")

TOKENS = {
    "agent:sdk-bot": "SK_TEST_TOKEN_BOT",
    "agent:other-bot": "SK_TEST_TOKEN_OTHER",
    "user:olivia": "SK_TEST_TOKEN_OLIVIA",
    "user:rita": "SK_TEST_TOKEN_RITA",
    "user:rex": "SK_TEST_TOKEN_REX",
    "user:nora": "SK_TEST_TOKEN_NORA",
    "service:runner": "SK_TEST_TOKEN_RUNNER",
}


def token(who: str) -> str:
    return "sdk-test-" + who.replace(":", "-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, url: str, proc: subprocess.Popen, data: Path):
        self.url, self.proc, self.data = url, proc, data

    def env(self) -> dict[str, str]:
        """Environment for a subprocess acting as the agent (the examples)."""
        env = dict(os.environ)
        env.update({"SECONDKEY_URL": self.url, "SECONDKEY_TOKEN": token("agent:sdk-bot")})
        return env


def start_gateway(tmp: Path) -> Gateway:
    if not os.path.exists(BIN):
        pytest.exit(f"no gateway binary at {BIN}: run `cargo build -p secondkey` or set SECONDKEY_BIN", 2)
    # A port asked of the kernel and released can be taken again before the
    # gateway binds it; then it exits saying so, and starts on another.
    for attempt in range(1, 4):
        try:
            return _start_on(tmp, free_port())
        except RuntimeError:
            if attempt == 3 or "in use" not in (tmp / "gateway.log").read_text().lower():
                raise
            shutil.rmtree(tmp / "data", ignore_errors=True)
    raise AssertionError("unreachable")


def _start_on(tmp: Path, port: int) -> Gateway:
    env = dict(os.environ)
    env.update({k: token(who) for who, k in TOKENS.items()})
    env.update({
        "SECONDKEY_LISTEN": f"127.0.0.1:{port}",
        "SECONDKEY_DATA_DIR": str(tmp / "data"),
        "SECONDKEY_POLICY_DIR": str(TESTDATA / "policies"),
    })
    log = open(tmp / "gateway.log", "wb")
    proc = subprocess.Popen([BIN, "serve", "--config", str(TESTDATA / "gateway.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {(tmp / 'gateway.log').read_text()}")
        # Healthy, and answered by this process: it says where it listens
        # once it has bound the port (another test's gateway could hold
        # the port if this one could not bind it).
        try:
            ours = f"listening on {url}\n" in (tmp / "gateway.log").read_text()
            if httpx.get(url + "/healthz", timeout=1).status_code == 200 and ours:
                return Gateway(url, proc, tmp)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the gateway did not become healthy")


@pytest.fixture(scope="session")
def gateway() -> Iterator[Gateway]:
    tmp = Path(tempfile.mkdtemp(prefix="sk-pysdk-"))
    g = start_gateway(tmp)
    yield g
    g.proc.terminate()
    try:
        g.proc.wait(10)
    except subprocess.TimeoutExpired:
        g.proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def client_for(gateway: Gateway):
    """A blocking client acting as ``who``."""
    import secondkey

    made = []

    def make(who: str = "agent:sdk-bot", **kw):
        c = secondkey.Client(gateway.url, token(who), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def bot(client_for):
    return client_for("agent:sdk-bot")


@pytest.fixture
def rita(client_for):
    return client_for("user:rita")


_n = [0]


def unique(prefix: str = "r") -> str:
    """A fresh resource per test, so identical actions never meet across tests."""
    _n[0] += 1
    return f"crm://test/{prefix}-{os.getpid()}-{_n[0]}-{time.monotonic_ns()}"


def write_action(resource: str | None = None, **params) -> dict:
    return {"kind": "tool", "operation": "write", "resource": resource or unique("write"),
            "params": params or {"to": "customer@example.com"}, "context": {"environment": "test"}}


def approve_when_pending(client, resource: str, decision: str = "approve", comment: str = "ok by test",
                         timeout: float = 20.0) -> str:
    """As a reviewer: wait until a request for ``resource`` is pending, decide it; its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in client.list_requests("pending").requests:
            if r.action.get("resource") == resource:
                client.review(r.id, decision, comment)
                return r.id
        time.sleep(0.05)
    raise AssertionError(f"no pending request for {resource}")


def in_thread(fn, *args, **kw):
    """Runs fn in a thread; returns a function that joins it and returns or raises its outcome."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout: float = 30.0):
        t.join(timeout)
        assert not t.is_alive(), "the reviewer thread did not finish"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return join
