"""Request builders both clients share: one function per API operation."""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable, Optional

from . import jcs
from ._ops import Call


def _json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def submit(action: dict[str, Any], execute: bool) -> Call:
    # Sent as its canonical bytes: what the gateway digests is what we digested.
    return Call("submit_action", query={"execute": True if execute else None}, body=jcs.canonicalize(action))


def get_request(id: str, wait: Optional[int]) -> Call:
    return Call("get_request", {"id": id}, {"wait": wait})


def list_requests(state: Optional[str], limit: Optional[int], before: Optional[str]) -> Call:
    return Call("list_requests", query={"state": state, "limit": limit, "before": before})


def review(id: str, decision: str, comment: Optional[str]) -> Call:
    if decision not in ("approve", "deny"):
        raise ValueError("decision is 'approve' or 'deny'")
    return Call("review_request", {"id": id}, body=_json({"decision": decision, "comment": comment}))


def review_batch(ids: list[str], decision: str, comment: Optional[str]) -> Call:
    if decision not in ("approve", "deny"):
        raise ValueError("decision is 'approve' or 'deny'")
    return Call("review_batch", body=_json({"requests": list(ids), "decision": decision, "comment": comment}))


def request_result(id: str, outcome: str, detail: Any) -> Call:
    return Call("request_result", {"id": id}, body=_json({"outcome": outcome, "detail": detail or {}}))


def consume(grant: str, digest: str) -> Call:
    return Call("consume_grant", body=_json({"grant": grant, "digest": digest}))


def execution_result(id: str, ok: bool, summary: Any, reads: Optional[list[str]], writes: Optional[list[str]]) -> Call:
    body = {"ok": ok, "summary": summary if summary is not None else {}, "reads": reads or [], "writes": writes or []}
    return Call("execution_result", {"id": id}, body=_json(body))


def execution_results(results: list[dict[str, Any]]) -> Call:
    return Call("execution_results", body=_json({"results": results}))


Built = tuple[dict[str, Any], Optional[tuple[tuple[Any, ...], dict[str, Any]]]]


def action_builder(
    fn: Callable[..., Any],
    *,
    operation: str,
    kind: str,
    resource: Optional[str],
    action: Optional[Callable[..., dict[str, Any]]],
    justification: Optional[str],
    context: Optional[dict[str, Any]],
) -> Callable[[tuple[Any, ...], dict[str, Any]], Built]:
    """How a guarded function's call becomes an action: its bound arguments are ``params``.

    ``build(args, kwargs)`` returns the action and the arguments to call the
    function with: a second copy of the same JSON values, taken now, so what
    runs is what was submitted even if the caller's objects change while the
    request waits (``None`` with a custom ``action`` builder: the function
    then gets the caller's arguments).
    """
    sig = inspect.signature(fn)
    name = getattr(fn, "__name__", "")
    if action is None and not resource and (not name or name == "<lambda>"):
        # Its default resource, tool://<function name>, would be the same for
        # every function without a name: a policy on one would cover all.
        raise TypeError(
            "guarded needs a resource (or an action builder) for a function without a name "
            f"({fn!r}): its default, tool://<function name>, would be shared by every such function"
        )

    def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Built:
        if action is not None:
            return action(*args, **kwargs), None
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        params = {name: jcs.json_copy(v, f"argument {name!r}") for name, v in bound.arguments.items()}
        run = inspect.BoundArguments(sig, {name: jcs.json_copy(v) for name, v in params.items()})  # type: ignore[arg-type]
        out: dict[str, Any] = {
            "kind": kind,
            "operation": operation,
            "resource": resource or f"tool://{name}",
            "params": params,
        }
        if justification:
            out["justification"] = justification
        if context:
            out["context"] = context
        return out, (run.args, run.kwargs)

    return build


wraps = functools.wraps
