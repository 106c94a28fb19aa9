#!/usr/bin/env bash
# Added latency per allowed MCP tools/call through secondkey versus the
# same server directly, over stdio and Streamable HTTP (issues 6 and 19),
# once with a strict permit (the decision durable before the call runs)
# and once with the same permit under `@record("after")`.
#   bench/mcp.sh [N]     (default N = 2000 calls per case)
#   SECONDKEY_BIN=path/to/secondkey bench/mcp.sh [N]
# Builds the release binary, starts a gateway on an embedded store in a
# temporary directory with one permit policy, and a minimal upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
# SECONDKEY_BIN: another binary to measure (an A/B against an older
# build), instead of building this checkout's.
if [ -n "${SECONDKEY_BIN:-}" ]; then
  BIN=$SECONDKEY_BIN
else
  cargo build --release -p secondkey >/dev/null
  BIN=$PWD/target/release/secondkey
fi
DIR=$(mktemp -d)
GW_PID=
trap 'kill $GW_PID $UP_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
TOKEN=bench-agent-token
MCP_BENCH_LISTS="$DIR/lists" python3 bench/mcp_fast_server.py http "$UP_PORT" & UP_PID=$!
for case in strict after; do
  GW_PORT=$(free_port)
  rm -rf "$DIR/data" "$DIR/policies"
  mkdir -p "$DIR/policies"
  annotation=
  [ "$case" = after ] && annotation='@record("after") '
  echo "${annotation}permit(principal in Group::\"agents\", action == Action::\"mcp.read\", resource);" > "$DIR/policies/p.cedar"
  cat > "$DIR/secondkey.toml" <<CFG
listen = "127.0.0.1:$GW_PORT"
data_dir = "$DIR/data"
policy_dir = "$DIR/policies"
[[principals]]
id = "agent:bench"
groups = ["agents"]
token_sha256 = "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"
[[mcp.servers]]
name = "bench"
url = "http://127.0.0.1:$UP_PORT/mcp"
[[mcp.servers]]
name = "bench-sse"
url = "http://127.0.0.1:$UP_PORT/mcp-sse"
CFG
  "$BIN" serve --config "$DIR/secondkey.toml" 2>"$DIR/gateway.log" & GW_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null && break; sleep 0.1; done
  echo "== $case: $(cat "$DIR/policies/p.cedar")"
  uptime
  : > "$DIR/lists"
  python3 bench/mcp_bench.py "$N" "$BIN" "http://127.0.0.1:$GW_PORT" "$TOKEN" "http://127.0.0.1:$UP_PORT/mcp" "$GW_PID"
  uptime
  echo "HTTP upstream tools/list requests in this case (direct and through secondkey, $N + 50 calls each): $(wc -l < "$DIR/lists")"
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  GW_PID=
done
