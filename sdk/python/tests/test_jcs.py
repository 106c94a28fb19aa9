"""RFC 8785 with the RFC's own published vectors (sdk/testdata/jcs-rfc8785.json
names the source: Appendix B and the examples of sections 3.2.2 and 3.2.3)."""

import json
import math
import struct

import pytest

from conftest import TESTDATA
from secondkey import jcs

VECTORS = json.loads((TESTDATA / "jcs-rfc8785.json").read_text(encoding="utf-8"))


def from_bits(h: str) -> float:
    return struct.unpack(">d", bytes.fromhex(h))[0]


@pytest.mark.parametrize("bits,expected,_note", VECTORS["numbers"])
def test_appendix_b_numbers(bits, expected, _note):
    assert jcs.canonicalize(from_bits(bits)) == expected.encode()
    # and inside a structure
    assert jcs.canonicalize({"n": [from_bits(bits)]}) == b'{"n":[' + expected.encode() + b"]}"


@pytest.mark.parametrize("bits,_name", VECTORS["not_serializable"])
def test_nan_and_infinity_are_refused(bits, _name):
    with pytest.raises(jcs.JcsError):
        jcs.canonicalize([from_bits(bits)])


@pytest.mark.parametrize("example", VECTORS["examples"], ids=lambda e: e["name"])
def test_rfc_examples(example):
    assert jcs.canonicalize(json.loads(example["input"])).decode("utf-8") == example["canonical"]


@pytest.mark.parametrize(
    "value,expected",
    [
        (1.0, "1"), (-0.0, "0"), (100.0, "100"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
        (1e-7, "1e-7"), (0.000001, "0.000001"), (123.456, "123.456"), (-1.5e-9, "-1.5e-9"),
        (2**53 - 1, "9007199254740991"), (-(2**53 - 1), "-9007199254740991"), (True, "true"), (None, "null"),
        ("\u007f\u2028", '"\u007f\u2028"'), ("\x00\x1f", '"\\u0000\\u001f"'), ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
    ],
)
def test_ecmascript_number_and_string_forms(value, expected):
    assert jcs.canonicalize(value).decode() == expected


def test_keys_sort_by_utf16_code_units_not_code_points():
    # U+10000 is D800 DC00 in UTF-16, below U+E000 — code-point order says the opposite.
    assert jcs.canonicalize({"\ue000": 1, "\U00010000": 2}).decode() == '{"\U00010000":2,"\ue000":1}'


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, "\ud800", {"\udc00": 1}, {1: "x"}, 2**53, -(2**53), b"bytes", {1, 2}, object()],
)
def test_values_without_a_canonical_form_are_refused(bad):
    with pytest.raises(jcs.JcsError):
        jcs.canonicalize(bad)


def test_too_deep_is_refused_not_a_recursion_error():
    v: list = []
    for _ in range(200):
        v = [v]
    with pytest.raises(jcs.JcsError):
        jcs.canonicalize(v)


def test_digest_matches_the_gateway(bot):
    """The gateway's digest of an action equals ours, numbers and all."""
    from conftest import unique

    action = {
        "kind": "tool", "operation": "read", "resource": unique("digest"),
        "params": {"ratio": 0.1, "big": 4503599627370495.5, "tiny": 5e-324, "small": 1e-7, "neg": -0.0, "n": 2**53 - 1, "s": "é€😀\u0001",
                   "nested": {"b": [1.5, 2, None, True], "a": {"\ue000": 1, "\U00010000": 2}}},
    }
    resp = bot.submit(action)
    # (Cedar has no doubles, so policy denies this one; the digest is what matters.)
    assert resp.digest == jcs.digest(action)
