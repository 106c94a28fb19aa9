"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both cover the whole REST API and offer the guard (``guard``, ``guarded``).
A gateway that is down, slow or answers garbage raises a typed error
(:mod:`secondkey.errors`); a guard then never runs its function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
import weakref
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, Generator, Iterator, Optional, TypeVar

import httpx

from . import _build as b
from . import models as m
from ._http import MAX_POLL_SECONDS, LineSplitter, Settings, SseParser, check_size, read_answer, state_event, transport_error
from ._ops import Call
from .errors import ApiError, GatewayTimeout, NotFound, ProtocolError, SecondkeyError, TransportError, Unauthorized
from .grants import verify_grant
from .guard import WITHDRAW_TIMEOUT, Authorization, Jwks, Sleep, Wait, abandoned_calls, flow, record_call, result_summary

__all__ = ["Client", "AsyncClient", "Guard", "AsyncGuard"]

log = logging.getLogger("secondkey")
F = TypeVar("F", bound=Callable[..., Any])

#: How long a guard waits for a decision unless told otherwise (seconds).
DEFAULT_GUARD_TIMEOUT = 300.0
#: How far (seconds) one read of the event stream may outlast a wait's
#: deadline before the blocking client opens the stream again with a shorter
#: read timeout (the gateway's keep-alives would otherwise extend the wait).
_DEADLINE_SLACK = 0.5


def _fallback_to_poll(e: SecondkeyError) -> bool:
    """An event stream that fails this way is replaced by long-polling."""
    if isinstance(e, (Unauthorized, NotFound)):
        return False
    return isinstance(e, (TransportError, ProtocolError)) or (isinstance(e, ApiError) and e.status in (429, 500, 502, 503, 504))


class _Base:
    """What both clients share: settings, the JWKS cache, request building."""

    _http: Any

    def __init__(self, url: Optional[str], token: Optional[str], timeout: float, allow_insecure_http: bool):
        self._s = Settings(url, token, timeout, allow_insecure_http)
        self._jwks: Optional[dict[str, Any]] = None

    @property
    def url(self) -> str:
        return self._s.url

    def _request_args(self, call: Call, timeout: Optional[float]) -> dict[str, Any]:
        t = timeout or self._s.timeout
        if call.timeout is not None:
            t = min(t, call.timeout)
        return {
            "method": call.spec.method, "url": self._s.url + call.url_path(), "params": call.params(),
            "content": call.body, "headers": self._s.headers(call), "timeout": t,
        }

    def _stream_args(self, id: str, read_timeout: float) -> tuple[Call, dict[str, Any]]:
        call = Call("request_events", {"id": id})
        h = self._s.headers(call)
        h["Accept"] = "text/event-stream"
        return call, {"method": "GET", "url": self._s.url + call.url_path(), "headers": h,
                      "timeout": httpx.Timeout(self._s.timeout, read=read_timeout)}

    @staticmethod
    def _record_call(auth: Authorization, ok: bool, summary: Any, reads: Optional[list[str]],
                     writes: Optional[list[str]]) -> Optional[Call]:
        if auth.recorded:
            return None
        auth.recorded = True
        return record_call(auth, ok, summary, reads or [], writes or [])

    @staticmethod
    def _advance(gen: Generator[Any, Any, Authorization], value: Any, exc: Optional[BaseException]) -> tuple[bool, Any]:
        """One step of the guard: (True, authorization) when done, else (False, the next effect)."""
        try:
            return False, (gen.throw(exc) if exc is not None else gen.send(value))
        except StopIteration as stop:
            return True, stop.value


