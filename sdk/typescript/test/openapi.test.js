// Conformance: the SDK's operation table and models agree with the gateway's
// served /openapi.json (see ../src/ops.js); every API operation is called by
// the SDK or excluded with a reason.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OPS, EXCLUDED } from '../src/ops.js';
import { MODELS, optional } from '../src/models.js';
import { startGateway } from './helpers.js';

let gw, doc;
before(async () => { gw = await startGateway(); doc = await (await fetch(`${gw.url}/openapi.json`)).json(); });
after(() => gw.stop());

const refName = (s) => s?.$ref?.split('/').pop();
const resolveRef = (s) => (s?.$ref ? doc.components.schemas[refName(s)] : s);

function checkModel(name) {
  const { component, fields } = MODELS[name];
  const schema = doc.components.schemas[component];
  assert.ok(schema, `no component ${component}`);
  const props = new Set(Object.keys(schema.properties ?? {}));
  const required = new Set(schema.required ?? []);
  for (const [f, t] of Object.entries(fields)) {
    assert.ok(props.has(f), `${name} reads ${f}, which ${component} lacks`);
    if (!optional(t)) assert.ok(required.has(f), `${name} insists on ${f}, optional in ${component}`);
  }
  for (const r of required) assert.ok(r in fields, `${component} requires ${r}, which ${name} drops`);
}

for (const [name, op] of Object.entries(OPS)) {
  test(`operation ${name} matches /openapi.json`, () => {
    const opDoc = doc.paths[op.path]?.[op.method.toLowerCase()];
    assert.ok(opDoc, `${op.method} ${op.path} is not in /openapi.json`);
    const params = new Set((opDoc.parameters ?? []).map((p) => `${p.in}:${p.name}`));
    for (const q of op.query ?? []) assert.ok(params.has(`query:${q}`), `query parameter ${q} undocumented`);
    for (const [, seg] of op.path.matchAll(/\{(\w+)\}/g)) assert.ok(params.has(`path:${seg}`), `path parameter ${seg} undocumented`);
    if (!op.body) {
      assert.ok(!opDoc.requestBody?.required, `${name} needs a body`);
    } else {
      const schema = opDoc.requestBody?.content?.['application/json']?.schema;
      assert.ok(schema, `${name}: the SDK sends a body the document does not take`);
      if (op.body === 'object') assert.equal(resolveRef(schema).type, 'object');
      else {
        assert.equal(refName(schema), op.body);
        const comp = resolveRef(schema);
        for (const f of op.bodyFields) assert.ok(f in (comp.properties ?? {}), `${name}: sends ${f}, not in ${op.body}`);
        for (const r of comp.required ?? []) assert.ok(op.bodyFields.includes(r), `${name}: omits required ${r}`);
      }
    }
    const resp = opDoc.responses[String(op.status ?? 200)];
    assert.ok(resp, `${name}: the SDK expects ${op.status ?? 200}`);
    for (const h of op.headers ?? []) assert.ok(h in (resp.headers ?? {}), `${name}: reads header ${h} the document does not promise`);
    if (Array.isArray(op.answer) || MODELS[op.answer]) {
      let schema = resp.content['application/json'].schema;
      let model = op.answer;
      if (Array.isArray(op.answer)) { assert.equal(schema.type, 'array'); schema = schema.items; model = op.answer[0]; }
      assert.equal(refName(schema), MODELS[model].component);
      checkModel(model);
    }
    if (op.public) assert.deepEqual(opDoc.security, [], `${name} is called without a token but the document wants one`);
  });
}

for (const name of Object.keys(MODELS)) test(`model ${name} matches its component`, () => checkModel(name));

test('every API operation is called by the SDK or excluded', () => {
  const called = new Set(Object.values(OPS).map((o) => `${o.method} ${o.path}`));
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const m of Object.keys(methods)) {
      const key = `${m.toUpperCase()} ${path}`;
      assert.ok(called.has(key) || key in EXCLUDED, `${key} is neither called nor excluded`);
    }
  }
  for (const key of Object.keys(EXCLUDED)) {
    const [m, p] = key.split(' ');
    assert.ok(doc.paths[p]?.[m.toLowerCase()], `excluded ${key} is not in the API`);
  }
});
