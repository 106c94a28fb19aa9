#!/usr/bin/env bash
# The SSH gateway (issue 16): an allowed `ssh host true` through secondkey
# versus the same command straight to the host's sshd (added p50 < 5 ms),
# and 50 concurrent exec sessions through the gateway (none lost).
#   bench/ssh.sh [N] [BIN]   (default N = 200 connections per case; BIN
#   defaults to a fresh release build, target/release/secondkey)
# Builds the release binary (unless BIN is given), starts OpenSSH's sshd on a loopback port as the
# current user (its own host key and config) and a gateway on an embedded
# store in a temporary directory, with one permit policy for ssh.read.
# Each sample is a whole `ssh` client run (fork, key exchange, login,
# exec, exit), direct and through the gateway taken alternately.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
BIN=${2:-}
if [ -z "$BIN" ]; then
  cargo build --release -p secondkey >/dev/null
  BIN=$PWD/target/release/secondkey
fi
DIR=$(mktemp -d)
trap 'kill $GW_PID $SSHD_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SSHD_PORT=$(free_port); GW_PORT=$(free_port); API_PORT=$(free_port)
ME=$(id -un)
key() { ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$DIR/$1"; }
key sshd_host sshd; key upstream secondkey; key agent agent; key gw_host gateway
cp "$DIR/upstream.pub" "$DIR/authorized_keys"
cat "$DIR/agent.pub" >> "$DIR/authorized_keys"   # the direct case logs in with the agent's key
cat > "$DIR/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $DIR/sshd_host
PidFile none
UsePAM no
AuthorizedKeysFile $DIR/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers $ME
MaxSessions 64
MaxStartups 200
# The upstream shell reads no dotfiles of the user running the bench.
SetEnv HOME=$DIR
LogLevel ERROR
CFG
[ "$(id -u)" = 0 ] && mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$DIR/sshd_config" 2>"$DIR/sshd.log" & SSHD_PID=$!
mkdir -p "$DIR/policies"
echo 'permit(principal in Group::"agents", action == Action::"ssh.read", resource);' > "$DIR/policies/p.cedar"
cat > "$DIR/secondkey.toml" <<CFG
listen = "127.0.0.1:$API_PORT"
data_dir = "$DIR/data"
policy_dir = "$DIR/policies"
[[principals]]
id = "agent:bench"
groups = ["agents"]
token_sha256 = "$(printf %s bench-token-0123456789 | sha256sum | cut -d' ' -f1)"
[ssh_gateway]
listen = "127.0.0.1:$GW_PORT"
host_key_file = "$DIR/gw_host"
[[ssh_gateway.keys]]
principal = "agent:bench"
key = "$(cat "$DIR/agent.pub")"
[[ssh]]
name = "host"
address = "127.0.0.1:$SSHD_PORT"
host_key = "host $(cat "$DIR/sshd_host.pub")"
user = "$ME"
key_file = "$DIR/upstream"
max_sessions_per_connection = 32
CFG
"$BIN" serve --config "$DIR/secondkey.toml" 2>"$DIR/gateway.log" & GW_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/healthz" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $SSHD_PORT))" 2>/dev/null && break; sleep 0.1; done
printf '[127.0.0.1]:%s %s\n[127.0.0.1]:%s %s\n' "$GW_PORT" "$(cat "$DIR/gw_host.pub")" \
  "$SSHD_PORT" "$(cat "$DIR/sshd_host.pub")" > "$DIR/known_hosts"
uptime
DIR=$DIR N=$N ME=$ME GW_PORT=$GW_PORT SSHD_PORT=$SSHD_PORT python3 - <<'PY'
import os, subprocess, time, statistics, concurrent.futures as cf
d, n, me = os.environ["DIR"], int(os.environ["N"]), os.environ["ME"]
base = ["ssh", "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "StrictHostKeyChecking=yes",
        "-i", f"{d}/agent"]
direct = base + ["-p", os.environ["SSHD_PORT"], "-l", me, "127.0.0.1", "true"]
gateway = base + ["-p", os.environ["GW_PORT"], "-l", "host", "127.0.0.1", "true"]
def once(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"{cmd}: {r.returncode} {r.stderr.decode()}")
    return (time.perf_counter() - t) * 1000
for _ in range(10):  # warm up both paths (the gateway's upstream connection)
    once(direct); once(gateway)
a, b = [], []
for _ in range(n):
    a.append(once(direct)); b.append(once(gateway))
def q(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]
print(f"ssh host true, {n} runs each (ms): direct p50 {q(a,.5):.2f} p95 {q(a,.95):.2f}; "
      f"gateway p50 {q(b,.5):.2f} p95 {q(b,.95):.2f}; added p50 {q(b,.5)-q(a,.5):+.2f} ms")
# 50 concurrent exec sessions, each printing its own number.
def conc(i):
    cmd = base + ["-p", os.environ["GW_PORT"], "-l", "host", "127.0.0.1", f"echo session-{i}"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return r.returncode == 0 and r.stdout.decode() == f"session-{i}\n"
t = time.perf_counter()
with cf.ThreadPoolExecutor(50) as ex:
    ok = list(ex.map(conc, range(50)))
print(f"50 concurrent exec sessions: {sum(ok)} of 50 completed with their own output "
      f"in {(time.perf_counter()-t)*1000:.0f} ms; lost: {50-sum(ok)}")
PY
uptime
