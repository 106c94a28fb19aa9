#!/usr/bin/env bash
# Issue 18: several replicas on one PostgreSQL store.
#
# 1. Allows/s through POST /v1/actions (each allow decided, logged durably,
#    answered with its grant) on one node with the embedded SQLite store, then
#    on 1, 2 and 3 replicas sharing one PostgreSQL 15 store. Load: one wrk per
#    replica, the connections split evenly, the rates summed (no balancer in
#    the path, so its cost is not counted against either side). Each phase
#    also prints where the cores went per allow (bench/cpu_split.py): the
#    gateways, PostgreSQL, wrk, the rest, and how busy the machine was.
# 2. Approval on replica A -> the agent long-polling on replica B: how long
#    after the approval was sent the agent has its answer (bench/replicas_wake.py).
#
# Everything runs on this machine: PostgreSQL, the replicas and wrk share its
# cores. PostgreSQL keeps its defaults (fsync, synchronous_commit on).
#
# Usage: bench/replicas.sh
# Env:   CONNS=32  DURATION=15s (seconds)  WAKES=200
#        SECONDKEY_BIN=path: measure that binary instead of building this checkout's
set -euo pipefail
# A relative SECONDKEY_BIN is the caller's: resolved before leaving its directory.
[ -n "${SECONDKEY_BIN:-}" ] && SECONDKEY_BIN=$(realpath -m -- "$SECONDKEY_BIN")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CONNS=${CONNS:-32}
DURATION=${DURATION:-15s}
WAKES=${WAKES:-200}
PGBIN=/usr/lib/postgresql/15/bin

