"""Local verification of grants: compact JWS (EdDSA / Ed25519, RFC 8037).

A grant is checked before it is used: the header names EdDSA and a key of
the gateway's JWKS (``/.well-known/jwks.json``), the signature verifies, and
the claims bind it to the action's digest (``dig``), the request (``rid``)
and a time before ``exp``. Anything else raises :class:`GrantInvalid`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import GrantInvalid

__all__ = ["verify_grant", "decode_unverified", "MAX_GRANT_BYTES"]

MAX_GRANT_BYTES = 8 * 1024


def _b64url(s: str, what: str) -> bytes:
    if not s or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in s):
        raise GrantInvalid(f"the grant's {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError) as e:
        raise GrantInvalid(f"the grant's {what} is not base64url: {e}") from None


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    if not isinstance(token, str) or len(token) > MAX_GRANT_BYTES:
        raise GrantInvalid("the grant is not a compact JWS of at most 8 KiB")
    parts = token.split(".")
    if len(parts) != 3:
        raise GrantInvalid("the grant is not a compact JWS (three dot-separated parts)")
    try:
        header = json.loads(_b64url(parts[0], "header"))
        claims = json.loads(_b64url(parts[1], "payload"))
    except ValueError:
        raise GrantInvalid("the grant's header or payload is not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise GrantInvalid("the grant's header or payload is not a JSON object")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), _b64url(parts[2], "signature")


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims, without checking anything (for display only)."""
    return _parts(token)[1]


def _key(jwks: Any, kid: Optional[str]) -> Optional[Ed25519PublicKey]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise GrantInvalid("the gateway's JWKS has no \"keys\" array")
    for k in keys:
        if not isinstance(k, dict) or k.get("kid") != kid:
            continue
        if k.get("kty") != "OKP" or k.get("crv") != "Ed25519" or not isinstance(k.get("x"), str):
            raise GrantInvalid(f"the JWKS key {kid!r} is not an Ed25519 OKP key")
        raw = _b64url(k["x"], "JWKS key")
        if len(raw) != 32:
            raise GrantInvalid(f"the JWKS key {kid!r} is not 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    return None


def verify_grant(
    token: str,
    jwks: Any,
    *,
    digest: str,
    request_id: Optional[str] = None,
    now: Optional[float] = None,
) -> dict[str, Any]:
    """Verifies a grant against the JWKS and binds it to ``digest``; returns its claims.

    Raises :class:`GrantInvalid` (``KeyError`` never escapes). When the key id
    is unknown the caller may refetch the JWKS once and call again.
    """
    header, claims, signed, sig = _parts(token)
    if header.get("alg") != "EdDSA":
        raise GrantInvalid(f"the grant uses algorithm {header.get('alg')!r}; only EdDSA grants are accepted")
    if "crit" in header:
        raise GrantInvalid("the grant's header carries \"crit\" extensions, which are not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise GrantInvalid("the grant's header has no key id (kid)")
    key = _key(jwks, kid)
    if key is None:
        raise GrantInvalid(f"no key {kid!r} in the gateway's JWKS")
    try:
        key.verify(sig, signed)
    except InvalidSignature:
        raise GrantInvalid("the grant's signature does not verify: it was altered or not issued by this gateway") from None
    if claims.get("dig") != digest:
        raise GrantInvalid(f"the grant is for digest {claims.get('dig')!r}, not this action's {digest}")
    if request_id is not None and claims.get("rid") != request_id:
        raise GrantInvalid(f"the grant is for request {claims.get('rid')!r}, not {request_id}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise GrantInvalid("the grant has no expiry (exp)")
    if (time.time() if now is None else now) >= exp:
        raise GrantInvalid(f"the grant expired at {exp} (Unix seconds)")
    return claims
