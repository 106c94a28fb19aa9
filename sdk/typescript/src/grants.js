// Local verification of grants: compact JWS, EdDSA (Ed25519, RFC 8037),
// against the gateway's JWKS; the claims must bind the grant to the action's
// digest (`dig`), the request (`rid`) and a time before `exp`.
import { createPublicKey, verify } from 'node:crypto';
import { GrantInvalid } from './errors.js';

export const MAX_GRANT_BYTES = 8 * 1024;
const B64URL = /^[A-Za-z0-9_-]+$/;

function b64url(s, what) {
  if (!s || !B64URL.test(s)) throw new GrantInvalid(`the grant's ${what} is not base64url`);
  return Buffer.from(s, 'base64url');
}

function parts(token) {
  if (typeof token !== 'string' || token.length > MAX_GRANT_BYTES) throw new GrantInvalid('the grant is not a compact JWS of at most 8 KiB');
  const p = token.split('.');
  if (p.length !== 3) throw new GrantInvalid('the grant is not a compact JWS (three dot-separated parts)');
  let header, claims;
  try {
    header = JSON.parse(b64url(p[0], 'header').toString('utf8'));
    claims = JSON.parse(b64url(p[1], 'payload').toString('utf8'));
  } catch (e) {
    if (e instanceof GrantInvalid) throw e;
    throw new GrantInvalid("the grant's header or payload is not JSON");
  }
  if (!header || typeof header !== 'object' || !claims || typeof claims !== 'object') {
    throw new GrantInvalid("the grant's header or payload is not a JSON object");
  }
  return { header, claims, signed: Buffer.from(`${p[0]}.${p[1]}`), sig: b64url(p[2], 'signature') };
}

/** The claims, unchecked (for display only). */
export function decodeUnverified(token) {
  return parts(token).claims;
}

function keyFor(jwks, kid) {
  if (!jwks || !Array.isArray(jwks.keys)) throw new GrantInvalid('the gateway\'s JWKS has no "keys" array');
  const k = jwks.keys.find((x) => x && x.kid === kid);
  if (!k) return null;
  if (k.kty !== 'OKP' || k.crv !== 'Ed25519' || typeof k.x !== 'string' || b64url(k.x, 'JWKS key').length !== 32) {
    throw new GrantInvalid(`the JWKS key ${kid} is not an Ed25519 OKP key`);
  }
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: k.x }, format: 'jwk' });
}

/** Verifies a grant and binds it to `digest` (and `requestId`); returns its claims or throws GrantInvalid. */
export function verifyGrant(token, jwks, { digest, requestId = null, now = Date.now() / 1000 }) {
  const { header, claims, signed, sig } = parts(token);
  if (header.alg !== 'EdDSA') throw new GrantInvalid(`the grant uses algorithm ${JSON.stringify(header.alg)}; only EdDSA grants are accepted`);
  if ('crit' in header) throw new GrantInvalid('the grant\'s header carries "crit" extensions, which are not accepted');
  if (typeof header.kid !== 'string') throw new GrantInvalid("the grant's header has no key id (kid)");
  const key = keyFor(jwks, header.kid);
  if (!key) throw new GrantInvalid(`no key ${header.kid} in the gateway's JWKS`);
  if (sig.length !== 64 || !verify(null, signed, key, sig)) {
    throw new GrantInvalid("the grant's signature does not verify: it was altered or not issued by this gateway");
  }
  if (claims.dig !== digest) throw new GrantInvalid(`the grant is for digest ${claims.dig}, not this action's ${digest}`);
  if (requestId !== null && claims.rid !== requestId) throw new GrantInvalid(`the grant is for request ${claims.rid}, not ${requestId}`);
  if (!Number.isInteger(claims.exp)) throw new GrantInvalid('the grant has no expiry (exp)');
  if (now >= claims.exp) throw new GrantInvalid(`the grant expired at ${claims.exp} (Unix seconds)`);
  return claims;
}
