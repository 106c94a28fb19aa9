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
    // Only plain objects: a Date, a class instance (with a toJSON or not)
    // is refused, never turned into what its toJSON says (as Python refuses
    // a datetime), so an action digests the same in both SDKs or not at all.
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
  return digestOfCanonical(canonicalize(value));
}

/** The digest of text already in canonical form (what `canonicalize` returned). */
export function digestOfCanonical(text) {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/**
 * A deep copy of `value` that holds only JSON values, or a JcsError naming
 * where the first value that is not lives. Plain objects (properties that
 * are `undefined` are left out, as JSON leaves them out), arrays, strings,
 * finite numbers, booleans and null are copied; a Map, a Set, a Date, a
 * class instance, a function, a BigInt, NaN or an `undefined` array item is
 * refused rather than turned into something a reviewer did not see. A
 * `__proto__` key is data, as in JSON.parse's objects: the copy holds it as
 * its own property and its prototype stays Object.prototype.
 */
export function jsonCopy(value, where = 'value') {
  return copy(value, where, 0);
}

function copy(v, where, depth) {
  if (depth > MAX_DEPTH) throw new JcsError(`${where} is nested deeper than ${MAX_DEPTH} levels`);
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new JcsError(`${where} is ${v}, which has no JSON form`);
    return v;
  }
  if (Array.isArray(v)) {
    const out = [];
    for (let i = 0; i < v.length; i++) out.push(copy(v[i], `${where}[${i}]`, depth + 1));
    return out;
  }
  if (typeof v === 'object') {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) throw notJson(where, v.constructor?.name ?? 'an object with a prototype');
    const out = {};
    for (const k of Object.keys(v)) {
      if (v[k] === undefined) continue;
      const item = copy(v[k], `${where}.${k}`, depth + 1);
      // `__proto__` is an ordinary member name in JSON: JSON.parse makes it an
      // own property, and so does the copy. Assigning it would set the copy's
      // prototype instead (or drop a value that is not an object).
      if (k === '__proto__') Object.defineProperty(out, k, { value: item, enumerable: true, writable: true, configurable: true });
      else out[k] = item;
    }
    return out;
  }
  throw notJson(where, v === undefined ? 'undefined' : typeof v);
}

function notJson(where, what) {
  const article = what === 'undefined' ? '' : /^[aeiou]/i.test(what) ? 'an ' : 'a ';
  return new JcsError(`${where} is ${article}${what}, which is not a JSON value; pass plain objects, arrays, strings, numbers, booleans or null (convert it first, or build the action with the action option)`);
}
