#!/usr/bin/env bash
# sallyport in front of a local PostgreSQL, in one command.
#
#   ./deploy/quickstart.sh         start (or restart) everything and print how to connect
#   ./deploy/quickstart.sh stop    stop the gateway and the PostgreSQL it fronts
#   ./deploy/quickstart.sh reset   stop, then delete .quickstart/ (store, recordings, audit
#                                  trail, PostgreSQL) so the next start begins afresh
#
# What it does: installs missing packages, builds build/sallyport (release), and keeps all
# state in .quickstart/ at the top of the repository (git-ignored):
#   postgres/   a private PostgreSQL 15 on 127.0.0.1:55432, TLS with its own CA, hardened
#               as docs/hardening.md says, with the synthetic PHI schema (deploy/phi_schema.sql),
#               and the gateway's client certificate (gateway-client.pem/.key) without which
#               the ephemeral roles cannot log in
#   gateway.pem, gateway.key, gateway-ca.pem   the gateway's TLS certificate and its CA
#   gateway.secret, admin.dsn                  owner-only secrets named by the config
#   master.keys, signing.pem                   recording keys (`sallyport keys init`)
#   sallyport.db, recordings/, audit/          the store, session recordings, audit trail
#   sallyport.pid, sallyport.log               the running gateway
# The gateway runs with conf/sallyport.ini, unchanged: its relative paths point here.
# Re-running restarts the gateway and keeps the PostgreSQL, the store, the recordings and the
# audit trail: the audit trail is append-only evidence, and only `reset` deletes it.
set -euo pipefail
# Everything created here is owner-only unless made otherwise on purpose: the log, the store,
# the recordings and the DSN file hold secrets or PHI.
umask 077
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
    "$REPO/tests/lib/pgcluster.sh" running "$QS/postgres" || return 0
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
    # Recording keys (master key, signing key): made once, kept across runs (idempotent).
    "$BIN" -c "$CONF" keys init >>"$QS/sallyport.log" 2>&1 ||
        die "cannot create the recording keys; see $QS/sallyport.log"
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

# Everything a restart needs; what a first run writes before the gateway first starts.
state_complete() {
    local f
    for f in admin.dsn gateway.pem gateway.key gateway-ca.pem gateway.secret \
        postgres/ca.pem postgres/gateway-client.pem postgres/gateway-client.key \
        postgres/pg/data/PG_VERSION; do
        [[ -s $QS/$f ]] || return 1
    done
}

# The store, a recording or an audit file: evidence that only `reset` may delete.
holds_evidence() {
    [[ -e $QS/sallyport.db ]] && return 0
    [[ -n $(find "$QS/recordings" "$QS/audit" -type f -print -quit 2>/dev/null) ]]
}

reset() {
    stop_all
    if [[ ! -e $QS && ! -L $QS ]]; then
        say "nothing to delete: .quickstart/ does not exist"
        return 0
    fi
    local cluster=.quickstart/postgres
    [[ -L $QS/postgres ]] && cluster=$(readlink "$QS/postgres")
    local recordings audit_files
    recordings=$(find "$QS/recordings" -type f -name '*.spr' 2>/dev/null | wc -l)
    audit_files=$(find "$QS/audit" -type f 2>/dev/null | wc -l)
    say "reset deletes, and nothing can bring back:"
    printf '      %-28s %s\n' \
        ".quickstart/sallyport.db" "the store: identities, grants, credentials, sessions index" \
        ".quickstart/recordings/" "$recordings session recording(s)" \
        ".quickstart/audit/" "the audit trail ($audit_files file(s))" \
        ".quickstart/ (the rest)" "the gateway's keys, certificates, secret, admin DSN and log" \
        "$cluster" "the PostgreSQL cluster with the clinic database"
    [[ -L $QS/postgres ]] && rm -rf "$cluster"
    rm -rf "$QS"
    say "deleted; ./deploy/quickstart.sh starts afresh"
}