command -v wrk >/dev/null || { echo "wrk is not installed: run 'apt-get install -y wrk' (as root)" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL 15 is missing; run: apt-get install -y postgresql-15" >&2; exit 1; }

if [ -n "${SECONDKEY_BIN:-}" ]; then
  # Measure that binary (an A/B against another build) instead of building this checkout's.
  SK=$(realpath -e -- "$SECONDKEY_BIN" 2>/dev/null) && [ -x "$SK" ] \
    || { echo "SECONDKEY_BIN=$SECONDKEY_BIN is not an executable file" >&2; exit 1; }
else
  echo "== building the release binary"
  cargo build --release --locked -p secondkey --quiet
  SK=$ROOT/target/release/secondkey
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/sk-replicas-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_gateways() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_gateways
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PGPORT=$(free_port)
PW=bench-store-password
AGENT=bench-agent-token-$$
BOB=bench-reviewer-token-$$
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" \
  -l "$WORK/pg.log" -w start >/dev/null
psql -X -q -h "$WORK" -p "$PGPORT" -U postgres -d postgres -c "CREATE ROLE sk LOGIN PASSWORD '$PW'"
printf '%s\n' "$PW" > "$WORK/store.pw"

mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.cedar" <<'CEDAR'
@id("agents-read")
permit(principal in Group::"agents", action == Action::"sql.read", resource);

@id("agents-export")
permit(principal in Group::"agents", action == Action::"sql.export", resource);

@id("exports-need-an-owner")
@review("data-owners")
forbid(principal, action == Action::"sql.export", resource);
CEDAR

# config DIR PORT [DB]: a gateway on PORT; with DB, on the PostgreSQL store DB.
config() {
  local dir=$1 port=$2 db=${3:-}
  mkdir -p "$dir"
  cat > "$dir/secondkey.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$dir/data"
policy_dir = "$WORK/policies"
public_url = "http://127.0.0.1:$port"

[log]
origin = "bench.secondkey.example/log"

[limits]
# The wake rounds open a request every ~0.2 s.
requests_per_minute = 0

[[principals]]
id = "agent:report-bot"
owner = "user:alice"
groups = ["agents"]
token_sha256 = "$(sha "$AGENT")"

[[principals]]
id = "user:alice"
groups = ["analysts"]
token_sha256 = "$(sha "alice-$AGENT")"

[[principals]]
id = "user:bob"
groups = ["data-owners"]
token_sha256 = "$(sha "$BOB")"
TOML
  if [ -n "$db" ]; then
    cat >> "$dir/secondkey.toml" <<TOML

[store]
url = "postgres://sk@127.0.0.1:$PGPORT/$db?sslmode=disable"
password_file = "$WORK/store.pw"
TOML
  fi
}

start() {
  local dir=$1 port=$2
  RUST_LOG=warn "$SK" serve --config "$dir/secondkey.toml" >"$dir/serve.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "gateway on $port did not start:" >&2
  cat "$dir/serve.log" >&2
  exit 1
}

cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $AGENT"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"kind":"sql","operation":"read","resource":"postgres://analytics/public.orders","params":{"sql":"SELECT id, total FROM orders WHERE created_at > now() - interval \'1 day\'"},"justification":"daily revenue report","context":{"environment":"prod","model":"gpt-bench","session":"s-1"}}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout))
end
LUA

# load LABEL PORT...: one wrk per port, CONNS split evenly; prints the sum.
load() {
  local label=$1; shift
  local n=$# c=$((CONNS / $#)) i=0
  for port in "$@"; do
    wrk -t1 -c2 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$port/v1/actions" >/dev/null
  done
  local wrks=()
  python3 "$ROOT/bench/cpu_split.py" snap "$WORK/cpu.json" $$
  for port in "$@"; do
    wrk -t1 -c"$c" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:$port/v1/actions" >"$WORK/wrk.$i" &
    wrks+=($!)
    i=$((i + 1))
  done
  for w in "${wrks[@]}"; do wait "$w"; done
  local total=0 errors=0 lines=""
  for j in $(seq 0 $((n - 1))); do
    local r; r=$(grep '^RESULT' "$WORK/wrk.$j")
    lines="$lines  ${r#RESULT }"
    total=$((total + $(sed 's/.*rps=\([0-9]*\).*/\1/' <<<"$r")))
    errors=$((errors + $(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$r")))
  done
  echo "RESULT $label: $total allows/s (errors $errors) —$lines"
  # Where the cores went: the gateways, PostgreSQL, wrk and the rest.
  echo "       $(SPLIT_UNIT=allow python3 "$ROOT/bench/cpu_split.py" diff "$WORK/cpu.json" $$ $((total * ${DURATION%s})) \
    gateways="$(head -c 15 <<<"${SK##*/}")" postgres=postgres wrk=children)"
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load avg $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== one node, SQLite (embedded)"
P=$(free_port); config "$WORK/sqlite" "$P"; start "$WORK/sqlite" "$P"
load "1 node, SQLite" "$P"
stop_gateways

for n in 1 2 3; do
  echo "== $n replica(s), one PostgreSQL store"
  db=sk$n
  psql -X -q -h "$WORK" -p "$PGPORT" -U postgres -d postgres -c "CREATE DATABASE $db OWNER sk"
  ports=()
  for i in $(seq 1 "$n"); do
    dir=$WORK/r$n-$i; port=$(free_port); ports+=("$port")
    config "$dir" "$port" "$db"
    if [ "$i" = 1 ]; then
      "$SK" store migrate --config "$dir/secondkey.toml" >/dev/null
    else
      # Every replica signs with the same keys (docs/replicas.md).
      mkdir -p "$dir/data"; cp -a "$WORK/r$n-1/data/keys" "$dir/data/"
    fi
    start "$dir" "$port"
  done
  load "$n replica(s), PostgreSQL" "${ports[@]}"
  if [ "$n" -ge 2 ]; then
    echo "== approval on one replica -> agent waiting on another ($WAKES rounds)"
    python3 "$ROOT/bench/replicas_wake.py" "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${ports[1]}" "$AGENT" "$BOB" "$WAKES" | sed "s/^RESULT /RESULT $n replicas: /"
  fi
  stop_gateways
done
