// RFC 8785 JSON Canonicalization Scheme (JCS) and the action digest.
//
// The gateway names an action by the lowercase hex SHA-256 of its JCS form.
// JavaScript numbers are the IEEE-754 doubles JCS speaks of, and
// JSON.stringify of a finite number is ECMAScript's Number.prototype.toString
// (RFC 8785 section 3.2.2.3); JSON.stringify of a string escapes exactly
// what JCS escapes (section 3.2.2.2). Keys sort by UTF-16 code units, which is
// JavaScript's own string order (section 3.2.3).
import { createHash } from 'node:crypto';
import { SecondkeyError } from './errors.js';

export const MAX_DEPTH = 64;

/** A value with no RFC 8785 form (NaN, a lone surrogate, a BigInt…). */
export class JcsError extends SecondkeyError {}

function str(s) {
  const wellFormed = typeof s.isWellFormed === 'function' ? s.isWellFormed() : !/\p{Surrogate}/u.test(s);
  if (!wellFormed) throw new JcsError('a string holds a lone surrogate (not I-JSON, RFC 8785 section 3.1)');
  return JSON.stringify(s);
}

function write(v, out, depth) {
  if (depth > MAX_DEPTH) throw new JcsError(`nested deeper than ${MAX_DEPTH} levels`);
  if (v !== null && typeof v === 'object' && typeof v.toJSON === 'function') v = v.toJSON();
  if (v === null) out.push('null');
  else if (v === true) out.push('true');
  else if (v === false) out.push('false');
  else if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new JcsError(`${v} has no JSON form (RFC 8785 refuses NaN and Infinity)`);
    out.push(JSON.stringify(v)); // -0 gives "0"
  } else if (typeof v === 'string') out.push(str(v));
  else if (Array.isArray(v)) {
    out.push('[');
    v.forEach((item, i) => {
      if (i) out.push(',');
      if (item === undefined || typeof item === 'function') throw new JcsError(`array item ${i} is not a JSON value`);
      write(item, out, depth + 1);
    });
    out.push(']');
  } else if (typeof v === 'object') {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      throw new JcsError(`${v.constructor?.name ?? 'this object'} is not a plain JSON object`);
    }
    const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort();
    out.push('{');
    keys.forEach((k, i) => {
      if (i) out.push(',');
      out.push(str(k), ':');
      write(v[k], out, depth + 1);
    });
    out.push('}');
  } else {
    throw new JcsError(`${typeof v} is not a JSON value`);
  }
}

/** The RFC 8785 canonical JSON text of a value. */
export function canonicalize(value) {
  const out = [];
  write(value, out, 0);
  return out.join('');
}

/** Lowercase hex SHA-256 of the canonical UTF-8 bytes: an action's digest. */
export function digest(value) {
  return createHash('sha256').update(canonicalize(value), 'utf8').digest('hex');
}
