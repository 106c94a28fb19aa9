#!/usr/bin/env bash
# Issue 3: memory. Idle RSS of `secondkey serve` after start (target < 40 MB),
# and RSS with 100,000 pending requests (target < 500 MB).
#
# Builds the release binary, starts it on 127.0.0.1 with a throwaway data
# dir, reads VmRSS/VmHWM from /proc/PID/status, creates the pending requests
# through POST /v1/actions with wrk (each action unique, each needing one
# review with a 24 h TTL so none expire), reads RSS again, then stops the
# gateway and removes everything it created.
#
# Usage: bench/memory.sh
# Env:   PENDING=100000  CONNS=64  THREADS=2  PORT=18751
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PENDING=${PENDING:-100000}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-18751}

command -v wrk >/dev/null || {
  echo "wrk is not installed: run 'apt-get install -y wrk' (as root)" >&2
  exit 1
}

echo "== building the release binary"
(cd "$ROOT" && cargo build --release -p secondkey --quiet)
BIN="$ROOT/target/release/secondkey"

WORK=$(mktemp -d /tmp/secondkey-bench-mem.XXXXXX)
PID=""
WRK=""
cleanup() {
  if [ -n "$WRK" ]; then kill "$WRK" 2>/dev/null || true; fi
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

TOKEN="bench-agent-token-$$"
TOKEN_SHA=$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.cedar" <<'CEDAR'
@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("export-needs-review")
@review("data-owners")
@ttl("24h")
forbid(principal, action == Action::"sql.export", resource);
CEDAR
cat > "$WORK/secondkey.toml" <<TOML
listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"
policy_dir = "$WORK/policies"

[log]
origin = "bench.secondkey.example/log"

# The bench holds $PENDING requests of one agent pending at once: far past
# the per-principal caps a deployment keeps (docs/security.md).
[limits]
max_pending_per_principal = 100000000
requests_per_minute = 0

[[principals]]
id = "agent:report-bot"
owner = "user:alice"
groups = ["agents"]
token_sha256 = "$TOKEN_SHA"

[[principals]]
id = "user:alice"
groups = ["analysts"]
token_sha256 = "$(printf '%s' "alice-$$" | sha256sum | cut -d' ' -f1)"

[[principals]]
id = "user:bob"
groups = ["data-owners"]
token_sha256 = "$(printf '%s' "reviewer-$$" | sha256sum | cut -d' ' -f1)"

# Reads /metrics (members of [metrics] readers, default "monitoring").
[[principals]]
id = "service:monitor"
groups = ["monitoring"]
token_sha256 = "$(printf '%s' "monitor-$$" | sha256sum | cut -d' ' -f1)"
TOML

# Each wrk thread sends PENDING/THREADS unique actions, then stops.
cat > "$WORK/pending.lua" <<LUA
local counter = 0
local answered = 0
local id = 0
local threads = {}

function setup(thread)
  id = id + 1
  thread:set("tid", id)
  thread:set("limit", math.floor($PENDING / $THREADS))
  table.insert(threads, thread)
end

request = function()
  counter = counter + 1
  local body = string.format('{"kind":"sql","operation":"export","resource":"postgres://analytics/public.customers","params":{"sql":"COPY customers TO STDOUT"},"justification":"memory bench %d-%d","context":{"environment":"prod"}}', tid, counter)
  return wrk.format("POST", nil, {
    ["Authorization"] = "Bearer $TOKEN",
    ["Content-Type"] = "application/json",
  }, body)
end

response = function(status, headers, body)
  answered = answered + 1
  if answered >= limit then wrk.thread:stop() end
end
LUA

rss() { grep -E "^$1:" "/proc/$PID/status" | awk '{printf "%.1f MB", $2/1024}'; }

echo "== starting the gateway"
RUST_LOG=warn "$BIN" serve --config "$WORK/secondkey.toml" >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || {
  echo "gateway did not start:" >&2
  cat "$WORK/serve.log" >&2
  exit 1
}
sleep 2
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
IDLE=$(rss VmRSS)
echo "RESULT idle VmRSS: $IDLE  (target < 40 MB)"

echo "== creating $PENDING pending requests: wrk -t$THREADS -c$CONNS"
pending() {
  curl -fsS -H "Authorization: Bearer monitor-$$" "http://127.0.0.1:$PORT/metrics" |
    awk '/^secondkey_requests\{state="pending"\}/ {n = $2} END {print n + 0}'
}
# wrk only exits at the end of -d even after every thread stopped, so the
# load time is taken from the gateway's own count of pending requests.
T0=$(date +%s.%N)
wrk -t"$THREADS" -c"$CONNS" -d300s --timeout 10s -s "$WORK/pending.lua" \
  "http://127.0.0.1:$PORT/v1/actions" >"$WORK/wrk.out" 2>&1 &
WRK=$!
while kill -0 "$WRK" 2>/dev/null && [ "$(pending)" -lt "$PENDING" ]; do sleep 0.2; done
T1=$(date +%s.%N)
sleep 1
kill "$WRK" 2>/dev/null || true
wait "$WRK" 2>/dev/null || true
N=$(pending)
echo "RESULT created ${N:-0} pending requests in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s"
echo "RESULT VmRSS with ${N:-0} pending: $(rss VmRSS)  (peak VmHWM $(rss VmHWM); target < 500 MB)"
sleep 5
echo "RESULT VmRSS 5 s later: $(rss VmRSS)"
echo "== data dir: $(du -sh "$WORK/data" | cut -f1)"
