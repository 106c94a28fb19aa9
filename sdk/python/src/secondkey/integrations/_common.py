"""What every integration shares: how a tool call becomes an action, and how
a refusal reads to the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..client import AsyncClient, Client
from ..errors import Denied, GuardTimeout, RequestEnded, SecondkeyError
from ..jcs import json_copy


def checked_clients(where: str, client: Any, async_client: Any) -> tuple[Optional[Client], Optional[AsyncClient]]:
    """What an integration was given, checked when it is made: a ``Client``
    and/or an ``AsyncClient`` (an ``AsyncClient`` given as ``client`` is taken
    as the asynchronous one). Anything else is a ``TypeError`` now, not an
    ``AttributeError`` in the middle of an agent's run."""
    if isinstance(client, AsyncClient) and async_client is None:
        client, async_client = None, client
    if client is not None and not isinstance(client, Client):
        raise TypeError(f"{where}: client must be a secondkey.Client (or an AsyncClient), not {type(client).__name__}")
    if async_client is not None and not isinstance(async_client, AsyncClient):
        raise TypeError(f"{where}: async_client must be a secondkey.AsyncClient, not {type(async_client).__name__}")
    if client is None and async_client is None:
        raise TypeError(f"{where} needs a Client, an AsyncClient, or both")
    return client, async_client


def async_for(client: Optional[Client], async_client: Optional[AsyncClient]) -> AsyncClient:
    """The client an asynchronous call uses: the ``AsyncClient`` given, else
    one made from the blocking ``Client`` (same gateway, token and timeout)."""
    if async_client is not None:
        return async_client
    assert client is not None  # checked_clients
    return client._async_twin()


@dataclass(frozen=True)
class ToolPolicy:
    """How one tool's calls are described to the gateway.

    ``operation`` is the verb class policy matches on (``read``, ``write``,
    ``delete``, …); ``resource`` defaults to ``tool://<tool name>``. The
    call's arguments are the action's ``params``.
    """

    operation: str = "call"
    kind: str = "tool"
    resource: Optional[str] = None
    justification: Optional[str] = None
    context: dict[str, Any] = field(default_factory=dict)
    mode: str = "execute"
    timeout: float = 300.0


PolicyLike = Union[ToolPolicy, str, dict, bool]


def as_policy(p: PolicyLike) -> ToolPolicy:
    if isinstance(p, ToolPolicy):
        return p
    if isinstance(p, str):
        return ToolPolicy(operation=p)
    if p is True:
        return ToolPolicy()
    if isinstance(p, dict):
        return ToolPolicy(**p)
    raise TypeError(f"a tool policy is a ToolPolicy, an operation word, a dict or True, not {p!r}")


def tool_action(name: str, args: Any, policy: ToolPolicy) -> dict[str, Any]:
    """The action for one call of tool ``name`` with ``args``.

    ``params`` is a copy of the arguments; a value that is not JSON raises
    :class:`~secondkey.jcs.JcsError` naming where it is, instead of being
    turned into a string the reviewer never saw.
    """
    params = args if isinstance(args, dict) else {"input": args}
    action: dict[str, Any] = {
        "kind": policy.kind,
        "operation": policy.operation,
        "resource": policy.resource or f"tool://{name}",
        "params": json_copy(params, f"the input of tool {name}"),
    }
    if policy.justification:
        action["justification"] = policy.justification
    if policy.context:
        action["context"] = dict(policy.context)
    return action


def tool_error_text(tool: str, err: SecondkeyError) -> str:
    """What the model reads when secondkey did not let a tool run."""
    if isinstance(err, (Denied, RequestEnded, GuardTimeout)):
        return f"Tool {tool} was not run: {err}"
    return f"Tool {tool} was not run: secondkey could not authorize it ({type(err).__name__}: {err})"


Builder = Callable[[str, Any], dict[str, Any]]
