#!/usr/bin/env bash
# pgbench -S (select-only) side by side: PostgreSQL direct, PostgreSQL with
# its own statement auditing (pgaudit, `pgaudit.log = 'read'` for one role),
# pgbouncer (session mode) and the secondkey PostgreSQL gateway — strict
# (every statement classified, decided by Cedar policy and its decision
# durable before it runs) and under `@record("after")` (decision and result
# logged together within `[log] after_window`) — simple and extended
# protocol, 10 clients and 1 client, in one run. Prints TPS and the ratios
# to pgbouncer, and the gateway's CPU per statement (µs) of each secondkey
# column.
#
#   bench/pg.sh                      # DURATION=10 CLIENTS="10 1" MODES="simple extended" SCALE=10
#   PROFILE=1 bench/pg.sh            # adds a perf profile of the gateway (10 clients, simple, strict)
#   PROFILE=after bench/pg.sh        # the same for the @record("after") principal
#   PROFILE_KEEP=file                # with PROFILE: keep perf.data there
#   PROFILE_CLIENTS=1                # with PROFILE: profile with this many clients (default 10)
#   AFTER_WINDOW=40ms bench/pg.sh    # [log] after_window (default 10ms, the product's default)
#   SECONDKEY_BIN=path bench/pg.sh   # measures that binary instead of building this checkout's
#   SPLIT=1 bench/pg.sh              # after each row, where the cores went per statement in the
#                                    # pgbouncer, strict and after runs (bench/cpu_split.py)
#
# Needs postgresql-15, pgbench, pgbouncer, postgresql-15-pgaudit (Debian); as root it installs
# pgbouncer and pgaudit itself. Everything runs on 127.0.0.1 with throwaway data and is
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"10 1"}
MODES=${MODES:-"simple extended"}
SCALE=${SCALE:-10}
BIN=/usr/lib/postgresql/15/bin

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
  else
    echo "pgbouncer is missing; run: sudo apt-get install -y pgbouncer" >&2; exit 1
  fi
