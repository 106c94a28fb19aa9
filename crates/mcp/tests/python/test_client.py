"""Drives an MCP server with the official Python SDK client, for
secondkey's black-box tests.

    python3 test_client.py SCRIPT --stdio CMD [ARG...]
    python3 test_client.py SCRIPT --http URL [TOKEN]

SCRIPT is JSON: {"mode": "auto"|"legacy"|"2026-07-28", "steps": [...]},
each step {"list": true}, {"call": NAME, "args": {...}, "progress": bool}
or {"wait_file": PATH} (waits, up to 60 s, until the test creates PATH:
the test acts between two steps of one session).
Prints one JSON line per step: the tool list, or the call's result (with
the progress messages it received), or {"error": "..."}, or {"waited": true}.
The stdio command gets MCP_CLIENT_ENV_* variables as its environment
(prefix stripped), since the SDK passes only a few variables to children.
"""

import asyncio
import json
import os
import sys
import time

import httpx2
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation


def dump(obj):
    print(json.dumps(obj), flush=True)


async def main():
    script = json.loads(sys.argv[1])
    how = sys.argv[2]
    mode = script.get("mode", "auto")
    info = Implementation(name="secondkey-test-client", version="0.1")
    if how == "--stdio":
        env = {k[len("MCP_CLIENT_ENV_"):]: v for k, v in os.environ.items() if k.startswith("MCP_CLIENT_ENV_")}
        target = StdioServerParameters(command=sys.argv[3], args=sys.argv[4:], env=env)
        client = Client(target, mode=mode, client_info=info, read_timeout_seconds=120)
        await run(client, script)
    else:
        url = sys.argv[3]
        headers = {"Authorization": f"Bearer {sys.argv[4]}"} if len(sys.argv) > 4 else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
            transport = streamable_http_client(url, http_client=http)
            client = Client(transport, mode=mode, client_info=info, read_timeout_seconds=120)
            await run(client, script)


async def run(client, script):
    async with client:
        for step in script["steps"]:
            try:
                if step.get("wait_file"):
                    deadline = time.monotonic() + 60
                    while not os.path.exists(step["wait_file"]) and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    dump({"waited": os.path.exists(step["wait_file"])})
                elif step.get("list"):
                    res = await client.list_tools()
                    dump({"tools": [t.name for t in res.tools]})
                else:
                    progress = []

                    async def on_progress(p, total, message):
                        progress.append(message)

                    res = await client.call_tool(
                        step["call"],
                        step.get("args", {}),
                        progress_callback=on_progress if step.get("progress") else None,
                    )
                    texts = [c.text for c in res.content if getattr(c, "type", "") == "text"]
                    dump({"isError": bool(res.is_error), "text": "\n".join(texts), "progress": progress})
            except Exception as e:  # the test reads it
                dump({"error": f"{type(e).__name__}: {e}"})


asyncio.run(main())
