"""Every API operation the SDK calls, as data.

Both clients (sync and async) build their requests from this table, and the
conformance test checks each entry against the gateway's ``/openapi.json``:
method and path exist, the query parameters and request-body fields the SDK
sends are documented, and the answer's schema has the fields the SDK reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union
from urllib.parse import quote

from . import models as m

# How an answer is read: a dataclass, a list of one, or one of these words.
Answer = Union[type, tuple[str, type], str]


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    #: Query parameters the SDK may send.
    query: tuple[str, ...] = ()
    #: The request body's component name (its fields are what the SDK sends),
    #: "object" for a free-form JSON object, None for no body.
    body: Optional[str] = None
    #: Fields the SDK puts in the body (checked against the component).
    body_fields: tuple[str, ...] = ()
    #: How the 2xx answer is parsed.
    answer: Answer = "json"
    #: The success status the SDK expects.
    status: int = 200
    #: Response headers the SDK reads.
    headers: tuple[str, ...] = ()
    #: Sent without a bearer token (public endpoints).
    public: bool = False


OPS: dict[str, Op] = {
    "submit_action": Op("POST", "/v1/actions", ("execute",), "object", answer=m.ActionResponse),
    "execution_result": Op(
        "POST", "/v1/executions/{id}/result", body="ExecutionResultBody",
        body_fields=("ok", "summary", "reads", "writes"), answer="none", status=204,
    ),
    "execution_results": Op(
        "POST", "/v1/executions/results", body="ExecutionResultsBody", body_fields=("results",),
        answer=("list", m.BatchResultOutcome),
    ),
    "lineage": Op("GET", "/v1/lineage", ("principal",), answer=("list", m.LineageRecord)),
    "lineage_graph": Op("GET", "/v1/lineage/graph", ("from", "to", "agent", "dataset", "environment")),
    "list_requests": Op(
        "GET", "/v1/requests", ("state", "limit", "before"), answer=("list", m.RequestView),
        headers=("x-next-before",),
    ),
    "get_request": Op("GET", "/v1/requests/{id}", ("wait",), answer=m.RequestView),
    "request_events": Op("GET", "/v1/requests/{id}/events", answer="sse"),
    "review_request": Op(
        "POST", "/v1/requests/{id}/reviews", body="ReviewBody", body_fields=("decision", "comment"),
        answer=m.RequestView,
    ),
    "review_batch": Op(
        "POST", "/v1/reviews/batch", body="BatchReviewBody", body_fields=("requests", "decision", "comment"),
        answer=("list", m.BatchReviewResult),
    ),
    "withdraw_request": Op("POST", "/v1/requests/{id}/withdraw", answer=m.RequestView),
    "revoke_request": Op("POST", "/v1/requests/{id}/revoke", answer=m.RequestView),
    "request_result": Op(
        "POST", "/v1/requests/{id}/result", body="ResultBody", body_fields=("outcome", "detail"),
        answer=m.RequestView,
    ),
    "consume_grant": Op(
        "POST", "/v1/grants/consume", body="ConsumeBody", body_fields=("grant", "digest"), answer=m.Consumed
    ),
    "jwks": Op("GET", "/.well-known/jwks.json", answer="json", public=True),
    "log_checkpoint": Op("GET", "/v1/log/checkpoint", answer="text", public=True),
    "log_proof": Op("GET", "/v1/log/proof/{index}", answer="json"),
    "log_tile": Op("GET", "/v1/log/tile/{path}", answer="bytes"),
    "log_verifier_key": Op("GET", "/v1/log/verifier-key", answer="text", public=True),
    "healthz": Op("GET", "/healthz", answer="json", public=True),
    "metrics": Op("GET", "/metrics", answer="text"),
}

#: API operations the SDK leaves out on purpose, and why.
EXCLUDED: dict[tuple[str, str], str] = {
    ("GET", "/mcp/{server}"): "the MCP gateway speaks MCP to MCP clients; they need no SDK",
    ("POST", "/mcp/{server}"): "the MCP gateway speaks MCP to MCP clients; they need no SDK",
    ("DELETE", "/mcp/{server}"): "the MCP gateway speaks MCP to MCP clients; they need no SDK",
    ("GET", "/v1/mcp/pins"): "MCP tool pins are managed by operators with the CLI, not by agents",
    ("POST", "/v1/mcp/pins/accept"): "MCP tool pins are managed by operators with the CLI, not by agents",
    ("POST", "/v1/mcp/pins/observe"): "called by the MCP stdio relay itself",
    ("POST", "/v1/mcp/refused"): "called by the MCP stdio relay itself",
    ("POST", "/v1/sessions/revoke"): "ending people's web sessions is an operator's action (secondkey sessions revoke), not an agent's",
}


@dataclass
class Call:
    """One HTTP request the clients send, built from an :class:`Op`."""

    op: str
    path_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    #: Raw body bytes (JSON), or None.
    body: Optional[bytes] = None
    #: A bound (seconds) shorter than the client's timeout, or None (the withdraw on giving up).
    timeout: Optional[float] = None

    @property
    def spec(self) -> Op:
        return OPS[self.op]

    def url_path(self) -> str:
        path = self.spec.path
        for k, v in self.path_params.items():
            # a tile path keeps its slashes; ids are one segment
            path = path.replace("{" + k + "}", quote(v, safe="/" if k == "path" else ""))
        return path

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.query.items():
            if v is None:
                continue
            if k not in self.spec.query:
                raise ValueError(f"{self.op} takes no query parameter {k!r}")  # a bug of the SDK
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out