fi
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
if [ ! -e "$BIN/../lib/pgaudit.so" ] && [ ! -e /usr/lib/postgresql/15/lib/pgaudit.so ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgaudit >/dev/null
  else
    echo "pgaudit is missing; run: sudo apt-get install -y postgresql-15-pgaudit" >&2; exit 1
  fi
fi
[ -x "$BIN/initdb" ] || { echo "PostgreSQL 15 is missing; run: apt-get install -y postgresql-15" >&2; exit 1; }

# SECONDKEY_BIN: measure that binary (an A/B against another build)
# instead of building this checkout's.
if [ -n "${SECONDKEY_BIN:-}" ]; then
  SK=$(realpath "$SECONDKEY_BIN")
else
  cargo build --release --locked -p secondkey >/dev/null 2>&1 || cargo build --release --locked -p secondkey
  SK=$PWD/target/release/secondkey
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/sk-pgbench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # runuser does not pass the signal on: stop pgbouncer by its pid file.
  [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PGPORT=$(free_port); BOUNCER_PORT=$(free_port); SKPG_PORT=$(free_port); SKHTTP_PORT=$(free_port)
PW=bench-upstream-password
TOKEN=bench-agent-token-0123456789

[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$BIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >/dev/null
as_pg "$BIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=256MB -c shared_preload_libraries=pgaudit" \
  -l "$WORK/pg.log" -w start >/dev/null
psql_su() { psql -X -q -h "$WORK" -p "$PGPORT" -U postgres "$@"; }
psql_su -d postgres -c "CREATE ROLE app LOGIN PASSWORD '$PW'" -c "CREATE DATABASE bench OWNER app"
PGPASSWORD=$PW pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U app bench >/dev/null 2>&1
# The pgaudit column: the same database through a role whose reads are audited.
psql_su -d bench -c "CREATE EXTENSION pgaudit" -c "CREATE ROLE audited LOGIN PASSWORD '$PW' IN ROLE app" \
  -c "ALTER ROLE audited SET pgaudit.log = 'read'"

# pgbouncer, session mode, SCRAM to both sides.
cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
EOF
echo "\"app\" \"$PW\"" > "$WORK/userlist.txt"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
as_pg "$PGBOUNCER" -q "$WORK/pgbouncer.ini" & PIDS+=($!)

# secondkey with one permit policy: every statement decided and logged.
mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.cedar" <<'EOF'
@id("bench-reads") permit(principal in Group::"agents", action == Action::"sql.read", resource);
@id("bench-reads-after") @record("after") permit(principal in Group::"fast", action == Action::"sql.read", resource);
EOF
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
VERIFIER=$(printf '%s\n' "$TOKEN" | "$SK" pg verifier)
FTOKEN=bench-fast-token-0123456789
FHASH=$(printf %s "$FTOKEN" | sha256sum | cut -d' ' -f1)
FVERIFIER=$(printf '%s\n' "$FTOKEN" | "$SK" pg verifier)
cat > "$WORK/secondkey.toml" <<EOF
listen = "127.0.0.1:$SKHTTP_PORT"
data_dir = "$WORK/skdata"
policy_dir = "$WORK/policies"
[log]
after_window = "${AFTER_WINDOW:-10ms}"
[[principals]]
id = "agent:bench"
groups = ["agents", "monitoring"]
token_sha256 = "$HASH"
[[principals]]
id = "agent:fast"
groups = ["fast"]
token_sha256 = "$FHASH"
[[postgres]]
name = "bench"
listen = "127.0.0.1:$SKPG_PORT"
principals = ["agent:bench", "agent:fast"]
[postgres.upstream]
host = "127.0.0.1"
port = $PGPORT
database = "bench"
user = "app"
password_env = "BENCH_PG_PASSWORD"
[postgres.scram]
"agent:bench" = "$VERIFIER"
"agent:fast" = "$FVERIFIER"
EOF
BENCH_PG_PASSWORD=$PW "$SK" serve --config "$WORK/secondkey.toml" 2>"$WORK/secondkey.log" & SKPID=$!; PIDS+=($SKPID)
for _ in $(seq 100); do
  PGPASSWORD=$TOKEN psql -X -q -h 127.0.0.1 -p "$SKPG_PORT" -U agent:bench -d bench -c "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.1
done

run() { # target mode clients → tps
  local port user pw
  case $1 in
    direct) port=$PGPORT user=app pw=$PW ;;
    pgaudit) port=$PGPORT user=audited pw=$PW ;;
    pgbouncer) port=$BOUNCER_PORT user=app pw=$PW ;;
    secondkey) port=$SKPG_PORT user=agent:bench pw=$TOKEN ;;
    after) port=$SKPG_PORT user=agent:fast pw=$FTOKEN ;;
  esac
  local threads=$(( $3 < 2 ? 1 : 2 ))
  PGPASSWORD=$pw pgbench -n -S -M "$2" -c "$3" -j "$threads" -T "$DURATION" -h 127.0.0.1 -p "$port" -U "$user" bench 2>&1 \
    | awk '/^tps = / {print int($3); exit}'
}

# SPLIT=1: target mode clients → tps, like run, and the run's CPU split per
# statement into $WORK/split.<target>.
split_run() {
  [ "${SPLIT:-}" = 1 ] || { run "$@"; return; }
  python3 bench/cpu_split.py snap "$WORK/cpu.json" $BASHPID
  local tps; tps=$(run "$@")
  SPLIT_UNIT=statement python3 bench/cpu_split.py diff "$WORK/cpu.json" $BASHPID $((tps * DURATION)) \
    pgbench=children postgres=postgres pgbouncer=pgbouncer gateway="$(head -c 15 <<<"${SK##*/}")" >"$WORK/split.$1"
  echo "$tps"
}
echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg); duration ${DURATION}s per run; scale $SCALE"
LOG0=$(curl -s "http://127.0.0.1:$SKHTTP_PORT/v1/log/checkpoint" | sed -n 2p)
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
# The gateway's CPU (user + system, in clock ticks) so far, and per
# statement of a run: ticks over the transactions pgbench counted (one
# SELECT each), in µs.
ticks() { awk '{print $14 + $15}' "/proc/$SKPID/stat"; }
per_stmt() { python3 -c "print(int(($2 - $1) * 1e6 / $(getconf CLK_TCK) / max($3 * $DURATION, 1)))"; }
# Log entries per statement of an @record("after") run (1 when each
# decision is joined by its result; more when results come after their
# decision was written alone), read once the window has passed.
log_size() { sleep 0.2; curl -s "http://127.0.0.1:$SKHTTP_PORT/v1/log/checkpoint" | sed -n 2p; }
per_entry() { python3 -c "print(f'{($2 - $1) / max($3 * $DURATION, 1):.2f}')"; }
# How many after-allows took the strict path (back-pressure: the log was
# behind), from /metrics: the share of those decided in an after run.
strict_count() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SKHTTP_PORT/metrics" \
  | awk '/^secondkey_after_strict_total/ {s=$2} /^secondkey_after_admitted_total/ {a=$2} END {print s+0, a+0}'; }
