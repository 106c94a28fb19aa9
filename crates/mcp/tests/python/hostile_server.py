"""A deliberately hostile MCP server over stdio (no SDK: it writes raw
lines), for secondkey's relay tests. Tools: `flood` (answers after
MCP_FLOOD notifications, default 20000), `garbage` (writes a malformed line
and an over-long line before answering), `crash` (exits mid-call)."""

import json
import os
import sys


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


TOOLS = [
    {"name": n, "description": d, "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}
    for n, d in [("flood", "floods"), ("garbage", "writes garbage"), ("crash", "exits")]
]

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
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": f"{name} done"}]}})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
