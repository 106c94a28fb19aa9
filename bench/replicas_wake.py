#!/usr/bin/env python3
"""Approval on one replica -> agent waiting on another (issue 18).

Each round: the agent submits an export on replica B (held for review) and
long-polls it there (`GET /v1/requests/{id}?wait=30`); a reviewer approves
it on replica A. Prints how long after the approval was sent the waiting
agent had its answer, as percentiles over all rounds.

Usage: replicas_wake.py A_URL B_URL AGENT_TOKEN REVIEWER_TOKEN ROUNDS
"""

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def call(url, method, path, token, body=None):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    data = None if body is None else json.dumps(body)
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    out = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"{method} {path}: {r.status} {out[:300]!r}")
    return json.loads(out)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    a, b, agent, reviewer, rounds = sys.argv[1:6]
    rounds = int(rounds)
    wakes = []
    for i in range(rounds):
        action = {
            "kind": "sql",
            "operation": "export",
            "resource": "postgres://analytics/public.customers",
            "params": {"statement": f"COPY (SELECT id FROM customers WHERE batch = {i}) TO STDOUT"},
            "justification": "bench round",
        }
        sub = call(b, "POST", "/v1/actions", agent, action)
        if sub.get("decision") != "review":
            raise SystemExit(f"expected a review: {sub}")
        rid = sub["request"]["id"]
        woke = {}

        def wait():
            v = call(b, "GET", f"/v1/requests/{rid}?wait=30", agent)
            woke["at"] = time.perf_counter()
            woke["state"] = v.get("state")

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.1)  # the long-poll is parked on B
        sent = time.perf_counter()
        call(a, "POST", f"/v1/requests/{rid}/reviews", reviewer, {"decision": "approve", "comment": "bench"})
        t.join()
        if woke.get("state") != "approved":
            raise SystemExit(f"round {i}: the agent saw {woke}")
        wakes.append((woke["at"] - sent) * 1000)
    print(
        "RESULT wake rounds=%d p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f"
        % (len(wakes), pct(wakes, 50), pct(wakes, 90), pct(wakes, 99), max(wakes))
    )


main()
