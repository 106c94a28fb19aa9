"""What every integration shares: how a tool call becomes an action, and how
a refusal reads to the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..errors import Denied, GuardTimeout, RequestEnded, SecondkeyError
from ..jcs import json_copy


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
