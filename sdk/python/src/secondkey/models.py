"""The API's JSON shapes as typed dataclasses, parsed strictly.

Field names are those of the gateway's OpenAPI components (the conformance
test checks each against ``/openapi.json``). Parsing checks every field's
type; an answer that does not fit raises :class:`ProtocolError`. Fields the
gateway adds later are ignored, so an older SDK keeps working.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, Union

from .errors import ProtocolError

__all__ = [
    "Reason",
    "Requirement",
    "RequestSummary",
    "Execution",
    "ActionResponse",
    "Review",
    "RequestView",
    "BatchReviewResult",
    "ErrorDetail",
    "BatchResultOutcome",
    "LineageRecord",
    "Consumed",
    "RequestPage",
    "parse",
    "SCHEMA_NAMES",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Reason:
    """One matching policy: its id, effect and the sentence it carries."""

    policy: str
    effect: str
    message: str


@dataclass(frozen=True)
class Requirement:
    """``quorum`` distinct humans from ``groups``, for ``policy``."""

    policy: str
    groups: list[str]
    quorum: int


@dataclass(frozen=True)
class RequestSummary:
    id: str
    state: str
    url: str
    expires_at: str
    required: list[Requirement]


@dataclass(frozen=True)
class Execution:
    """An authorization used up for the caller to run the action once, now."""

    id: str
    request_id: Optional[str] = None
    approvers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ActionResponse:
    id: str
    digest: str
    decision: str
    reasons: list[Reason]
    request: Optional[RequestSummary] = None
    grant: Optional[str] = None
    execution: Optional[Execution] = None


@dataclass(frozen=True)
class Review:
    reviewer: str
    decision: str
    at: int
    comment: Optional[str] = None


@dataclass(frozen=True)
class RequestView:
    id: str
    state: str
    url: str
    digest: str
    action: dict[str, Any]
    requester: str
    required: list[Requirement]
    reviews: list[Review]
    created_at: str
    expires_at: str
    owner: Optional[str] = None
    decided_at: Optional[str] = None
    grant: Optional[str] = None
    grant_expires_at: Optional[str] = None


@dataclass(frozen=True)
class ErrorDetail:
    code: str
    message: str


@dataclass(frozen=True)
class BatchReviewResult:
    id: str
    request: Optional[RequestView] = None
    error: Optional[ErrorDetail] = None


@dataclass(frozen=True)
class BatchResultOutcome:
    execution: str
    recorded: bool
    error: Optional[ErrorDetail] = None


@dataclass(frozen=True)
class LineageRecord:
    principal: str
    dataset: str
    reads: int
    writes: int
    first_at: str
    last_at: str
    last_execution: str
    last_approvers: list[str]


@dataclass(frozen=True)
class Consumed:
    """Answer to a grant's use: what the verified grant authorized."""

    consumed: bool
    grant: str
    digest: str
    requester: str
    approvers: list[str]
    request: Optional[str] = None


@dataclass(frozen=True)
class RequestPage:
    """One page of ``GET /v1/requests``; pass ``next_before`` as ``before``."""

    requests: list[RequestView]
    next_before: Optional[str] = None


#: Each dataclass and the OpenAPI component it mirrors.
SCHEMA_NAMES: dict[type, str] = {
    Reason: "ReasonView",
    Requirement: "RequirementView",
    RequestSummary: "RequestSummary",
    Execution: "ExecutionView",
    ActionResponse: "ActionResponse",
    Review: "ReviewView",
    RequestView: "RequestView",
    ErrorDetail: "ErrorDetail",
    BatchReviewResult: "BatchReviewResult",
    BatchResultOutcome: "BatchResultOutcome",
    LineageRecord: "LineageRecord",
    Consumed: "ConsumedView",
}


def _check(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return v
    if origin is Union:
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], v, where)
    if dataclasses.is_dataclass(tp):
        return parse(tp, v, where)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(v, list):
            raise ProtocolError(f"{where}: expected an array, got {type(v).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise ProtocolError(f"{where}: expected an object, got {type(v).__name__}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ProtocolError(f"{where}: expected a boolean, got {v!r:.60}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError(f"{where}: expected an integer, got {v!r:.60}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ProtocolError(f"{where}: expected a string, got {v!r:.60}")
        return v
    raise TypeError(f"unsupported field type {tp!r}")  # a bug of this module


def parse(cls: type[T], obj: Any, where: str = "answer") -> T:
    """Parses ``obj`` into ``cls``, checking every field; raises ProtocolError."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected an object ({cls.__name__}), got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in obj:
            if required:
                raise ProtocolError(f"{where}: the field {f.name!r} of {cls.__name__} is missing")
            continue
        kwargs[f.name] = _check(hints[f.name], obj[f.name], f"{where}.{f.name}")
    return cls(**kwargs)
