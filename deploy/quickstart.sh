#!/usr/bin/env bash
# sallyport in front of a local PostgreSQL, in one command.
#
#   ./deploy/quickstart.sh        (re)start everything and print how to connect
#   ./deploy/quickstart.sh stop   stop the gateway and the PostgreSQL it fronts
#
# What it does: installs missing packages, builds build/sallyport (release), and keeps all
# state in .quickstart/ at the top of the repository (git-ignored):
#   postgres/   a private PostgreSQL 15 on 127.0.0.1:55432, TLS with its own CA, hardened
#               as docs/hardening.md says, with the synthetic PHI schema (deploy/phi_schema.sql)
#   gateway.pem, gateway.key, gateway-ca.pem   the gateway's TLS certificate and its CA
#   gateway.secret, admin.dsn                  owner-only secrets named by the config
#   sallyport.db, recordings/, audit/          the store, session recordings, audit trail
#   sallyport.pid, sallyport.log               the running gateway
# The gateway runs with conf/sallyport.ini, unchanged: its relative paths point here.
# Re-running stops what runs and starts afresh with a new PostgreSQL and store.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
QS=$REPO/.quickstart
CONF=$REPO/conf/sallyport.ini
BIN=$REPO/build/sallyport
PG_PORT=55432
GW_PORT=6432

# shellcheck source=tests/lib/packages.sh
source "$REPO/tests/lib/packages.sh"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'quickstart: %s\n' "$*" >&2
    exit 1
}

stop_gateway() {
    [[ -f $QS/sallyport.pid ]] || return 0
    local pid
    pid=$(cat "$QS/sallyport.pid")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping sallyport (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 350); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && die "sallyport (pid $pid) did not stop within 35s"
    fi
    rm -f "$QS/sallyport.pid"
}

stop_postgres() {
    [[ -e $QS/postgres ]] || return 0
    say "stopping PostgreSQL"
    "$REPO/tests/lib/pgcluster.sh" stop "$QS/postgres"
}

stop_all() {
    stop_gateway
    stop_postgres
}

# The PostgreSQL user must reach its data directory; a repository under a private home
# directory (or a long path, too long for a unix socket) gets its cluster under /var/tmp,
# linked from .quickstart/postgres.
postgres_state_dir() {
    local wanted=$QS/postgres
    local probe_user=sallyport-test
    if [[ $EUID -eq 0 ]]; then
        id "$probe_user" >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin "$probe_user"
        if [[ ${#wanted} -lt 80 ]] && runuser -u "$probe_user" -- test -x "$QS"; then
            mkdir -p "$wanted"
            return 0
        fi
    elif [[ ${#wanted} -lt 80 ]]; then
        mkdir -p "$wanted"
        return 0
    fi
    local outside=/var/tmp/sallyport-quickstart-$EUID
    rm -rf "$outside"
    mkdir -p "$outside"
    chmod 711 "$outside"
    ln -s "$outside" "$wanted"
}

make_gateway_files() {
    "$REPO/tests/lib/pgcluster.sh" ca "$QS" gateway-ca
    "$REPO/tests/lib/pgcluster.sh" cert "$QS" gateway gateway-ca
    (umask 077 && head -c 48 /dev/urandom >"$QS/gateway.secret")
    (umask 077 && printf 'host=127.0.0.1 port=%s user=sallyport_admin password=%s dbname=clinic sslmode=verify-full sslrootcert=%s\n' \
        "$PG_PORT" "$1" "$QS/postgres/ca.pem" >"$QS/admin.dsn")
    mkdir -p "$QS/recordings" "$QS/audit"
    chmod 700 "$QS/recordings" "$QS/audit"
}

start_gateway() {
    say "starting sallyport on 127.0.0.1:$GW_PORT"
    "$BIN" serve -c "$CONF" </dev/null >>"$QS/sallyport.log" 2>&1 &
    echo $! >"$QS/sallyport.pid"
    for _ in $(seq 1 100); do
        kill -0 "$(cat "$QS/sallyport.pid")" 2>/dev/null ||
            die "sallyport exited at start; see $QS/sallyport.log:
$(tail -n 20 "$QS/sallyport.log")"
        (exec 3<>/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && return 0
        sleep 0.1
    done
    die "sallyport did not listen on 127.0.0.1:$GW_PORT within 10s; see $QS/sallyport.log"
}

cli() { "$BIN" -c "$CONF" "$@"; }

main() {
    if [[ ${1:-} == stop ]]; then
        stop_all
        say "stopped"
        return 0
    fi
    [[ -z ${1:-} ]] || die "usage: ./deploy/quickstart.sh [stop]"

    sp_ensure_packages "${SP_BUILD_PACKAGES[@]}" "${SP_POSTGRES_PACKAGES[@]}" ||
        die "cannot install the packages above"
    say "building build/sallyport (release)"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null
    make -C build -j"$(nproc)" >/dev/null

    stop_all
    if [[ -L $QS/postgres ]]; then
        rm -rf "$(readlink "$QS/postgres")"
    fi
    rm -rf "$QS"
    mkdir -p "$QS"
    # Traversable so the PostgreSQL user can reach postgres/; every secret in it is a
    # an owner-only file and recordings/ and audit/ are owner-only directories.
    chmod 711 "$QS"
    postgres_state_dir

    say "starting a private PostgreSQL 15 on 127.0.0.1:$PG_PORT (state in .quickstart/postgres)"
    local admin_password
    admin_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    "$REPO/tests/lib/pgcluster.sh" up "$QS/postgres" "$PG_PORT" "$admin_password"
    make_gateway_files "$admin_password"
    start_gateway

    say "creating identities and a grant"
    cli identity add alice --kind human --owner "quickstart" --purpose "on-call DBA (quickstart demo)" >/dev/null
    cli identity add etl-nightly --kind service --owner "alice" --purpose "nightly ETL (quickstart demo)" >/dev/null
    cli grant alice reader --reason "quickstart: read the synthetic PHI" >/dev/null
    local token
    token=$(cli cred issue alice | head -n 1)

    cat <<EOF

sallyport is running on 127.0.0.1:$GW_PORT in front of PostgreSQL on 127.0.0.1:$PG_PORT.
Configuration: conf/sallyport.ini    log: .quickstart/sallyport.log

Connect as alice (the token is valid for 15 minutes; \`$BIN -c conf/sallyport.ini cred issue alice\` makes another):

  PGPASSWORD='$token' psql "host=127.0.0.1 port=$GW_PORT user=alice dbname=clinic sslmode=verify-full sslrootcert=.quickstart/gateway-ca.pem"

  clinic=> SELECT mrn, given_name, family_name FROM patients ORDER BY id LIMIT 5;

Then look at what was recorded:

  build/sallyport -c conf/sallyport.ini sessions
  build/sallyport -c conf/sallyport.ini replay SESSION_ID

Take the access away (live sessions end, the upstream role is dropped):

  build/sallyport -c conf/sallyport.ini revoke alice reader --reason "demo over"

Stop everything:

  ./deploy/quickstart.sh stop
EOF
}

main "$@"
