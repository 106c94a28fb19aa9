#!/usr/bin/env bash
# Issue 3: allow decisions through POST /v1/actions, with durable logging,
# at >= 20,000/s and p99 < 5 ms on loopback.
#
# Builds the release binary, starts `secondkey serve` on 127.0.0.1 with a
# throwaway data dir, loads it with wrk at a few connection counts, prints
# throughput and latency percentiles, then stops the gateway and removes
# everything it created. wrk runs on the same machine and shares its cores.
#
# Usage: bench/gateway.sh            (from anywhere in the repository)
# Env:   CONNS="16 64"  DURATION=20s  THREADS=2  PORT=18750
#        MODE=grant    POST /v1/actions: an allow with its signed grant (default)
#        MODE=execute  POST /v1/actions?execute=true: an allow used up at once
#        MODE=after    the same under a @record("after") permit (the entry is
#                      written within [log] after_window, after the answer)
#        SECONDKEY_BIN=path  measure that binary instead of building this checkout's
#        PROFILE=1  also samples the gateway with `perf` during a 10 s run at
#                   16 connections and prints where its CPU time goes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-"16 64"}
DURATION=${DURATION:-20s}
THREADS=${THREADS:-2}
PORT=${PORT:-18750}
MODE=${MODE:-grant}
case "$MODE" in
  grant) PATHQ="/v1/actions"; ANNOT="" ;;
  execute) PATHQ="/v1/actions?execute=true"; ANNOT="" ;;
  after) PATHQ="/v1/actions?execute=true"; ANNOT='@record("after")' ;;
  *) echo "MODE must be grant, execute or after" >&2; exit 1 ;;
esac

command -v wrk >/dev/null || {
  echo "wrk is not installed: run 'apt-get install -y wrk' (as root)" >&2
  exit 1
}

# SECONDKEY_BIN: another binary to measure (an A/B against an older
# build), instead of building this checkout's.
if [ -n "${SECONDKEY_BIN:-}" ]; then
  BIN=$SECONDKEY_BIN
else
  echo "== building the release binary"
  (cd "$ROOT" && cargo build --release -p secondkey --quiet)
  BIN="$ROOT/target/release/secondkey"
fi

WORK=$(mktemp -d /tmp/secondkey-bench-gw.XXXXXX)
PID=""
cleanup() {
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
cat > "$WORK/policies/bench.cedar" <<CEDAR
@id("agents-read") $ANNOT
permit(principal in Group::"agents", action == Action::"sql.read", resource);
CEDAR
cat > "$WORK/secondkey.toml" <<TOML
listen = "127.0.0.1:$PORT"
data_dir = "$WORK/data"
policy_dir = "$WORK/policies"

[log]
origin = "bench.secondkey.example/log"

[[principals]]
id = "agent:report-bot"
owner = "user:alice"
groups = ["agents"]
token_sha256 = "$TOKEN_SHA"

[[principals]]
id = "user:alice"
groups = ["analysts"]
token_sha256 = "$(printf '%s' "alice-$$" | sha256sum | cut -d' ' -f1)"
TOML

cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"kind":"sql","operation":"read","resource":"postgres://analytics/public.orders","params":{"sql":"SELECT id, total FROM orders WHERE created_at > now() - interval \'1 day\'"},"justification":"daily revenue report","context":{"environment":"prod","model":"gpt-bench","session":"s-1"}}'

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout))
end
LUA
# errors counts non-2xx answers too (summary.errors.status): it must be 0.

echo "== starting the gateway"
if curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; then
  echo "something already answers on port $PORT: stop it, or pick another with PORT=…" >&2
  exit 1
fi
RUST_LOG=warn "$BIN" serve --config "$WORK/secondkey.toml" >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# A healthy answer from another process on the port (a gateway left
# running) must not pass for ours.
{ kill -0 "$PID" 2>/dev/null && curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null; } || {
  echo "gateway did not start (is port $PORT taken? PORT=… picks another):" >&2
  cat "$WORK/serve.log" >&2
  exit 1
}

echo "== one request by hand"
curl -sS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"kind":"sql","operation":"read","resource":"postgres://analytics/public.orders"}' \
  "http://127.0.0.1:$PORT/v1/actions" | head -c 300
echo

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== warm-up (3 s, 16 connections)"
wrk -t"$THREADS" -c16 -d3s -s "$WORK/post.lua" "http://127.0.0.1:$PORT$PATHQ" >/dev/null

logsize() { curl -fsS "http://127.0.0.1:$PORT/v1/log/checkpoint" | sed -n 2p; }
# CPU seconds (user + system) the gateway process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$PID/stat"; }

for c in $CONNS; do
  echo "== wrk -t$THREADS -c$c -d$DURATION --latency POST $PATHQ (allow, MODE=$MODE)"
  C0=$(cpu); T0=$(date +%s.%N); L0=$(logsize)
  wrk -t"$THREADS" -c"$c" -d"$DURATION" --latency -s "$WORK/post.lua" \
    "http://127.0.0.1:$PORT$PATHQ"
  [ "$MODE" = after ] && sleep 0.1  # the last entries' window
  C1=$(cpu); T1=$(date +%s.%N); L1=$(logsize)
  awk -v c0="$C0" -v c1="$C1" -v t0="$T0" -v t1="$T1" -v n="$(nproc)" -v l0="$L0" -v l1="$L1" \
    'BEGIN{printf "RESULT gateway CPU: %.2f of %d cores busy during the run (the rest: wrk, kernel, other processes); %.0f µs of gateway CPU per logged allow (%d entries)\n", (c1-c0)/(t1-t0), n, (c1-c0)*1e6/(l1-l0), l1-l0}'
done

if [ "${PROFILE:-0}" = 1 ]; then
  echo "== perf profile of the gateway under wrk -c16 (10 s)"
  wrk -t"$THREADS" -c16 -d12s -s "$WORK/post.lua" "http://127.0.0.1:$PORT$PATHQ" >/dev/null &
  WRK=$!
  sleep 1
  perf record -F 499 -g -p "$PID" -o "$WORK/perf.data" -- sleep 10 >/dev/null 2>&1
  wait "$WRK"
  echo "-- CPU by thread"
  perf report -i "$WORK/perf.data" --stdio --no-children --sort comm -g none 2>/dev/null | grep '%' | head -8
  echo "-- CPU by library"
  perf report -i "$WORK/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep '%' | head -8
  echo "-- top symbols"
  perf report -i "$WORK/perf.data" --stdio --no-children --sort sym -g none 2>/dev/null | grep '%' | head -30
fi

SIZE=$(curl -fsS "http://127.0.0.1:$PORT/v1/log/checkpoint" | sed -n 2p)
echo "== log size after the run: $SIZE entries (every allow is logged durably before it is answered)"
echo "== gateway RSS after the run: $(grep VmRSS /proc/$PID/status | awk '{print $2, $3}')"
