"""The guard protocol, without IO: one generator both clients drive.

``flow`` yields what it needs — an API call, a wait for the request to
change, a pause, the gateway's JWKS — and receives the answer (or has the
error thrown in). It returns the authorization to run once. The clients in
``client.py`` drive it over httpx, blocking or with asyncio, so the rules
are written once:

* the action is canonicalized (RFC 8785) and digested locally, sent as
  exactly those bytes, and every answer naming another digest is refused;
* ``deny`` raises :class:`Denied`; a request that ends ``denied``,
  ``expired``, ``withdrawn`` or ``revoked`` raises; nothing else authorizes;
* in *execute* mode (the default) the gateway uses the authorization up
  itself (``?execute=true``) and the caller reports how the run went;
* in *grant* mode the grant is verified against the JWKS, bound to the
  digest and request, then consumed — exactly once — before running;
* the timeout is explicit: past it the request is withdrawn and
  :class:`GuardTimeout` raised; a caller that gives up while the request
  waits (cancellation, ``KeyboardInterrupt``) has it withdrawn too — the
  drivers throw such exceptions into ``flow`` instead of dropping it. That
  withdraw waits at most :data:`WITHDRAW_TIMEOUT` for the gateway, whatever
  the client's timeout, and the caller's own exception is raised after it;
* a caller that gives up while a submit is on its way gives that submit
  :data:`WITHDRAW_TIMEOUT` more to answer, and what the answer opened is
  closed (:func:`abandoned_calls`): a pending request withdrawn, an
  execution reported as not run. The drivers do this, since only they can
  let an exchange outlive the caller's cancellation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Optional, Union

from . import jcs
from .errors import (
    Denied,
    DigestMismatch,
    GrantInvalid,
    GuardTimeout,
    ProtocolError,
    RateLimited,
    RequestEnded,
    SecondkeyError,
)
from .grants import verify_grant
from .models import ActionResponse, Consumed, RequestView
from ._ops import Call

__all__ = ["Authorization", "flow", "Wait", "Sleep", "Jwks", "result_summary", "abandoned_calls", "WITHDRAW_TIMEOUT"]

#: How long (seconds) the withdraw of a request the caller gave up on may wait
#: for the gateway: a cancelled call returns within it even when the gateway
#: does not answer (the request then expires at its own time).
WITHDRAW_TIMEOUT = 5.0

#: The summary recorded for an execution the gateway handed out after the
#: caller had given up: the action never ran.
NOT_RUN = {
    "status": "not_run",
    "reason": "the caller gave up (cancelled or interrupted) before the guard's submit was answered; the action was not run",
}

#: States after which a request can never authorize anything.
ENDED = {"denied", "expired", "withdrawn", "revoked", "executed", "failed", "unknown"}


@dataclass
class Wait:
    """Wait until request ``id`` leaves ``state`` (SSE, else long-poll) or ``deadline``."""

    id: str
    state: str
    deadline: float


@dataclass
class Sleep:
    seconds: float


@dataclass
class Jwks:
    refresh: bool = False


Effect = Union[Call, Wait, Sleep, Jwks]


@dataclass
class Authorization:
    """Leave to run the action once. Report how it went with ``record``.

    ``execution_id`` is set in execute mode; ``grant_claims`` in grant mode.
    """

    action: dict[str, Any]
    digest: str
    mode: str
    decision: str
    request_id: Optional[str] = None
    execution_id: Optional[str] = None
    approvers: list[str] = field(default_factory=list)
    grant_claims: Optional[dict[str, Any]] = None
    #: Set it to what the run returned: leaving the guard records it.
    result: Any = None
    recorded: bool = False


def _policies(resp_or_view: Any) -> list[str]:
    if isinstance(resp_or_view, ActionResponse):
        pol = [r.policy for r in resp_or_view.reasons]
        if resp_or_view.request:
            pol += [q.policy for q in resp_or_view.request.required]
    else:
        pol = [q.policy for q in resp_or_view.required]
    return list(dict.fromkeys(pol))


def _denied(resp: ActionResponse) -> Denied:
    named = [r for r in resp.reasons if r.policy]
    policies = [r.policy for r in named if r.effect == "forbid"] or [r.policy for r in named]

    def reason(r: Any) -> str:
        # A default deny names no policy: its message says why.
        if not r.policy:
            return r.message or "no permit policy matches"
        return f"policy {r.policy}: {r.message}" if r.message else f"policy {r.policy}"

    why = "; ".join(reason(r) for r in resp.reasons)
    return Denied(
        f"secondkey denied this action (decision {resp.id}): {why or 'no policy permits it'}",
        decision_id=resp.id,
        policies=policies,
        reasons=[r.message for r in resp.reasons],
    )


def _ended(view: RequestView) -> SecondkeyError:
    policies = _policies(view)
    pol = ", ".join(policies) or "none"
    if view.state == "denied":
        deniers = [r for r in view.reviews if r.decision == "deny"]
        who = ", ".join(r.reviewer for r in deniers) or "a reviewer"
        comments = "; ".join(r.comment for r in deniers if r.comment)
        return Denied(
            f"secondkey request {view.id} was denied by {who} (policy {pol})" + (f": {comments}" if comments else ""),
            decision_id=view.id,
            request_id=view.id,
            policies=policies,
            reasons=[c for c in (r.comment for r in deniers) if c],
            reviewers=[r.reviewer for r in deniers],
        )
    return RequestEnded(
        f"secondkey request {view.id} ended {view.state} without an approval to use (policy {pol}); nothing ran",
        request_id=view.id,
        state=view.state,
        policies=policies,
    )


def _check_digest(got: str, want: str, what: str) -> None:
    if got != want:
        raise DigestMismatch(
            f"the gateway's {what} names digest {got!r}, but this action's RFC 8785 digest is {want}; refused locally"
        )


def flow(
    action: dict[str, Any], *, mode: str, timeout: float, now: Any = time.monotonic
) -> Generator[Effect, Any, Authorization]:
    """The guard: submit, wait, authorize once (see the module docs)."""
    if mode not in ("execute", "grant"):
        raise ValueError("mode is 'execute' or 'grant'")
    if not isinstance(action, dict):
        raise TypeError("an action is a dict (kind, operation, resource, params, …)")
    body = jcs.canonicalize(action)
    digest = jcs.digest(action)
    deadline = now() + timeout
    execute = mode == "execute"

    def submit() -> Generator[Effect, Any, ActionResponse]:
        while True:
            try:
                resp = yield Call("submit_action", query={"execute": True if execute else None}, body=body)
            except RateLimited as e:
                wait = e.retry_after if e.retry_after is not None else 1.0
                if now() + wait >= deadline:
                    raise
                yield Sleep(wait)
                continue
            _check_digest(resp.digest, digest, "decision")
            return resp

    resp: ActionResponse = yield from submit()
    if resp.decision == "deny":
        raise _denied(resp)
    if resp.decision == "allow":
        auth = Authorization(action, digest, mode, "allow")
        if execute:
            if resp.execution is None:
                raise ProtocolError("an execute-mode allow came without its execution")
            auth.execution_id = resp.execution.id
            auth.request_id = resp.execution.request_id
            auth.approvers = list(resp.execution.approvers)
            return auth
        if resp.grant is None:
            raise ProtocolError("an allow came without its grant")
        auth.grant_claims = yield from _use_grant(resp.grant, digest, None)
        return auth
    if resp.decision != "review" or resp.request is None:
        raise ProtocolError(f"unknown decision {resp.decision!r}")

    rid = resp.request.id
    state = resp.request.state
    try:
        while True:
            if state == "pending":
                view = yield Wait(rid, state, deadline)
                if view is None:
                    raise GuardTimeout(
                        f"no decision on secondkey request {rid} within {timeout:g}s; it was withdrawn and nothing ran",
                        request_id=rid,
                    )
            else:
                view = yield Call("get_request", {"id": rid})
            if view.id != rid:
                raise ProtocolError(f"asked for request {rid}, the gateway answered {view.id}")
            _check_digest(view.digest, digest, "request")
            state = view.state
            if state == "pending":
                continue
            if state in ENDED:
                raise _ended(view)
            if state != "approved":
                raise ProtocolError(f"request {rid} is in unknown state {state!r}")
            auth = Authorization(action, digest, mode, "approved", request_id=rid)
            if execute:
                again = yield from submit()
                if again.execution is None:
                    if again.decision == "deny":
                        raise _denied(again)  # policy changed meanwhile
                    if again.request is not None and again.request.state == "pending":
                        state = "pending"  # the approval went meanwhile (revoked, expired): a new request waits
                        rid = again.request.id
                        continue
                    raise ProtocolError(f"request {rid} is approved but resubmitting it did not yield its execution")
                if again.execution.request_id not in (None, rid):
                    raise ProtocolError(f"the execution is of request {again.execution.request_id}, not {rid}")
                auth.execution_id = again.execution.id
                auth.approvers = list(again.execution.approvers)
                return auth
            if view.grant is None:
                raise ProtocolError(f"request {rid} is approved but its grant was not returned to the requester")
            auth.grant_claims = yield from _use_grant(view.grant, digest, rid)
            auth.approvers = list(auth.grant_claims.get("apr") or [])
            return auth
    except BaseException as e:
        # Past the timeout, and when the caller gives up (asyncio cancellation,
        # KeyboardInterrupt, an error while waiting), the request is withdrawn:
        # an approval given later must not be left for an identical call to use.
        if not isinstance(e, (Denied, RequestEnded, GeneratorExit)):
            try:
                yield Call("withdraw_request", {"id": rid}, timeout=WITHDRAW_TIMEOUT)
            except SecondkeyError:
                pass  # approved or ended meanwhile, or the gateway is gone: nothing ran either way
        raise


def abandoned_calls(resp: Any) -> list[Call]:
    """The calls that close what a submit's answer opened, when the caller
    gave up before it came: a pending request is withdrawn (an approval given
    later is then left for nobody) and an execution — an execute-mode allow,
    or an approval used up — is reported as not run (``ok: false``, status
    ``not_run``), so it does not stay open with nothing recorded. Each waits
    at most :data:`WITHDRAW_TIMEOUT` for the gateway."""
    if not isinstance(resp, ActionResponse):
        return []
    calls = []
    if resp.request is not None and resp.request.state == "pending":
        calls.append(Call("withdraw_request", {"id": resp.request.id}, timeout=WITHDRAW_TIMEOUT))
    if resp.execution is not None:
        body = {"ok": False, "summary": NOT_RUN, "reads": [], "writes": []}
        calls.append(Call("execution_result", {"id": resp.execution.id}, body=json.dumps(body).encode(),
                          timeout=WITHDRAW_TIMEOUT))
    return calls


def _use_grant(grant: str, digest: str, rid: Optional[str]) -> Generator[Effect, Any, dict[str, Any]]:
    jwks = yield Jwks()
    try:
        claims = verify_grant(grant, jwks, digest=digest, request_id=rid)
    except GrantInvalid as e:
        if "no key" not in str(e):
            raise
        jwks = yield Jwks(refresh=True)
        claims = verify_grant(grant, jwks, digest=digest, request_id=rid)
    consumed: Consumed = yield Call("consume_grant", body=json.dumps({"grant": grant, "digest": digest}).encode())
    if not consumed.consumed or consumed.digest != digest:
        raise ProtocolError("the gateway's answer to the grant's use does not confirm this digest")
    return claims


def result_summary(value: Any = None, error: Optional[BaseException] = None, limit: int = 2000) -> dict[str, Any]:
    """What a guarded function's outcome looks like in the audit log (bounded)."""
    if error is not None:
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"[:limit]}
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return {"status": "succeeded", "result": text[:limit]}


def record_call(auth: Authorization, ok: bool, summary: Any, reads: list[str], writes: list[str]) -> Optional[Call]:
    """The API call that records how an authorized run went (None: nothing to record)."""
    if auth.execution_id is not None:
        return Call(
            "execution_result",
            {"id": auth.execution_id},
            body=json.dumps({"ok": ok, "summary": summary, "reads": reads, "writes": writes}).encode(),
        )
    if auth.request_id is not None:
        detail = {"summary": summary, "reads": reads, "writes": writes}
        return Call(
            "request_result",
            {"id": auth.request_id},
            body=json.dumps({"outcome": "succeeded" if ok else "failed", "detail": detail}).encode(),
        )
    return None  # a grant-mode allow has no request to record against
