"""Added latency of an allowed tools/call through secondkey, against the
same server directly, over stdio and Streamable HTTP. Run by bench/mcp.sh.

    python3 mcp_bench.py N SECONDKEY_BIN GATEWAY_URL TOKEN HTTP_DIRECT_URL
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

N = int(sys.argv[1])
BIN, GW, TOKEN, DIRECT = sys.argv[2:6]
HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = ["python3", os.path.join(HERE, "mcp_fast_server.py"), "stdio"]


def call(i):
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}


def stdio(cmd, env=None):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
    def rpc(m):
        p.stdin.write((json.dumps(m) + "\n").encode())
        if "id" in m:
            return json.loads(p.stdout.readline())
    rpc({"jsonrpc": "2.0", "id": -1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {},
         "clientInfo": {"name": "bench", "version": "0"}}})
    rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    rpc({"jsonrpc": "2.0", "id": -2, "method": "tools/list"})
    out = []
    for i in range(N + 50):
        t = time.perf_counter_ns()
        r = rpc(call(i))
        dt = time.perf_counter_ns() - t
        assert r["result"]["content"][0]["text"] == "x", r
        if i >= 50:
            out.append(dt / 1000)
    p.stdin.close()
    p.wait()
    return out


def over_http(url, token=None):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port)
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token:
        h["authorization"] = f"Bearer {token}"
    def rpc(m):
        c.request("POST", u.path, json.dumps(m), h)
        r = c.getresponse()
        body = r.read()
        return json.loads(body) if body else None
    rpc({"jsonrpc": "2.0", "id": -2, "method": "tools/list"})
    out = []
    for i in range(N + 50):
        t = time.perf_counter_ns()
        r = rpc(call(i))
        dt = time.perf_counter_ns() - t
        assert r["result"]["content"][0]["text"] == "x", r
        if i >= 50:
            out.append(dt / 1000)
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def show(name, direct, via):
    d50, v50 = statistics.median(direct), statistics.median(via)
    print(f"{name}: direct p50 {d50:.0f} µs p99 {pct(direct, .99):.0f} µs | through secondkey p50 {v50:.0f} µs "
          f"p90 {pct(via, .9):.0f} µs p99 {pct(via, .99):.0f} µs | added p50 {v50 - d50:.0f} µs")


env = dict(os.environ, SECONDKEY_TOKEN=TOKEN)
show("stdio", stdio(SERVER), stdio([BIN, "mcp", "stdio", "--server", "bench-stdio", "--url", GW, "--"] + SERVER, env))
show("http ", over_http(DIRECT), over_http(f"{GW}/mcp/bench", TOKEN))