strict_share() { python3 -c "s=$3-$1; a=$4-$2; print(f'{100*s/max(s+a,1):.0f}%')"; }
printf "%-9s %-8s %10s %10s %10s %10s %10s %9s %9s %9s %8s %8s %8s %8s\n" mode clients direct pgaudit pgbouncer secondkey sk-after \
  "sk/bnc" "after/bnc" "pga/bnc" "sk µs" "after µs" "after e/s" "strict"
for mode in $MODES; do
  for c in $CLIENTS; do
    d=$(run direct "$mode" "$c"); a=$(run pgaudit "$mode" "$c"); b=$(split_run pgbouncer "$mode" "$c")
    t0=$(ticks); s=$(split_run secondkey "$mode" "$c"); t1=$(ticks); e1=$(log_size); m1=$(strict_count)
    f=$(split_run after "$mode" "$c"); t2=$(ticks); e2=$(log_size); m2=$(strict_count)
    printf "%-9s %-8s %10s %10s %10s %10s %10s %9s %9s %9s %8s %8s %8s %8s\n" "$mode" "$c" "$d" "$a" "$b" "$s" "$f" \
      "$(ratio "$s" "$b")" "$(ratio "$f" "$b")" "$(ratio "$a" "$b")" \
      "$(per_stmt "$t0" "$t1" "$s")" "$(per_stmt "$t1" "$t2" "$f")" "$(per_entry "$e1" "$e2" "$f")" \
      "$(strict_share $m1 $m2)"
    if [ "${SPLIT:-}" = 1 ]; then
      for t in pgbouncer secondkey after; do echo "  $t: $(cat "$WORK/split.$t")"; done
    fi
  done
done
LOG1=$(curl -s "http://127.0.0.1:$SKHTTP_PORT/v1/log/checkpoint" | sed -n 2p)
echo "secondkey log entries added: $(( LOG1 - LOG0 )); gateway CPU: $(awk '{print ($14+$15)/100 " s"}' /proc/$SKPID/stat)"
echo "pgaudit wrote $(grep -c 'AUDIT: SESSION' "$WORK/pg.log" || true) audit lines to the server log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${PROFILE:-0}" != 0 ]; then
  command -v perf >/dev/null || { echo "perf is missing: apt-get install -y linux-perf" >&2; exit 1; }
  if [ "$PROFILE" = after ]; then puser=agent:fast ppw=$FTOKEN; else puser=agent:bench ppw=$TOKEN; fi
  pc=${PROFILE_CLIENTS:-10}
  PGPASSWORD=$ppw pgbench -n -S -c "$pc" -j "$(( pc < 2 ? 1 : 2 ))" -T 8 -h 127.0.0.1 -p "$SKPG_PORT" -U "$puser" bench >/dev/null 2>&1 &
  sleep 1
  perf record -F 1999 --call-graph dwarf,16384 -p "$SKPID" -o "$WORK/perf.data" -- sleep 5 >/dev/null 2>&1
  wait "$!"
  # (`head` closes the pipe early: not a failure of the run.)
  perf report -i "$WORK/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null | head -80 || true
  # Commits per statement: the gateway's fdatasync calls over a run.
  PGPASSWORD=$ppw pgbench -n -S -c "$pc" -j "$(( pc < 2 ? 1 : 2 ))" -T 6 -h 127.0.0.1 -p "$SKPG_PORT" -U "$puser" bench 2>/dev/null \
    | awk '/^tps = / {print "tps while counting syncs: " int($3)}' &
  sleep 1
  perf stat -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -p "$SKPID" -- sleep 4 2>&1 | grep -E "sys_enter|elapsed"
  wait "$!"
  if [ -n "${PROFILE_KEEP:-}" ]; then cp "$WORK/perf.data" "$PROFILE_KEEP"; fi
fi
