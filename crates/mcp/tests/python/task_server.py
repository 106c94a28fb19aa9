"""An MCP server with tasks (protocol revision 2025-11-25) that does not
bind a task to whoever created it, as a stateless server, or one that scopes
tasks by its one (the gateway's) credential, behaves: any caller naming a
task id reaches it. No SDK: it writes raw messages. `task_server.py` over
stdio, or `task_server.py http PORT` over Streamable HTTP.

One tool, `report` (read-only, `execution.taskSupport: optional`): with
`params.task` it answers a CreateTaskResult (status `working`) and keeps
the result for `tasks/result`, which completes the task. `tasks/get`,
`tasks/cancel` and `tasks/list` (pages of MCP_TASKS_PAGE, default 50,
`nextCursor`) follow the spec. Over HTTP, the `Mcp-Session-Id` and the
`MCP-Protocol-Version` (`-` when absent) of every DELETE are written as a
line, space-separated, to MCP_TEST_HEADERS + ".deleted". Tasks live in the JSON file MCP_TASKS_FILE
when set, so that several server processes (one per stdio session) share
them as one remote service would. Every request is recorded as a JSON line
in MCP_TEST_RUNS (method, tool, taskId) and, over HTTP, MCP_TEST_HEADERS.
An answer is an event stream when the request's `_meta` has
`"test/sse": true` (over HTTP). With `"test/statuses": true` in `_meta`,
the answer is preceded by a `notifications/tasks/status` for every task
the server has, whoever created it (over HTTP: on an event stream). With
`"test/delay": SECONDS` in `_meta`, the answer comes that long after the
request was recorded (over HTTP; not for `tools/list`, which the gateway
sends with a call's `_meta` before it forwards the call). MCP_TASKS_STATELESS=1: no sessions (no
`Mcp-Session-Id`)."""

import json
import os
import sys
import time
import uuid

STORE = os.environ.get("MCP_TASKS_FILE")
PAGE = int(os.environ.get("MCP_TASKS_PAGE", "50"))
MEMORY = {}

TOOLS = [{
    "name": "report",
    "description": "Writes a report on a topic.",
    "inputSchema": {"type": "object", "properties": {"topic": {"type": "string"}}},
    "annotations": {"readOnlyHint": True},
    "execution": {"taskSupport": "optional"},
}]

INIT = {"protocolVersion": "2025-11-25",
        "capabilities": {"tools": {}, "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}},
        "serverInfo": {"name": "tasks", "version": "0"}}


def load():
    if not STORE:
        return MEMORY
    try:
        with open(STORE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save(tasks):
    if STORE:
        with open(STORE + ".tmp", "w") as f:
            json.dump(tasks, f)
        os.replace(STORE + ".tmp", STORE)


def record(msg):
    p = msg.get("params") or {}
    line = json.dumps({"method": msg.get("method"), "tool": p.get("name"), "taskId": p.get("taskId")})
    for var in ("MCP_TEST_RUNS", "MCP_TEST_HEADERS"):
        if os.environ.get(var):
            with open(os.environ[var], "a") as f:
                f.write(line + "\n")


def error(mid, code, message):
    return {"jsonrpc": "2.0", "id": mid, "error": {"code": code, "message": message}}


def result(mid, r):
    return {"jsonrpc": "2.0", "id": mid, "result": r}


def public(t):
    return {k: t[k] for k in ("taskId", "status", "createdAt", "lastUpdatedAt", "ttl")}


def answer(msg):
    """The response to a request."""
    mid, method, p = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        return result(mid, INIT)
    if method == "tools/list":
        return result(mid, {"tools": TOOLS})
    tasks = load()
    if method == "tools/call":
        out = {"content": [{"type": "text", "text": "report on " + str((p.get("arguments") or {}).get("topic"))}],
               "isError": False}
        if "task" not in p:
            return result(mid, out)
        tid = str(uuid.uuid4())
        now = "2025-11-25T10:30:00Z"
        tasks[tid] = {"taskId": tid, "status": "working", "createdAt": now, "lastUpdatedAt": now,
                      "ttl": 60000, "result": out}
        save(tasks)
        return result(mid, {"task": public(tasks[tid])})
    if method == "tasks/list":
        ids = sorted(tasks, key=lambda i: tasks[i]["taskId"])
        start = int(p.get("cursor") or 0)
        page = {"tasks": [public(tasks[i]) for i in ids[start:start + PAGE]]}
        if start + PAGE < len(ids):
            page["nextCursor"] = str(start + PAGE)
        return result(mid, page)
    if method in ("tasks/get", "tasks/result", "tasks/cancel"):
        t = tasks.get(p.get("taskId"))
        if t is None:
            return error(mid, -32602, "Failed to retrieve task: Task not found")
        if method == "tasks/get":
            return result(mid, public(t))
        if method == "tasks/cancel":
            if t["status"] != "working":
                return error(mid, -32602, f"Cannot cancel task: already in terminal status '{t['status']}'")
            t["status"] = "cancelled"
            save(tasks)
            return result(mid, public(t))
        if t["status"] == "cancelled":
            return error(mid, -32000, "Task cancelled")
        t["status"] = "completed"
        save(tasks)
        out = dict(t["result"])
        out["_meta"] = {"io.modelcontextprotocol/related-task": {"taskId": t["taskId"]}}
        return result(mid, out)
    return result(mid, {})


def statuses(msg):
    """Every task's status notification, if the request asks for them."""
    if not ((msg.get("params") or {}).get("_meta") or {}).get("test/statuses"):
        return []
    return [{"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": public(t)} for t in load().values()]


def serve_http(port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body=b"", ctype="application/json", extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self):
            self.reply(405)

        def do_DELETE(self):
            if os.environ.get("MCP_TEST_HEADERS"):
                with open(os.environ["MCP_TEST_HEADERS"] + ".deleted", "a") as f:
                    version = self.headers.get("MCP-Protocol-Version") or "-"
                    f.write(f"{self.headers.get('Mcp-Session-Id')} {version}\n")
            self.reply(200)

        def do_POST(self):
            msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            if msg.get("id") is None or "method" not in msg:
                return self.reply(202)
            record(msg)
            if msg["method"] != "tools/list":
                time.sleep(float(((msg.get("params") or {}).get("_meta") or {}).get("test/delay") or 0))
            out = answer(msg)
            notes = statuses(msg)
            opens = msg["method"] == "initialize" and os.environ.get("MCP_TASKS_STATELESS") != "1"
            extra = [("Mcp-Session-Id", uuid.uuid4().hex)] if opens else []
            if notes or ((msg.get("params") or {}).get("_meta") or {}).get("test/sse"):
                note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
                body = "".join("event: message\ndata: " + json.dumps(m) + "\n\n" for m in [note, *notes, out])
                return self.reply(200, body.encode(), ctype="text/event-stream", extra=extra)
            self.reply(200, json.dumps(out).encode(), extra=extra)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if len(sys.argv) > 2 and sys.argv[1] == "http":
    serve_http(int(sys.argv[2]))
    sys.exit(0)

for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("id") is None or "method" not in msg:
        continue
    record(msg)
    for note in statuses(msg):
        sys.stdout.write(json.dumps(note) + "\n")
    sys.stdout.write(json.dumps(answer(msg)) + "\n")
    sys.stdout.flush()