class Client(_Base):
    """Blocking client. ``url`` and ``token`` default to ``SECONDKEY_URL`` and ``SECONDKEY_TOKEN``.

    ``timeout`` bounds each HTTP call (seconds); waits for a decision are
    bounded by the guard's own ``timeout``. A plain ``http://`` URL is
    refused (``ValueError``) unless its host is loopback, since the token
    would cross the network in clear; ``allow_insecure_http=True`` (or
    ``SECONDKEY_ALLOW_INSECURE_HTTP=1``) accepts it anyway.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        http: Optional[httpx.Client] = None,
        allow_insecure_http: bool = False,
    ):
        super().__init__(url, token, timeout, allow_insecure_http)  # refuses a bad URL before opening anything
        self._http = http or httpx.Client(timeout=timeout)
        self._twins: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient]" = weakref.WeakKeyDictionary()
        self._twins_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _async_twin(self) -> "AsyncClient":
        """An :class:`AsyncClient` to the same gateway with the same token and
        timeout, for an integration given only this blocking client and called
        from asyncio (a LangChain ``ainvoke``): one per event loop, kept while
        that loop lives (an httpx connection pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        with self._twins_lock:
            twin = self._twins.get(loop)
            if twin is None:
                # The URL was checked when this client was made.
                twin = AsyncClient(self._s.url, self._s.token, timeout=self._s.timeout, allow_insecure_http=True)
                self._twins[loop] = twin
            return twin

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport ---------------------------------------------------------
    def _send(self, call: Call, timeout: Optional[float] = None) -> Any:
        try:
            with self._http.stream(**self._request_args(call, timeout)) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    check_size(body)
        except httpx.HTTPError as e:
            raise transport_error(e, self._s.url) from None
        return read_answer(call, r.status_code, r.headers, bytes(body))

    # -- the API -----------------------------------------------------------
    def submit(self, action: dict[str, Any], *, execute: bool = False) -> m.ActionResponse:
        """``POST /v1/actions``: a decision (``allow``/``deny``/``review``)."""
        return self._send(b.submit(action, execute))

    def get_request(self, id: str, *, wait: Optional[int] = None) -> m.RequestView:
        """``GET /v1/requests/{id}``; ``wait`` long-polls up to that many seconds."""
        t = None if wait is None else self._s.timeout + wait
        return self._send(b.get_request(id, wait), timeout=t)

    def list_requests(self, state: Optional[str] = None, *, limit: Optional[int] = None, before: Optional[str] = None) -> m.RequestPage:
        return self._send(b.list_requests(state, limit, before))

    def events(self, id: str, *, read_timeout: float = 30.0) -> Iterator[m.RequestView]:
        """``GET /v1/requests/{id}/events``: the request now, then on each change, until final."""
        for view in self._stream(id, read_timeout):
            if view is not None:
                yield view

    def _stream(self, id: str, read_timeout: float) -> Generator[Optional[m.RequestView], None, None]:
        """The event stream: each state event, and ``None`` after every chunk
        read (the gateway's keep-alives too), so that a wait sees time pass."""
        call, args = self._stream_args(id, read_timeout)
        try:
            with self._http.stream(**args) as r:
                if r.status_code != 200:
                    r.read()
                    read_answer(call, r.status_code, r.headers, r.content)
                    raise ProtocolError(f"the event stream answered {r.status_code}")
                parser, lines = SseParser(), LineSplitter()
                for chunk in r.iter_text():
                    for line in lines.feed(chunk):
                        ev = parser.feed(line)
                        if ev and ev[0] == "state":
                            yield state_event(ev[1])
                    yield None
        except httpx.HTTPError as e:
            raise transport_error(e, self._s.url) from None

    def review(self, id: str, decision: str, comment: Optional[str] = None) -> m.RequestView:
        return self._send(b.review(id, decision, comment))

    def approve(self, id: str, comment: Optional[str] = None) -> m.RequestView:
        return self.review(id, "approve", comment)

    def deny(self, id: str, comment: Optional[str] = None) -> m.RequestView:
        return self.review(id, "deny", comment)

    def review_batch(self, ids: list[str], decision: str, comment: Optional[str] = None) -> list[m.BatchReviewResult]:
        return self._send(b.review_batch(ids, decision, comment))

    def withdraw(self, id: str) -> m.RequestView:
        return self._send(Call("withdraw_request", {"id": id}))

    def revoke(self, id: str) -> m.RequestView:
        return self._send(Call("revoke_request", {"id": id}))

    def report_outcome(self, id: str, outcome: str, detail: Any = None) -> m.RequestView:
        """``POST /v1/requests/{id}/result``: ``succeeded``, ``failed`` or ``unknown``."""
        return self._send(b.request_result(id, outcome, detail))

    def consume_grant(self, grant: str, digest: str) -> m.Consumed:
        return self._send(b.consume(grant, digest))

    def report_execution(self, id: str, ok: bool, summary: Any = None, *, reads: Optional[list[str]] = None,
                         writes: Optional[list[str]] = None) -> None:
        return self._send(b.execution_result(id, ok, summary, reads, writes))

    def report_executions(self, results: list[dict[str, Any]]) -> list[m.BatchResultOutcome]:
        return self._send(b.execution_results(results))

    def lineage(self, principal: str) -> list[m.LineageRecord]:
        return self._send(Call("lineage", query={"principal": principal}))

    def lineage_graph(
        self,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        *,
        agent: Optional[str] = None,
        dataset: Optional[str] = None,
        environment: Optional[str] = None,
    ) -> dict[str, Any]:
        """The lineage graph of a period (default: the last 24 hours), as the
        gateway's JSON: ``nodes``, ``edges``, ``actions``, ``truncated``."""
        q = {"from": from_, "to": to, "agent": agent, "dataset": dataset, "environment": environment}
        return self._send(Call("lineage_graph", query=q))

    def jwks(self) -> dict[str, Any]:
        return self._send(Call("jwks"))

    def checkpoint(self) -> str:
        return self._send(Call("log_checkpoint"))

    def proof(self, index: int) -> dict[str, Any]:
        return self._send(Call("log_proof", {"index": str(index)}))

    def tile(self, path: str) -> bytes:
        return self._send(Call("log_tile", {"path": path}))

    def verifier_key(self) -> str:
        return self._send(Call("log_verifier_key"))

    def health(self) -> dict[str, Any]:
        return self._send(Call("healthz"))

    def metrics(self) -> str:
        return self._send(Call("metrics"))

    def verify_grant(self, grant: str, digest: str, request_id: Optional[str] = None) -> dict[str, Any]:
        """Verifies a grant locally against the gateway's JWKS (fetched once, refetched for a new key)."""
        return verify_grant(grant, self._keys(False), digest=digest, request_id=request_id)

    # -- the guard ---------------------------------------------------------
    def authorize(self, action: dict[str, Any], *, mode: str = "execute",
                  timeout: float = DEFAULT_GUARD_TIMEOUT) -> Authorization:
        """Submits, waits (SSE, else long-poll) and returns leave to run once; raises a GuardError otherwise.

        Report how the run went with :meth:`record` (``guard`` does it for you).
        """
        return self._drive(flow(action, mode=mode, timeout=timeout))

    def guard(self, action: dict[str, Any], *, mode: str = "execute", timeout: float = DEFAULT_GUARD_TIMEOUT) -> "Guard":
        """``with client.guard(action) as auth:`` runs the block only once authorized."""
        return Guard(self, action, mode, timeout)

    def guarded(self, operation: str, *, kind: str = "tool", resource: Optional[str] = None,
                action: Optional[Callable[..., dict[str, Any]]] = None, justification: Optional[str] = None,
                context: Optional[dict[str, Any]] = None, mode: str = "execute",
                timeout: float = DEFAULT_GUARD_TIMEOUT) -> Callable[[F], F]:
        """Decorator: each call becomes an action (its arguments are ``params``) and runs only once authorized."""

        def deco(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):
                raise TypeError("guard a coroutine function with AsyncClient.guarded")
            build = b.action_builder(fn, operation=operation, kind=kind, resource=resource, action=action,
                                     justification=justification, context=context)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                act, call = build(args, kwargs)
                if call is not None:
                    args, kwargs = call  # the submitted values, not the caller's live objects
                with self.guard(act, mode=mode, timeout=timeout) as auth:
                    out = fn(*args, **kwargs)
                    auth.result = out
                    return out

            return wrapper  # type: ignore[return-value]

        return deco

    def record(self, auth: Authorization, ok: bool, summary: Any = None, *, reads: Optional[list[str]] = None,
               writes: Optional[list[str]] = None) -> None:
        """Records how an authorized run went (once)."""
        call = self._record_call(auth, ok, summary, reads, writes)
        if call is not None:
            self._send(call)

    def _keys(self, refresh: bool) -> dict[str, Any]:
        if self._jwks is None or refresh:
            self._jwks = self.jwks()
        return self._jwks

    def _wait(self, w: Wait) -> Optional[m.RequestView]:
        try:
            while time.monotonic() < w.deadline:
                # Each read waits at most the time left when the stream opened;
                # the deadline is checked again after every read (a keep-alive
                # too), and once a read could outlast the deadline by more
                # than _DEADLINE_SLACK the stream is opened again with the
                # shorter bound, so the wait ends at its deadline even while
                # keep-alives keep coming.
                read = max(0.05, min(20.0, w.deadline - time.monotonic()))
                stream = self._stream(w.id, read_timeout=read)
                try:
                    for view in stream:
                        if view is not None and view.state != w.state:
                            return view
                        left = w.deadline - time.monotonic()
                        if left <= 0:
                            return None
                        if read - left > _DEADLINE_SLACK:
                            break
                finally:
                    stream.close()
        except GatewayTimeout:
            if time.monotonic() >= w.deadline:
                return None
        except SecondkeyError as e:
            if not _fallback_to_poll(e):
                raise
            log.info("secondkey: the event stream failed (%s); long-polling instead", e)
        while True:
            left = w.deadline - time.monotonic()
            if left <= 0:
                return None
            # The gateway waits whole seconds (at least one): the HTTP call is
            # bounded by the time left, so the wait ends at its deadline.
            wait = max(1, min(MAX_POLL_SECONDS, math.ceil(left)))
            try:
                view = self._send(b.get_request(w.id, wait), timeout=min(left, self._s.timeout + wait))
            except GatewayTimeout:
                continue  # the deadline has come (the loop returns), or nearly: ask again for the rest
            if view.state != w.state:
                return view

    def _submit(self, call: Call) -> Any:
        """The guard's submit, sent from a thread of its own, so that an
        interruption of the caller (``KeyboardInterrupt``) does not cut the
        exchange short: the answer gets :data:`WITHDRAW_TIMEOUT` more, and what
        it opened is closed (``abandoned_calls``) before the interruption is
        raised."""
        sub = _Submitting(self, call)
        try:
            return sub.result()
        except BaseException as e:
            if not sub.failed_with(e):
                sub.abandon()
            raise

    def _drive(self, gen: Generator[Any, Any, Authorization]) -> Authorization:
        value: Any = None
        exc: Optional[BaseException] = None
        while True:
            done, eff = self._advance(gen, value, exc)
            if done:
                return eff
            value, exc = None, None
            try:
                if isinstance(eff, Call) and eff.op == "submit_action":
                    value = self._submit(eff)
                elif isinstance(eff, Call):
                    value = self._send(eff)
                elif isinstance(eff, Wait):
                    value = self._wait(eff)
                elif isinstance(eff, Sleep):
                    time.sleep(eff.seconds)
                elif isinstance(eff, Jwks):
                    value = self._keys(eff.refresh)
            except BaseException as e:  # cancellation too: flow withdraws a pending request
                exc = e


class _Submitting:
    """A submit on its way in a thread of its own: the caller may stop
    waiting for it (``KeyboardInterrupt``) without cutting it short, and
    what its answer opened is then closed by whichever thread holds it."""

    def __init__(self, client: Client, call: Call):
        self._c, self._call = client, call
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._closed = threading.Event()
        self._abandoned = False
        self._value: Any = None
        self._error: Optional[BaseException] = None
        threading.Thread(target=self._run, name="secondkey-submit", daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._c._send(self._call)
        except BaseException as e:  # handed to the caller, or dropped with it
            self._error = e
        with self._lock:
            self._answered.set()
            abandoned = self._abandoned
        if abandoned:
            self._close()

    def _close(self) -> None:
        try:
            for call in abandoned_calls(self._value):
                try:
                    self._c._send(call)
                except SecondkeyError:
                    pass  # approved or ended meanwhile, or the gateway is gone: nothing ran either way
        finally:
            self._closed.set()

    def result(self) -> Any:
        self._answered.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def failed_with(self, e: BaseException) -> bool:
        """Whether ``e`` is the submit's own failure (not the caller giving up)."""
        return self._answered.is_set() and e is self._error

    def abandon(self) -> None:
        """The caller gave up: the answer gets WITHDRAW_TIMEOUT more, then what
        it opened is closed, waiting at most WITHDRAW_TIMEOUT for that too. An
        answer that comes later is closed by the submit's thread, unwaited."""
        with self._lock:
            self._abandoned = True
            answered = self._answered.is_set()
        if answered:
            threading.Thread(target=self._close, name="secondkey-close", daemon=True).start()
        elif not self._answered.wait(WITHDRAW_TIMEOUT):
            return
        self._closed.wait(WITHDRAW_TIMEOUT)


def _exit_summary(auth: Authorization, error: Optional[BaseException]) -> tuple[bool, Any]:
    if error is not None:
        return False, result_summary(error=error)
    return True, result_summary(auth.result)


class Guard:
    """``with client.guard(action) as auth:`` — the block runs once, only when authorized.

    Leaving the block records the result (``ok`` unless it raised) as the
    execution's result, unless ``client.record(auth, …)`` did already.
    """

    def __init__(self, client: Client, action: dict[str, Any], mode: str, timeout: float):
        self._c, self._action, self._mode, self._timeout = client, action, mode, timeout
        self.auth: Optional[Authorization] = None

    def __enter__(self) -> Authorization:
        self.auth = self._c.authorize(self._action, mode=self._mode, timeout=self._timeout)
        return self.auth

    def __exit__(self, et: Optional[type], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        auth = self.auth
        if auth is None or auth.recorded:
            return
        ok, summary = _exit_summary(auth, e)
        try:
            self._c.record(auth, ok, summary)
        except SecondkeyError as err:
            # The action ran; failing now would invite a second run.
            log.warning("secondkey: the result of %s could not be recorded: %s", auth.execution_id or auth.request_id, err)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (same methods, awaited)."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        http: Optional[httpx.AsyncClient] = None,
        allow_insecure_http: bool = False,
    ):
        super().__init__(url, token, timeout, allow_insecure_http)  # refuses a bad URL before opening anything
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, call: Call, timeout: Optional[float] = None) -> Any:
        try:
            async with self._http.stream(**self._request_args(call, timeout)) as r:
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    check_size(body)
        except httpx.HTTPError as e:
            raise transport_error(e, self._s.url) from None
        return read_answer(call, r.status_code, r.headers, bytes(body))

    async def submit(self, action: dict[str, Any], *, execute: bool = False) -> m.ActionResponse:
        return await self._send(b.submit(action, execute))

    async def get_request(self, id: str, *, wait: Optional[int] = None) -> m.RequestView:
        t = None if wait is None else self._s.timeout + wait
        return await self._send(b.get_request(id, wait), timeout=t)

    async def list_requests(self, state: Optional[str] = None, *, limit: Optional[int] = None,
                            before: Optional[str] = None) -> m.RequestPage:
        return await self._send(b.list_requests(state, limit, before))

    async def events(self, id: str, *, read_timeout: float = 30.0) -> AsyncIterator[m.RequestView]:
        call, args = self._stream_args(id, read_timeout)
        try:
            async with self._http.stream(**args) as r:
                if r.status_code != 200:
                    await r.aread()
                    read_answer(call, r.status_code, r.headers, r.content)
                    raise ProtocolError(f"the event stream answered {r.status_code}")
                parser, lines = SseParser(), LineSplitter()
                async for chunk in r.aiter_text():
                    for line in lines.feed(chunk):
                        ev = parser.feed(line)
                        if ev and ev[0] == "state":
                            yield state_event(ev[1])
        except httpx.HTTPError as e:
            raise transport_error(e, self._s.url) from None

    async def review(self, id: str, decision: str, comment: Optional[str] = None) -> m.RequestView:
        return await self._send(b.review(id, decision, comment))

    async def approve(self, id: str, comment: Optional[str] = None) -> m.RequestView:
        return await self.review(id, "approve", comment)

    async def deny(self, id: str, comment: Optional[str] = None) -> m.RequestView:
        return await self.review(id, "deny", comment)

    async def review_batch(self, ids: list[str], decision: str, comment: Optional[str] = None) -> list[m.BatchReviewResult]:
        return await self._send(b.review_batch(ids, decision, comment))

    async def withdraw(self, id: str) -> m.RequestView:
        return await self._send(Call("withdraw_request", {"id": id}))

    async def revoke(self, id: str) -> m.RequestView:
        return await self._send(Call("revoke_request", {"id": id}))

    async def report_outcome(self, id: str, outcome: str, detail: Any = None) -> m.RequestView:
        return await self._send(b.request_result(id, outcome, detail))

    async def consume_grant(self, grant: str, digest: str) -> m.Consumed:
        return await self._send(b.consume(grant, digest))

    async def report_execution(self, id: str, ok: bool, summary: Any = None, *, reads: Optional[list[str]] = None,
                               writes: Optional[list[str]] = None) -> None:
        return await self._send(b.execution_result(id, ok, summary, reads, writes))

    async def report_executions(self, results: list[dict[str, Any]]) -> list[m.BatchResultOutcome]:
        return await self._send(b.execution_results(results))

    async def lineage(self, principal: str) -> list[m.LineageRecord]:
        return await self._send(Call("lineage", query={"principal": principal}))

    async def lineage_graph(
        self,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        *,
        agent: Optional[str] = None,
        dataset: Optional[str] = None,
        environment: Optional[str] = None,
    ) -> dict[str, Any]:
        """The lineage graph of a period (default: the last 24 hours), as the
        gateway's JSON: ``nodes``, ``edges``, ``actions``, ``truncated``."""
        q = {"from": from_, "to": to, "agent": agent, "dataset": dataset, "environment": environment}
        return await self._send(Call("lineage_graph", query=q))

    async def jwks(self) -> dict[str, Any]:
        return await self._send(Call("jwks"))

    async def checkpoint(self) -> str:
        return await self._send(Call("log_checkpoint"))

    async def proof(self, index: int) -> dict[str, Any]:
        return await self._send(Call("log_proof", {"index": str(index)}))

    async def tile(self, path: str) -> bytes:
        return await self._send(Call("log_tile", {"path": path}))

    async def verifier_key(self) -> str:
        return await self._send(Call("log_verifier_key"))

    async def health(self) -> dict[str, Any]:
        return await self._send(Call("healthz"))

    async def metrics(self) -> str:
        return await self._send(Call("metrics"))

    async def verify_grant(self, grant: str, digest: str, request_id: Optional[str] = None) -> dict[str, Any]:
        return verify_grant(grant, await self._keys(False), digest=digest, request_id=request_id)

    async def authorize(self, action: dict[str, Any], *, mode: str = "execute",
                        timeout: float = DEFAULT_GUARD_TIMEOUT) -> Authorization:
        """See :meth:`Client.authorize`."""
        loop = asyncio.get_running_loop()
        return await self._drive(flow(action, mode=mode, timeout=timeout, now=loop.time))

    def guard(self, action: dict[str, Any], *, mode: str = "execute", timeout: float = DEFAULT_GUARD_TIMEOUT) -> "AsyncGuard":
        """``async with client.guard(action) as auth:`` runs the block only once authorized."""
        return AsyncGuard(self, action, mode, timeout)

    def guarded(self, operation: str, *, kind: str = "tool", resource: Optional[str] = None,
                action: Optional[Callable[..., dict[str, Any]]] = None, justification: Optional[str] = None,
                context: Optional[dict[str, Any]] = None, mode: str = "execute",
                timeout: float = DEFAULT_GUARD_TIMEOUT) -> Callable[[F], F]:
        """Decorator for coroutine functions (see :meth:`Client.guarded`)."""

        def deco(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError("AsyncClient.guarded guards coroutine functions; use Client.guarded")
            build = b.action_builder(fn, operation=operation, kind=kind, resource=resource, action=action,
                                     justification=justification, context=context)

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                act, call = build(args, kwargs)
                if call is not None:
                    args, kwargs = call  # the submitted values, not the caller's live objects
                async with self.guard(act, mode=mode, timeout=timeout) as auth:
                    out = await fn(*args, **kwargs)
                    auth.result = out
                    return out

            return wrapper  # type: ignore[return-value]

        return deco

    async def record(self, auth: Authorization, ok: bool, summary: Any = None, *, reads: Optional[list[str]] = None,
                     writes: Optional[list[str]] = None) -> None:
        call = self._record_call(auth, ok, summary, reads, writes)
        if call is not None:
            await self._send(call)

    async def _keys(self, refresh: bool) -> dict[str, Any]:
        if self._jwks is None or refresh:
            self._jwks = await self.jwks()
        return self._jwks

    async def _wait(self, w: Wait) -> Optional[m.RequestView]:
        """Waits until the deadline at most, whatever the event stream does
        (keep-alives arriving forever included)."""
        left = w.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(self._wait_for_change(w), left)
        except asyncio.TimeoutError:
            return None

    async def _wait_for_change(self, w: Wait) -> Optional[m.RequestView]:
        loop = asyncio.get_running_loop()
        try:
            while loop.time() < w.deadline:
                left = w.deadline - loop.time()
                async for view in self.events(w.id, read_timeout=max(0.05, min(20.0, left))):
                    if view.state != w.state:
                        return view
                    if loop.time() >= w.deadline:
                        return None
        except GatewayTimeout:
            if loop.time() >= w.deadline:
                return None
        except SecondkeyError as e:
            if not _fallback_to_poll(e):
                raise
            log.info("secondkey: the event stream failed (%s); long-polling instead", e)
        while True:
            left = w.deadline - loop.time()
            if left <= 0:
                return None
            view = await self.get_request(w.id, wait=max(1, min(MAX_POLL_SECONDS, int(left))))
            if view.state != w.state:
                return view

    async def _submit(self, call: Call) -> Any:
        """The guard's submit, shielded from the caller's cancellation: a
        caller that gives up while it is on its way gives it
        :data:`WITHDRAW_TIMEOUT` more to answer, and what it opened is closed
        (``abandoned_calls``) before the cancellation is raised — by a task of
        its own, which a repeated cancellation does not stop."""
        task = asyncio.ensure_future(self._send(call))
        try:
            return await asyncio.shield(task)
        except BaseException as e:
            if task.done() and not task.cancelled() and task.exception() is e:
                raise  # the submit's own failure
            await _shielded(self._close_abandoned(task))
            raise

    async def _close_abandoned(self, submit: "asyncio.Future[Any]") -> None:
        try:
            answer = await asyncio.wait_for(asyncio.shield(submit), WITHDRAW_TIMEOUT)
        except Exception:
            submit.cancel()  # no answer in time, or none to close
            return
        for call in abandoned_calls(answer):
            try:
                await self._send(call)
            except SecondkeyError:
                pass  # approved or ended meanwhile, or the gateway is gone: nothing ran either way

    async def _drive(self, gen: Generator[Any, Any, Authorization]) -> Authorization:
        value: Any = None
        exc: Optional[BaseException] = None
        while True:
            done, eff = self._advance(gen, value, exc)
            if done:
                return eff
            value, exc = None, None
            try:
                if isinstance(eff, Call) and eff.op == "withdraw_request":
                    value = await _shielded(self._send(eff))
                elif isinstance(eff, Call) and eff.op == "submit_action":
                    value = await self._submit(eff)
                elif isinstance(eff, Call):
                    value = await self._send(eff)
                elif isinstance(eff, Wait):
                    value = await self._wait(eff)
                elif isinstance(eff, Sleep):
                    await asyncio.sleep(eff.seconds)
                elif isinstance(eff, Jwks):
                    value = await self._keys(eff.refresh)
            except BaseException as e:  # cancellation too: flow withdraws a pending request
                exc = e


#: Withdraws (and closings of abandoned submits) still on their way after
#: their caller stopped waiting for them.
_withdrawing: set["asyncio.Task[Any]"] = set()


async def _shielded(send: Awaitable[Any]) -> Any:
    """Sends the withdraw of a request the caller gave up on (or closes what an
    abandoned submit opened), shielded from a repeated cancellation (anyio's
    cancel scopes cancel every later await): the caller stops waiting for it,
    but once started it still reaches the gateway, within its own timeout."""
    task = asyncio.ensure_future(send)
    _withdrawing.add(task)
    task.add_done_callback(_forget)
    return await asyncio.shield(task)


def _forget(task: "asyncio.Task[Any]") -> None:
    _withdrawing.discard(task)
    if not task.cancelled():
        task.exception()  # a withdraw nobody waits for any more fails quietly


class AsyncGuard:
    """``async with client.guard(action) as auth:`` (see :class:`Guard`)."""

    def __init__(self, client: AsyncClient, action: dict[str, Any], mode: str, timeout: float):
        self._c, self._action, self._mode, self._timeout = client, action, mode, timeout
        self.auth: Optional[Authorization] = None

    async def __aenter__(self) -> Authorization:
        self.auth = await self._c.authorize(self._action, mode=self._mode, timeout=self._timeout)
        return self.auth

    async def __aexit__(self, et: Optional[type], e: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        auth = self.auth
        if auth is None or auth.recorded:
            return
        ok, summary = _exit_summary(auth, e)
        try:
            await self._c.record(auth, ok, summary)
        except SecondkeyError as err:
            log.warning("secondkey: the result of %s could not be recorded: %s", auth.execution_id or auth.request_id, err)
