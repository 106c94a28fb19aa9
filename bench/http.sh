#!/usr/bin/env bash
# GET through the HTTP gateway side by side with nginx as a plain reverse
# proxy, in one run: wrk against the upstream directly, through nginx
# (proxy_pass, keep-alive to the upstream), and through secondkey (every
# request authenticated, decided by Cedar policy, its decision durable in
# the log before it is forwarded, its result logged), and through secondkey
# under a `@record("after")` permit (decision and result logged together,
# within `[log] after_window`, after the request ran). Prints requests/s,
# p50 latency, the throughput ratios to nginx, the p50 latency secondkey
# adds over direct, and the gateway's CPU per request.
#
#   bench/http.sh                  # DURATION=10 CONNECTIONS=32 RUNS=1
#   DATA=/dev/shm bench/http.sh    # the store on tmpfs: what durability costs
#   SECONDKEY_BIN=path bench/http.sh   # measure that binary, not this checkout's
#
# The upstream is nginx itself answering a fixed 2-byte body (so the
# upstream costs as little as possible). Needs nginx and wrk (Debian); as
# root it installs them. Everything runs on 127.0.0.1 and is removed on exit.
set -euo pipefail
# A relative SECONDKEY_BIN is the caller's: resolved before leaving its directory.
[ -n "${SECONDKEY_BIN:-}" ] && SECONDKEY_BIN=$(realpath -m -- "$SECONDKEY_BIN")
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
RUNS=${RUNS:-1}

for tool in nginx wrk; do
  if ! command -v $tool >/dev/null 2>&1 && [ ! -x /usr/sbin/$tool ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null
    else
      echo "$tool is missing; run: sudo apt-get install -y $tool" >&2; exit 1
    fi
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# SECONDKEY_BIN: measure that binary (an A/B against another build) instead
# of building this checkout's.
if [ -n "${SECONDKEY_BIN:-}" ]; then
  SK=$(realpath -e "$SECONDKEY_BIN" 2>/dev/null) && [ -x "$SK" ] \
    || { echo "SECONDKEY_BIN=$SECONDKEY_BIN is not an executable file" >&2; exit 1; }
else
  cargo build --release --locked -p secondkey >/dev/null 2>&1 || cargo build --release --locked -p secondkey
  SK=$PWD/target/release/secondkey
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/sk-httpbench.XXXXXX)
PIDS=()
SKDATA=${DATA:-$WORK}/sk-httpbench-data.$$
cleanup() {
  rm -rf "$SKDATA"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  sleep 0.2
  rm -rf "$WORK"
}
trap cleanup EXIT

UP_PORT=$(free_port); NGINX_PORT=$(free_port); SK_PORT=$(free_port); SK_API=$(free_port)
TOKEN=bench-agent-token-0123456789
UPSTREAM_TOKEN=bench-upstream-token-9876543210

cat > "$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $UPSTREAM_TOKEN";
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" -g "daemon on;" 2>/dev/null

mkdir -p "$WORK/policies"
cat > "$WORK/policies/bench.cedar" <<'EOF'
@id("bench-reads") permit(principal in Group::"agents", action == Action::"http.read", resource);
@id("bench-reads-after") @record("after") permit(principal in Group::"fast", action == Action::"http.read", resource);
EOF
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
FTOKEN=bench-fast-token-0123456789
FHASH=$(printf %s "$FTOKEN" | sha256sum | cut -d' ' -f1)
cat > "$WORK/secondkey.toml" <<EOF
listen = "127.0.0.1:$SK_API"
data_dir = "$SKDATA"
policy_dir = "$WORK/policies"
[[principals]]
id = "agent:bench"
groups = ["agents"]
token_sha256 = "$HASH"
[[principals]]
id = "agent:fast"
groups = ["fast"]
token_sha256 = "$FHASH"
[[http]]
name = "app"
upstream = "http://127.0.0.1:$UP_PORT"
listen = "127.0.0.1:$SK_PORT"
principals = ["agent:bench", "agent:fast"]
[[http.routes]]
match = "GET /items/*"
operation = "read"
[http.credentials]
type = "bearer"
value_env = "BENCH_UPSTREAM_TOKEN"
EOF
BENCH_UPSTREAM_TOKEN=$UPSTREAM_TOKEN "$SK" serve --config "$WORK/secondkey.toml" 2>"$WORK/secondkey.log" & SKPID=$!; PIDS+=($SKPID)
for _ in $(seq 100); do
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SK_PORT/items/1" && break
  sleep 0.1
done
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SK_PORT/items/1" \
  || { echo "the gateway did not come up:" >&2; cat "$WORK/secondkey.log" >&2; exit 1; }

run() { # port [token] → "rps p50_ms"
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer ${2:-$TOKEN}" "http://127.0.0.1:$1/items/1" \
    | awk '
        /^ +50% / { v=$2; if (v ~ /us$/) { sub(/us$/,"",v); p=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); p=v } else { sub(/s$/,"",v); p=v*1000 } }
        /^Requests\/sec:/ { r=$2 }
        /Non-2xx/ { bad=$NF }
        END { if (bad) { print "non-2xx answers: " bad > "/dev/stderr" }; printf "%d %.3f\n", r, p }'
}

echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg); ${DURATION}s per run, $CONNECTIONS connections, wrk -t2"
LOG0=$(curl -s "http://127.0.0.1:$SK_API/v1/log/checkpoint" | sed -n 2p)
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$SKPID/stat"; }
us_per() { python3 -c "print(f'{($2-$1)*1e6/max($3*$DURATION,1):.0f}')"; } # cpu0 cpu1 rps → µs
printf "%-4s %9s %9s %9s %9s %8s %8s %8s %8s %9s %9s %9s %9s %7s %7s\n" run direct nginx secondkey sk-after \
  "p50 dir" "p50 ngx" "p50 sk" "p50 aft" "sk/nginx" "aft/nginx" "sk +p50" "aft +p50" "sk µs" "aft µs"
for i in $(seq "$RUNS"); do
  read -r d dp < <(run "$UP_PORT")
  read -r n np < <(run "$NGINX_PORT")
  c0=$(cpu); read -r s sp < <(run "$SK_PORT"); c1=$(cpu)
  read -r f fp < <(run "$SK_PORT" "$FTOKEN"); c2=$(cpu)
  printf "%-4s %9s %9s %9s %9s %6sms %6sms %6sms %6sms %9s %9s %7sms %7sms %7s %7s\n" "$i" "$d" "$n" "$s" "$f" "$dp" "$np" "$sp" "$fp" \
    "$(python3 -c "print(f'{$s/$n:.2f}x')")" "$(python3 -c "print(f'{$f/$n:.2f}x')")" \
    "$(python3 -c "print(f'{$sp-$dp:.3f}')")" "$(python3 -c "print(f'{$fp-$dp:.3f}')")" \
    "$(us_per "$c0" "$c1" "$s")" "$(us_per "$c1" "$c2" "$f")"
done
LOG1=$(curl -s "http://127.0.0.1:$SK_API/v1/log/checkpoint" | sed -n 2p)
echo "secondkey log entries added: $(( LOG1 - LOG0 )); gateway CPU: $(awk '{print ($14+$15)/100 " s"}' /proc/$SKPID/stat)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
