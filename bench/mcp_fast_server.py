"""A minimal MCP server for the latency benchmark: it answers at once, so
that what is measured is what secondkey adds. `stdio`, or `http PORT`
(HTTP/1.1 keep-alive, JSON answers; `initialize` opens a session named by
`Mcp-Session-Id`, and GET opens the session's event stream, kept open and
silent until the client closes it). With MCP_BENCH_LISTS set, each
`tools/list` answered appends a line to that file."""

import json
import secrets
import sys
import os

# A file that gets one line per `tools/list` answered (the benchmark
# prints how often the gateway listed).
LISTS = os.environ.get("MCP_BENCH_LISTS")
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [{"name": "echo", "description": "Returns its argument.", "inputSchema": {"type": "object"},
          "annotations": {"readOnlyHint": True}}]


def answer(msg):
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        return None
    if method == "initialize":
        r = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "fast", "version": "0"}}
    elif method == "tools/list":
        r = {"tools": TOOLS}
        if LISTS:
            with open(LISTS, "a") as f:
                f.write("1\n")
    elif method == "tools/call":
        r = {"content": [{"type": "text", "text": msg["params"]["arguments"].get("text", "")}]}
    else:
        r = {}
    return {"jsonrpc": "2.0", "id": mid, "result": r}


if sys.argv[1] == "stdio":
    for line in sys.stdin:
        a = answer(json.loads(line))
        if a is not None:
            sys.stdout.write(json.dumps(a) + "\n")
            sys.stdout.flush()
else:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, Nagle and
        # delayed ACKs add ~40 ms to every answer.
        disable_nagle_algorithm = True

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            a = answer(json.loads(self.rfile.read(n)))
            body = json.dumps(a).encode() if a is not None else b""
            # On /mcp-sse, answers (but the one to `initialize`) come as an
            # event stream, as the MCP SDKs' servers send them by default.
            sse = self.path == "/mcp-sse" and a is not None and "protocolVersion" not in a["result"]
            if sse:
                body = b"event: message\ndata: " + body + b"\n\n"
            self.send_response(200 if a is not None else 202)
            self.send_header("content-type", "text/event-stream" if sse else "application/json")
            self.send_header("content-length", str(len(body)))
            if a is not None and "protocolVersion" in a["result"]:
                self.send_header("mcp-session-id", secrets.token_hex(16))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b": open\n\n")
            self.wfile.flush()
            # Silent until the client goes away.
            try:
                self.rfile.read(1)
            except ConnectionError:
                pass
            self.close_connection = True

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
