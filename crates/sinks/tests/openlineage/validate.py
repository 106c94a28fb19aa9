"""Validates OpenLineage run events (one JSON object per line on stdin)
against the OpenLineage JSON schema, spec 2-0-2 (OpenLineage-2-0-2.json
beside this file: the OpenLineage project's spec/OpenLineage.json, whose
$id is https://openlineage.io/spec/2-0-2/OpenLineage.json), with formats
(uuid, date-time, uri) checked, and builds each one with the
openlineage-python client's own event classes, whose validators check
the run id and times again. Prints one line per event; exits 1 on the
first invalid one."""

import json
import pathlib
import sys

import jsonschema
from openlineage.client import event_v2

schema = json.loads((pathlib.Path(__file__).parent / "OpenLineage-2-0-2.json").read_text())
validator = jsonschema.Draft202012Validator(
    schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
run_event = {"$ref": "#/$defs/RunEvent", "$defs": schema["$defs"]}
run_validator = jsonschema.Draft202012Validator(
    run_event, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)

n = 0
for line in sys.stdin:
    if not line.strip():
        continue
    ev = json.loads(line)
    errors = sorted(run_validator.iter_errors(ev), key=str)
    if errors:
        print(f"INVALID event {n}: {errors[0].message} at {list(errors[0].path)}")
        sys.exit(1)
    # The client's classes: runId must be a UUID, eventTime ISO 8601.
    event_v2.RunEvent(
        eventType=event_v2.RunState[ev["eventType"]],
        eventTime=ev["eventTime"],
        run=event_v2.Run(runId=ev["run"]["runId"], facets={}),
        job=event_v2.Job(namespace=ev["job"]["namespace"], name=ev["job"]["name"]),
        producer=ev["producer"],
        inputs=[event_v2.InputDataset(namespace=d["namespace"], name=d["name"]) for d in ev["inputs"]],
        outputs=[event_v2.OutputDataset(namespace=d["namespace"], name=d["name"]) for d in ev["outputs"]],
    )
    print(f"valid {ev['eventType']} {ev['job']['name']} run {ev['run']['runId']}")
    n += 1
print(f"{n} events valid")
