// RFC 8785 with the RFC's own vectors (sdk/testdata/jcs-rfc8785.json names
// the source: Appendix B, and the examples of sections 3.2.2 and 3.2.3).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalize, digest, JcsError, SecondkeyError } from '../src/index.js';
import { jsonCopy } from '../src/jcs.js';
import { TESTDATA } from './helpers.js';

const V = JSON.parse(readFileSync(join(TESTDATA, 'jcs-rfc8785.json'), 'utf8'));
const fromBits = (h) => Buffer.from(h, 'hex').readDoubleBE(0);

test('Appendix B numbers', () => {
  for (const [bits, expected] of V.numbers) {
    assert.equal(canonicalize(fromBits(bits)), expected, bits);
    assert.equal(canonicalize({ n: [fromBits(bits)] }), `{"n":[${expected}]}`);
  }
});

test('NaN and Infinity are refused', () => {
  for (const [bits] of V.not_serializable) assert.throws(() => canonicalize([fromBits(bits)]), JcsError);
});

test('the RFC examples (3.2.2, 3.2.3)', () => {
  for (const ex of V.examples) assert.equal(canonicalize(JSON.parse(ex.input)), ex.canonical, ex.name);
});

test('keys sort by UTF-16 code units; strings escape as JCS says', () => {
  assert.equal(canonicalize({ '\ue000': 1, '\u{10000}': 2 }), '{"\u{10000}":2,"\ue000":1}');
  assert.equal(canonicalize('\u0000\u001f\b\f\n\r\t"\\\u007f\u2028'), '"\\u0000\\u001f\\b\\f\\n\\r\\t\\"\\\\\u007f\u2028"');
  assert.equal(canonicalize({ b: undefined, a: -0 }), '{"a":0}');
});

test('values without a canonical form are refused with a typed error', () => {
  let deep = [];
  for (let i = 0; i < 200; i++) deep = [deep];
  for (const bad of ['\ud800', { '\udc00': 1 }, 10n, () => 1, Symbol('s'), new Map(), [undefined], deep]) {
    assert.throws(() => canonicalize(bad), (e) => e instanceof JcsError && e instanceof SecondkeyError);
  }
});

test('a Date or a class instance is refused, whatever its toJSON says, as Python refuses a datetime', () => {
  class Money { constructor(c) { this.cents = c; } toJSON() { return { cents: this.cents }; } }
  for (const bad of [new Date(0), { when: new Date(0) }, [new Money(5)], { amount: new Money(5) }]) {
    assert.throws(() => canonicalize(bad), (e) => e instanceof JcsError && /not a plain JSON object/.test(e.message), String(bad));
    assert.throws(() => digest(bad), JcsError);
  }
});

test('digest is the hex SHA-256 of the canonical form', () => {
  assert.equal(digest({ b: 1, a: 'x' }), digest({ a: 'x', b: 1 }));
  assert.equal(digest({}), '44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
});

test('jsonCopy keeps a __proto__ key as data, as JSON.parse does, at any depth', () => {
  for (const text of ['{"__proto__":{"a":1},"b":2}', '{"__proto__":1,"b":2}', '{"x":{"__proto__":[1]}}', '[{"__proto__":null}]']) {
    const copy = jsonCopy(JSON.parse(text));
    assert.equal(canonicalize(copy), canonicalize(JSON.parse(text)), text);
    const objects = [copy, copy.x, copy[0]].filter((o) => o && typeof o === 'object' && !Array.isArray(o));
    for (const o of objects) assert.equal(Object.getPrototypeOf(o), Object.prototype, text);
  }
  assert.equal({}.a, undefined);
});
