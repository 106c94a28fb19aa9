"""Added latency of an allowed tools/call through secondkey, against the
same server directly, over stdio and Streamable HTTP, and the CPU time
secondkey's processes spent per call (the gateway's; over stdio, the
relay's too). Run by bench/mcp.sh.

    python3 mcp_bench.py N SECONDKEY_BIN GATEWAY_URL TOKEN HTTP_DIRECT_URL GATEWAY_PID

Over HTTP the client does what an SDK client does: it opens a session
(`initialize`, then `Mcp-Session-Id` on every request), opens the
session's event stream (GET) and lists the tools once. The HTTP case runs
twice: the server answering each call with a JSON body, then (its
`/mcp-sse` endpoint) with an event stream, as the MCP SDKs' servers do
by default.
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
BIN, GW, TOKEN, DIRECT, GW_PID = sys.argv[2:7]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_us(pid):
    """User + system CPU time of process `pid`, in µs."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000 / TICK
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
    cpu = None
    for i in range(N + 50):
        if i == 50:
            cpu = (cpu_us(GW_PID), cpu_us(p.pid))
        t = time.perf_counter_ns()
        r = rpc(call(i))
        dt = time.perf_counter_ns() - t
        assert r["result"]["content"][0]["text"] == "x", r
        if i >= 50:
            out.append(dt / 1000)
    used = (cpu_us(GW_PID) - cpu[0], cpu_us(p.pid) - cpu[1])
    p.stdin.close()
    p.wait()
    return out, used


def over_http(url, token=None):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port)
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "mcp-protocol-version": "2025-11-25"}
    if token:
        h["authorization"] = f"Bearer {token}"
    def rpc(m):
        c.request("POST", u.path, json.dumps(m), h)
        r = c.getresponse()
        body = r.read()
        if r.getheader("mcp-session-id"):
            h["mcp-session-id"] = r.getheader("mcp-session-id")
        if r.getheader("content-type", "").startswith("text/event-stream"):
            body = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")][-1]
        return json.loads(body) if body else None
    rpc({"jsonrpc": "2.0", "id": -1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {},
         "clientInfo": {"name": "bench", "version": "0"}}})
    rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert "mcp-session-id" in h, "the server names the session"
    stream = http.client.HTTPConnection(u.hostname, u.port)
    stream.request("GET", u.path, headers=dict(h, accept="text/event-stream"))
    opened = stream.getresponse()
    assert opened.status == 200, opened.status
    rpc({"jsonrpc": "2.0", "id": -2, "method": "tools/list"})
    out = []
    cpu = 0
    for i in range(N + 50):
        if i == 50:
            cpu = cpu_us(GW_PID)
        t = time.perf_counter_ns()
        r = rpc(call(i))
        dt = time.perf_counter_ns() - t
        assert r["result"]["content"][0]["text"] == "x", r
        if i >= 50:
            out.append(dt / 1000)
    used = cpu_us(GW_PID) - cpu
    stream.close()
    return out, (used, 0)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def show(name, direct, via):
    (direct, _), (via, (gw, relay)) = direct, via
    d50, v50 = statistics.median(direct), statistics.median(via)
    relay_cpu = f", relay {relay / N:.0f} µs" if relay else ""
    print(f"{name}: direct p50 {d50:.0f} µs p99 {pct(direct, .99):.0f} µs | through secondkey p50 {v50:.0f} µs "
          f"p90 {pct(via, .9):.0f} µs p99 {pct(via, .99):.0f} µs | added p50 {v50 - d50:.0f} µs"
          f" | CPU per call: gateway {gw / N:.0f} µs{relay_cpu}")


env = dict(os.environ, SECONDKEY_TOKEN=TOKEN)
show("stdio", stdio(SERVER), stdio([BIN, "mcp", "stdio", "--server", "bench-stdio", "--url", GW, "--"] + SERVER, env))
show("http ", over_http(DIRECT), over_http(f"{GW}/mcp/bench", TOKEN))
show("http, event-stream answers", over_http(DIRECT + "-sse"), over_http(f"{GW}/mcp/bench-sse", TOKEN))
