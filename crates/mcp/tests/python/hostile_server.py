"""A deliberately hostile MCP server (no SDK: it writes raw messages), for
secondkey's relay tests: `hostile_server.py` over stdio, or
`hostile_server.py http PORT` over Streamable HTTP. Tools: `flood` (answers
after MCP_FLOOD notifications, default 20000), `garbage` (writes a
malformed message and an over-long one before answering), `crash` (exits
mid-call), `huge` (MCP_HUGE bytes, default 64 MiB: over HTTP the answer
itself, over stdio a notification line before the answer; `huge_answer`
over stdio: the answer line itself) and, over HTTP,
`endless` (an event stream whose one event never ends: MCP_ENDLESS bytes,
default 300 MiB, without a line end, then the connection closes). Over HTTP, a GET stream is a flood too, and every request is
recorded as a JSON line in MCP_TEST_HEADERS."""

import json
import os
import sys


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


TOOLS = [
    {"name": n, "description": d, "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}
    for n, d in [("flood", "floods"), ("garbage", "writes garbage"), ("crash", "exits"),
                 ("huge", "answers too much"), ("endless", "never ends its event"),
                 ("huge_answer", "its answer itself is too large (stdio)"),
                 ("dupkey", "answers with a key twice (HTTP)"), ("notjson", "answers with no JSON (HTTP)"),
                 ("otherid", "answers under another id (HTTP)")]
]
MIB = 1 << 20


def huge_size():
    return int(os.environ.get("MCP_HUGE", str(64 * MIB)))


def write_x(out, n):
    """Writes n bytes of x in 1 MiB pieces (never holding them all)."""
    piece = b"x" * MIB
    while n > 0:
        out.write(piece[:min(n, MIB)])
        n -= MIB


def notification():
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x" * 100}}


def serve_http(port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    flood = int(os.environ.get("MCP_FLOOD", "20000"))
    seen = os.environ.get("MCP_TEST_HEADERS")

    def event(obj):
        return "event: message\ndata: " + json.dumps(obj) + "\n\n"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def record(self, what):
            if seen:
                with open(seen, "a") as f:
                    f.write(json.dumps(what) + "\n")

        def reply(self, status, body=b"", ctype="application/json", extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in extra:
                self.send_header(k, v)
            if ctype == "application/json":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self):
            self.record({"http": "GET"})
            notes = event(notification()) * flood
            self.reply(200, notes.encode(), ctype="text/event-stream")

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            mid, method = msg.get("id"), msg.get("method")
            self.record({"http": "POST", "method": method, "id": mid})
            if mid is None:
                return self.reply(202)
            if method == "initialize":
                result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "hostile", "version": "0"}}
                body = json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}).encode()
                return self.reply(200, body, extra=[("Mcp-Session-Id", "hostile-session")])
            if method == "tools/list":
                body = json.dumps({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}}).encode()
                return self.reply(200, body)
            if method != "tools/call":
                return self.reply(200, json.dumps({"jsonrpc": "2.0", "id": mid, "result": {}}).encode())
            name = msg["params"]["name"]
            if name == "huge":
                head = json.dumps({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": ""}]}})
                before, after = head.split('"text": ""')
                before = (before + '"text": "').encode()
                after = ('"' + after).encode()
                n = huge_size()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(before) + n + len(after)))
                self.end_headers()
                try:
                    self.wfile.write(before)
                    write_x(self.wfile, n)
                    self.wfile.write(after)
                except OSError:
                    pass  # the gateway stopped reading
                return
            # Answers two readers could read two ways, or that answer no call.
            if name == "dupkey":
                body = ('{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"a"}],'
                        '"isError":false,"isError":true}}' % json.dumps(mid))
                return self.reply(200, body.encode())
            if name == "notjson":
                return self.reply(200, b"this is not json{")
            if name == "otherid":
                body = {"jsonrpc": "2.0", "id": "other", "result": {"content": [{"type": "text", "text": "b"}]}}
                return self.reply(200, json.dumps(body).encode())
            if name == "endless":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    self.wfile.write(b"event: message\ndata: ")
                    write_x(self.wfile, int(os.environ.get("MCP_ENDLESS", str(300 * MIB))))
                    self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True
                return
            done = event({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": f"{name} done"}]}})
            if name == "flood":
                out = event(notification()) * flood + done
            elif name == "garbage":
                out = "data: {this is not json\n\n" + event({"jsonrpc": "2.0", "method": "notifications/message",
                                                               "params": {"data": "y" * 200000}}) + done
            else:  # crash: a JSON answer cut off by the process exiting
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"jsonrpc":"2.0",')
                self.wfile.flush()
                os._exit(7)
            self.reply(200, out.encode(), ctype="text/event-stream")

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if len(sys.argv) > 2 and sys.argv[1] == "http":
    serve_http(int(sys.argv[2]))
    sys.exit(0)

for line in sys.stdin:
    msg = json.loads(line)
    mid, method = msg.get("id"), msg.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                                      "serverInfo": {"name": "hostile", "version": "0"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        name = msg["params"]["name"]
        if name == "flood":
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                               "params": {"level": "info", "data": "x" * 100}}) + "\n"
            sys.stdout.write(note * int(os.environ.get("MCP_FLOOD", "20000")))
        elif name == "garbage":
            sys.stdout.write("{this is not json\n")
            sys.stdout.write('{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"' + "y" * 200000 + '"}}\n')
        elif name == "crash":
            sys.stdout.flush()
            os._exit(7)
        elif name == "huge":
            sys.stdout.flush()
            out = sys.stdout.buffer
            out.write(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"')
            write_x(out, huge_size())
            out.write(b'"}}\n')
            out.flush()
        elif name == "huge_answer":
            sys.stdout.flush()
            out = sys.stdout.buffer
            out.write(('{"jsonrpc":"2.0","id":' + json.dumps(mid) + ',"result":{"content":[{"type":"text","text":"').encode())
            write_x(out, huge_size())
            out.write(b'"}]}}\n')
            out.flush()
            continue
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": f"{name} done"}]}})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