fresh_setup() {
    if [[ -e $QS ]]; then
        say "removing an incomplete .quickstart/ from an earlier run (it holds no store, recordings or audit trail)"
        [[ -L $QS/postgres ]] && rm -rf "$(readlink "$QS/postgres")"
        rm -rf "$QS"
    fi
    mkdir -p "$QS"
    # Traversable so the PostgreSQL user can reach postgres/; every secret in it is an
    # owner-only file, and recordings/ and audit/ are owner-only directories.
    chmod 711 "$QS"
    postgres_state_dir

    say "starting a private PostgreSQL 15 on 127.0.0.1:$PG_PORT (state in .quickstart/postgres)"
    local admin_password
    admin_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    "$REPO/tests/lib/pgcluster.sh" up "$QS/postgres" "$PG_PORT" "$admin_password"
    make_gateway_files "$admin_password"
}

resume() {
    say "keeping .quickstart/ from an earlier run: its store, recordings and audit trail"
    say "(./deploy/quickstart.sh reset deletes them)"
    # Files from an earlier version of this script may have been made with a wider umask.
    chmod go-rwx "$QS"/sallyport.* "$QS/admin.dsn" "$QS/gateway.key" "$QS/gateway.secret" 2>/dev/null || true
    chmod 700 "$QS/recordings" "$QS/audit"
    if ! "$REPO/tests/lib/pgcluster.sh" running "$QS/postgres"; then
        say "starting PostgreSQL on 127.0.0.1:$PG_PORT (state in .quickstart/postgres)"
        "$REPO/tests/lib/pgcluster.sh" start "$QS/postgres"
    fi
}

# Idempotent: a re-run finds the demo identities and alice's grant in the kept store, and
# grants again only when the earlier grant was revoked or has expired.
seed_demo() {
    if ! cli identity show alice >/dev/null 2>&1; then
        say "creating identities and a grant"
        cli identity add alice --kind human --owner "quickstart" --purpose "on-call DBA (quickstart demo)" >/dev/null
    fi
    if ! cli identity show etl-nightly >/dev/null 2>&1; then
        cli identity add etl-nightly --kind service --owner "alice" --purpose "nightly ETL (quickstart demo)" >/dev/null
    fi
    local shown
    shown=$(cli identity show alice)
    if ! grep -q '^  #[0-9]* reader,' <<<"$shown"; then
        say "granting alice the reader role"
        cli grant alice reader --reason "quickstart: read the synthetic PHI" >/dev/null
    fi
}

main() {
    case ${1:-} in
    stop)
        stop_all
        say "stopped"
        return 0
        ;;
    reset)
        reset
        return 0
        ;;
    "") ;;
    *) die "usage: ./deploy/quickstart.sh [stop|reset]" ;;
    esac

    sp_ensure_packages "${SP_BUILD_PACKAGES[@]}" "${SP_POSTGRES_PACKAGES[@]}" ||
        die "cannot install the packages above"
    say "building build/sallyport (release)"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null
    make -C build -j"$(nproc)" >/dev/null

    stop_gateway
    if state_complete; then
        resume
    elif holds_evidence; then
        die ".quickstart/ holds a store, recordings or an audit trail, but not everything a
restart needs (made by an earlier version of this script, or damaged). Keep what you need
from it, then run ./deploy/quickstart.sh reset (it deletes .quickstart/) and start again."
    else
        stop_postgres
        fresh_setup
    fi
    start_gateway
    seed_demo
    local token
    token=$(cli cred issue alice | head -n 1)

    cat <<EOF

sallyport is running on 127.0.0.1:$GW_PORT in front of PostgreSQL on 127.0.0.1:$PG_PORT.
Configuration: conf/sallyport.ini    log: .quickstart/sallyport.log

Connect as alice (the token is valid for 15 minutes; \`build/sallyport -c conf/sallyport.ini cred issue alice\` makes another):

  PGPASSWORD='$token' psql "host=127.0.0.1 port=$GW_PORT user=alice dbname=clinic sslmode=verify-full sslrootcert=.quickstart/gateway-ca.pem"

  clinic=> SELECT mrn, given_name, family_name FROM patients ORDER BY id LIMIT 5;

Then look at what was recorded:

  build/sallyport -c conf/sallyport.ini sessions
  build/sallyport -c conf/sallyport.ini replay SESSION_ID

Take the access away (live sessions end, the upstream role is dropped):

  build/sallyport -c conf/sallyport.ini revoke alice reader --reason "demo over"

Stop everything (re-running keeps the store, recordings and audit trail):

  ./deploy/quickstart.sh stop

Delete all of it, evidence included, to start afresh:

  ./deploy/quickstart.sh reset
EOF
}

main "$@"
