#!/usr/bin/env bash
# pgbench -S through sallyport next to the same run against PostgreSQL directly, in one run.
# TLS on every leg: client -> PostgreSQL (direct), client -> sallyport -> PostgreSQL.
#
#   bench/pg_select.sh [CLIENTS] [SECONDS]      (default 8 clients, 20 s)
#
# Starts a private PostgreSQL (tests/lib/pgcluster.sh) and a gateway with recording on, both
# on loopback, and prints a Markdown table; also appends it to bench/results/pg_select.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CLIENTS=${1:-8}
SECONDS_RUN=${2:-20}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BIN=${SALLYPORT_BIN:-$REPO/build/sallyport}

[[ -x $BIN ]] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null && make -C build -j"$(nproc)" sallyport >/dev/null; }

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STATE=$(mktemp -d /tmp/sp-bench.XXXXXX)
PGPORT=$(free_port)
GWPORT=$(free_port)
GWPID=
cleanup() {
    [[ -n $GWPID ]] && kill "$GWPID" 2>/dev/null && wait "$GWPID" 2>/dev/null
    bash tests/lib/pgcluster.sh stop "$STATE" || true
    rm -rf "$STATE"
}
trap cleanup EXIT

ADMINPW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
DIRECTPW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
bash tests/lib/pgcluster.sh up "$STATE" "$PGPORT" "$ADMINPW"
SOCK=$STATE/pg
"$PGBIN/pgbench" -i -s 10 -q -h "$SOCK" -p "$PGPORT" -U postgres clinic >/dev/null 2>&1
"$PGBIN/psql" -X -q -h "$SOCK" -p "$PGPORT" -U postgres clinic -v pw="$DIRECTPW" <<'SQL'
GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO phi_read;
CREATE ROLE bench_direct LOGIN PASSWORD :'pw' IN ROLE phi_read;
SQL

bash tests/lib/pgcluster.sh ca "$STATE" gwca
bash tests/lib/pgcluster.sh cert "$STATE" gw gwca
head -c 32 /dev/urandom >"$STATE/secret"
chmod 600 "$STATE/secret"
printf 'host=127.0.0.1 port=%s user=sallyport_admin password=%s dbname=clinic sslmode=verify-full sslrootcert=%s\n' \
    "$PGPORT" "$ADMINPW" "$STATE/ca.pem" >"$STATE/admin.dsn"
chmod 600 "$STATE/admin.dsn"
cat >"$STATE/sallyport.ini" <<INI
[sallyport]
pg_listen = 127.0.0.1:$GWPORT
tls_cert = gw.pem
tls_key = gw.key
store = sqlite:state/store.db
recordings_dir = state/recordings
audit_dir = state/audit
gateway_secret_file = secret
master_key_file = master.keys
signing_key_file = signing.pem
log_level = warn

[target clinic]
address = 127.0.0.1:$PGPORT
database = clinic
upstream_ca = ca.pem
upstream_cert = gateway-client.pem
upstream_key = gateway-client.key
admin_dsn_file = admin.dsn

[role reader]
targets = clinic
db_roles = phi_read
INI
"$BIN" -c "$STATE/sallyport.ini" keys init >/dev/null
"$BIN" serve -c "$STATE/sallyport.ini" 2>"$STATE/gateway.log" &
GWPID=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$GWPORT") 2>/dev/null && break; sleep 0.1; done
"$BIN" -c "$STATE/sallyport.ini" identity add bench --kind service --owner bench --purpose "benchmark" >/dev/null
"$BIN" -c "$STATE/sallyport.ini" grant bench reader --reason "benchmark" >/dev/null
TOKEN=$("$BIN" -c "$STATE/sallyport.ini" cred issue bench --ttl 1h 2>/dev/null | head -1)

tps() { # LABEL PGBENCH-ARGS...
    local out
    out=$("$PGBIN/pgbench" -n -S -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" "$@" 2>&1)
    grep -q 'number of failed transactions: 0' <<<"$out" || { echo "$out" >&2; return 1; }
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}
DIRECT=$(PGPASSWORD=$DIRECTPW PGSSLMODE=require tps -h 127.0.0.1 -p "$PGPORT" -U bench_direct clinic)
GATEWAY=$(PGPASSWORD=$TOKEN PGSSLMODE=require tps -h 127.0.0.1 -p "$GWPORT" -U bench clinic)
RATIO=$(awk -v g="$GATEWAY" -v d="$DIRECT" 'BEGIN { printf "%.2f", g / d }')

{
    echo
    echo "### pgbench -S -c $CLIENTS -j 2 -T $SECONDS_RUN, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(git rev-parse --short HEAD)"
    echo
    echo "| path | TLS | recording | TPS | ratio to direct |"
    echo "|---|---|---|---:|---:|"
    echo "| direct PostgreSQL 15 | yes | - | $DIRECT | 1.00 |"
    echo "| through sallyport | both legs | on | $GATEWAY | $RATIO |"
} | tee -a bench/results/pg_select.md
