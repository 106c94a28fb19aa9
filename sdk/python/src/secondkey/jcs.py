"""RFC 8785 JSON Canonicalization Scheme (JCS) and the action digest.

The gateway names an action by the lowercase hex SHA-256 of its JCS form.
The SDK computes it locally from the same JSON it sends, so an answer that
names another digest is refused before anything runs.

Numbers are IEEE-754 doubles serialized as ECMAScript's
``Number.prototype.toString`` does (RFC 8785 section 3.2.2.3): the shortest
digits that round-trip (Python's ``repr`` gives exactly those) placed by
ECMAScript's rules. Integers beyond ±(2^53 − 1) are refused, as the gateway
refuses them: they would digest like their neighbours.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from .errors import SecondkeyError

__all__ = ["JcsError", "canonicalize", "digest", "json_copy", "number_to_string", "MAX_SAFE_INTEGER"]

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class JcsError(SecondkeyError, ValueError):
    """The value has no RFC 8785 form (NaN, a lone surrogate, a non-string key…)."""


def number_to_string(x: float) -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double."""
    if math.isnan(x) or math.isinf(x):
        raise JcsError(f"{x!r} has no JSON form (RFC 8785 refuses NaN and Infinity)")
    if x == 0:
        return "0"  # also minus zero
    sign = "-" if x < 0 else ""
    r = repr(abs(x))  # shortest round-trip digits, e.g. '1e+23', '0.001', '333333333.3333333'
    mantissa, _, exp = r.partition("e")
    e = int(exp) if exp else 0
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    # value = 0.digits × 10^n, where n counts the digits before the point
    n = len(whole) + e if whole != "0" else e - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        d = n - 1
        exp_s = ("+" if d >= 0 else "-") + str(abs(d))
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp_s
    return sign + out


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            raise JcsError("a string holds a lone surrogate (not I-JSON, RFC 8785 section 3.1)")
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def _write(v: Any, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise JcsError(f"nested deeper than {MAX_DEPTH} levels")
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        if abs(v) > MAX_SAFE_INTEGER:
            raise JcsError(f"the integer {v} is beyond ±(2^53 − 1) and would lose precision; send it as a string")
        out.append(str(int(v)))
    elif isinstance(v, float):
        out.append(number_to_string(v))
    elif isinstance(v, str):
        out.append(_string(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    elif isinstance(v, dict):
        for key in v:
            if not isinstance(key, str):
                raise JcsError(f"object key {key!r} is not a string")
        out.append("{")
        for i, key in enumerate(sorted(v, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(v[key], out, depth + 1)
        out.append("}")
    else:
        raise JcsError(f"{type(v).__name__} is not a JSON value")


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out).encode("utf-8")


def digest(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical form: an action's digest."""
    return hashlib.sha256(canonicalize(value)).hexdigest()


_SCALARS = (str, int, float, bool, type(None))


def json_copy(value: Any, where: str = "value") -> Any:
    """A deep copy of ``value`` that holds only JSON values, or :class:`JcsError`.

    Accepted: ``dict`` with ``str`` keys, ``list``, ``tuple`` (kept a tuple,
    digested as an array), ``str``, ``int``, ``float``, ``bool`` and ``None``,
    of exactly those types. Anything else (a set, a generator, a datetime,
    an enum, an object) is refused with the path that holds it, rather than
    turned into something a reviewer did not see.
    """
    return _copy(value, where, 0)


def _copy(v: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise JcsError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    t = type(v)
    if t in _SCALARS:
        return v
    if t is dict:
        out = {}
        for k, item in v.items():
            if type(k) is not str:
                raise JcsError(f"{where} has the key {k!r}, which is not a str; JSON object keys are strings")
            out[k] = _copy(item, f"{where}[{k!r}]", depth + 1)
        return out
    if t is list or t is tuple:
        items = [_copy(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v)]
        return items if t is list else tuple(items)
    raise JcsError(
        f"{where} is a {t.__module__}.{t.__qualname__}, which is not a JSON value; pass dicts, lists, "
        "strings, numbers, booleans or None (convert it first, or build the action with action=)"
    )
