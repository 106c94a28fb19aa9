#!/usr/bin/env bash
# The PostgreSQL store's writer alone (no HTTP, no policy): allow-shaped
# jobs (a grant row and a log entry each) from 32 tasks on 1, 2 and 3 stores
# sharing a throwaway PostgreSQL 15 cluster (fsync and synchronous_commit on,
# as in bench/replicas.sh). Prints jobs/s and, per batch, jobs, round trips
# and time per phase (see crates/store/benches/pg_writer.rs).
#
# Usage: bench/pg_writer.sh   Env: SECS=10 TASKS=32 PROFILE=release|dev REPLICA_COUNTS="1 2 3" INDEX=0|1
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PGBIN=/usr/lib/postgresql/15/bin
PROFILE=${PROFILE:-release}
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL 15 is missing; run: apt-get install -y postgresql-15" >&2; exit 1; }
WORK=$(mktemp -d /tmp/sk-pg-writer-bench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PW=bench-store-password
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg" -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" \
  -l "$WORK/pg.log" -w start >/dev/null
psql -X -q -h "$WORK" -p "$PGPORT" -U postgres -d postgres -c "CREATE ROLE sk LOGIN PASSWORD '$PW'"
cargo bench --profile "$PROFILE" --locked -p secondkey-store --bench pg_writer --no-run --quiet
for n in ${REPLICA_COUNTS:-1 2 3}; do
  psql -X -q -h "$WORK" -p "$PGPORT" -U postgres -d postgres -c "CREATE DATABASE w$n OWNER sk"
  SECONDKEY_BENCH_PG="postgres://sk@127.0.0.1:$PGPORT/w$n?sslmode=disable" SECONDKEY_BENCH_PG_PASSWORD=$PW REPLICAS=$n \
    cargo bench --profile "$PROFILE" --locked -p secondkey-store --bench pg_writer --quiet
done
