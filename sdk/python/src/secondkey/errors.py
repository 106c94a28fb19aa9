"""Typed errors. Every failure the SDK reports is a :class:`SecondkeyError`.

Errors the gateway answered carry its status and stable ``code`` (the API's
``{"error": {"code", "message"}}``); the rest say what went wrong on the way
(the gateway is down, slow, or answered something that is not the API).
A guard raises only these, and never runs its function after one.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Optional

__all__ = [
    "SecondkeyError",
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "Unavailable",
    "ServerError",
    "TransportError",
    "GatewayTimeout",
    "ProtocolError",
    "GuardError",
    "Denied",
    "RequestEnded",
    "GuardTimeout",
    "DigestMismatch",
    "GrantInvalid",
    "error_from_response",
]


class SecondkeyError(Exception):
    """Base of every error of this SDK."""


class ApiError(SecondkeyError):
    """The gateway answered with an error: ``status``, ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds to wait before trying again (from ``Retry-After``), if given.
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the input was refused (``invalid_action``, ``unknown_field``, …)."""


class Unauthorized(ApiError):
    """401: a missing or unknown token."""


class Forbidden(ApiError):
    """403: ``self_review``, ``not_eligible``, ``not_requester``, …"""


class NotFound(ApiError):
    """404: no such request, execution or endpoint."""


class Conflict(ApiError):
    """409: ``already_decided``, ``expired``, ``duplicate_reviewer``, ``grant_used``, …"""


class PayloadTooLarge(ApiError):
    """413: the body is over the gateway's limit."""


class RateLimited(ApiError):
    """429 (``rate_limited``, ``too_many_pending``, …): wait ``retry_after`` seconds."""


class Unavailable(ApiError):
    """503: the log could not record the decision, so nothing was authorized."""


class ServerError(ApiError):
    """Another 5xx."""


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, body: bytes, retry_after: Optional[str] = None) -> ApiError:
    """The typed error for an error answer (any body: garbage is named as such)."""
    import json

    code, message = f"http_{status}", ""
    try:
        parsed: Any = json.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            code = err["code"]
            message = str(err.get("message", ""))
        else:
            message = f"the gateway answered {status} without an error object"
    except ValueError:
        message = f"the gateway answered {status} with a body that is not JSON: {body[:200]!r}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, code, message, _retry_after(retry_after))


class TransportError(SecondkeyError):
    """The gateway could not be reached (refused, reset, DNS, TLS…)."""


class GatewayTimeout(TransportError):
    """The gateway did not answer within the client's timeout."""


class ProtocolError(SecondkeyError):
    """The gateway answered something that is not the API (not JSON, missing fields…)."""


class GuardError(SecondkeyError):
    """A guard did not authorize the action; its function did not run."""


class Denied(GuardError):
    """Policy or a reviewer denied the action.

    ``policies`` names the policies that decided, ``request_id`` the request
    (for a review) and ``decision_id`` the decision (``act_…`` or ``req_…``).
    """

    def __init__(
        self,
        message: str,
        *,
        decision_id: str,
        request_id: Optional[str] = None,
        policies: Optional[list[str]] = None,
        reasons: Optional[list[str]] = None,
        reviewers: Optional[list[str]] = None,
    ):
        super().__init__(message)
        self.decision_id = decision_id
        self.request_id = request_id
        self.policies = policies or []
        self.reasons = reasons or []
        self.reviewers = reviewers or []


class RequestEnded(GuardError):
    """The request ended without an approval to use: expired, withdrawn, revoked…"""

    def __init__(self, message: str, *, request_id: str, state: str, policies: Optional[list[str]] = None):
        super().__init__(message)
        self.request_id = request_id
        self.state = state
        self.policies = policies or []


class GuardTimeout(GuardError):
    """No decision within the guard's timeout (the request was withdrawn)."""

    def __init__(self, message: str, *, request_id: Optional[str] = None):
        super().__init__(message)
        self.request_id = request_id


class DigestMismatch(GuardError):
    """The gateway named another digest than the action's own: refused locally."""


class GrantInvalid(GuardError):
    """A grant failed local verification (signature, key, digest, expiry): refused."""
