"""Conformance: the SDK and the gateway's served /openapi.json agree.

Every operation the SDK calls exists with its method and path, every query
parameter and body field it sends is documented, every answer field it
reads is in the answer's schema (and every field the schema requires is
read), and every operation of the API is either called by the SDK or
listed in ``EXCLUDED`` with a reason.
"""

import dataclasses
import re

import httpx
import pytest

from secondkey import _ops, models

OPS = _ops.OPS


@pytest.fixture(scope="module")
def doc(gateway):
    return httpx.get(gateway.url + "/openapi.json", timeout=10).json()


def resolve(doc, schema):
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def ok_response(op_doc, status):
    r = op_doc["responses"].get(str(status))
    assert r is not None, f"the SDK expects {status}; documented: {sorted(op_doc['responses'])}"
    return r


def schema_name(schema):
    return schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None


def check_model(doc, cls, component):
    schema = doc["components"]["schemas"].get(component)
    assert schema is not None, f"no component {component}"
    props = set(schema.get("properties", {}))
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields <= props, f"{cls.__name__} reads fields {sorted(fields - props)} that {component} lacks"
    required = set(schema.get("required", []))
    assert required <= fields, f"{component} requires {sorted(required - fields)}, which {cls.__name__} drops"
    # fields the SDK treats as always there must be required by the schema
    sdk_required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert sdk_required <= required, f"{cls.__name__} insists on {sorted(sdk_required - required)}, optional in {component}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_operation_matches_the_document(doc, name):
    op = OPS[name]
    path_doc = doc["paths"].get(op.path)
    assert path_doc is not None, f"{op.path} is not in /openapi.json"
    op_doc = path_doc.get(op.method.lower())
    assert op_doc is not None, f"{op.method} {op.path} is not in /openapi.json"
    params = {(p["name"], p["in"]) for p in op_doc.get("parameters", [])}
    for q in op.query:
        assert (q, "query") in params, f"{name}: query parameter {q!r} undocumented"
    for seg in re.findall(r"\{(\w+)\}", op.path):
        assert (seg, "path") in params, f"{name}: path parameter {seg!r} undocumented"
    # body
    if op.body is None:
        assert "requestBody" not in op_doc or not op_doc["requestBody"].get("required"), f"{name} needs a body"
    else:
        body = op_doc.get("requestBody")
        assert body is not None, f"{name}: the SDK sends a body the document does not take"
        schema = body["content"]["application/json"]["schema"]
        if op.body == "object":
            assert resolve(doc, schema).get("type") == "object"
        else:
            assert schema_name(schema) == op.body, f"{name}: body is {schema}, the SDK sends {op.body}"
            comp = resolve(doc, schema)
            props = set(comp.get("properties", {}))
            assert set(op.body_fields) <= props, f"{name}: sends {sorted(set(op.body_fields) - props)} not in {op.body}"
            assert set(comp.get("required", [])) <= set(op.body_fields), f"{name}: omits required body fields"
    # answer
    resp = ok_response(op_doc, op.status)
    for h in op.headers:
        assert h in resp.get("headers", {}), f"{name}: reads header {h} the document does not promise"
    if isinstance(op.answer, type) or isinstance(op.answer, tuple):
        schema = resp["content"]["application/json"]["schema"]
        if isinstance(op.answer, tuple):
            assert schema.get("type") == "array", f"{name}: the SDK reads an array"
            schema = schema["items"]
            cls = op.answer[1]
        else:
            cls = op.answer
        assert schema_name(schema) == models.SCHEMA_NAMES[cls], f"{name}: answer is {schema}"
        check_model(doc, cls, models.SCHEMA_NAMES[cls])
    if op.public:
        assert op_doc.get("security") == [], f"{name} is called without a token but the document wants one"


@pytest.mark.parametrize("cls", sorted(models.SCHEMA_NAMES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_model_matches_its_component(doc, cls):
    check_model(doc, cls, models.SCHEMA_NAMES[cls])


def test_every_api_operation_is_covered_or_excluded(doc):
    called = {(op.method, op.path) for op in OPS.values()}
    for path, methods in doc["paths"].items():
        for method in methods:
            key = (method.upper(), path)
            assert key in called or key in _ops.EXCLUDED, f"{key} is neither called by the SDK nor excluded"
    for key in _ops.EXCLUDED:
        assert key[1] in doc["paths"] and key[0].lower() in doc["paths"][key[1]], f"excluded {key} is not in the API"
