#!/bin/sh
# A throwaway PostgreSQL 15 holding one role whose password is a SCRAM verifier computed by
# sallyport, for test_scram (verifier_in_postgres). It listens on a Unix socket in DIR only (no
# TCP) and runs as the unprivileged user `nobody` when started by root.
#
#   pg_scram_verifier.sh start DIR VERIFIER   initdb, start, CREATE ROLE sp_verifier_test
#   pg_scram_verifier.sh login DIR PASSWORD   psql (libpq) logs in with the password; a wrong
#                                             one is refused
#   pg_scram_verifier.sh stop DIR             stop the server and remove DIR
#
# Exit 0: done; 1: refused or broken; 77: no PostgreSQL 15 here (the test is skipped).
set -u
mode=$1
dir=$2
bindir=${SP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
have_pg() {
    [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && command -v psql >/dev/null
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

case $mode in
start)
    verifier=$3
    have_pg || exit 77
    [ "$(id -u)" = 0 ] && chown nobody "$dir"
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log"; exit 1; }
    cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
EOF
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
        -o "-c listen_addresses='' -k $dir -c password_encryption=scram-sha-256" start \
        >/dev/null || { cat "$dir/pg.log"; exit 1; }
    as_pg psql -h "$dir" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
        -c "CREATE ROLE sp_verifier_test LOGIN PASSWORD '$verifier'" || exit 1
    # PostgreSQL must keep the verifier as given, not hash it again as if it were a password
    stored=$(as_pg psql -h "$dir" -U postgres -d postgres -qAt \
        -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'sp_verifier_test'")
    [ "$stored" = "$verifier" ] || { echo "stored verifier differs: $stored"; exit 1; }
    ;;
login)
    password=$3
    have_pg || exit 77
    who=$(PGPASSWORD=$password as_pg psql -h "$dir" -U sp_verifier_test -d postgres -qAt \
        -c "SELECT current_user") || exit 1
    [ "$who" = sp_verifier_test ] || exit 1
    if PGPASSWORD=${password}x as_pg psql -h "$dir" -U sp_verifier_test -d postgres -qAt \
        -c "SELECT 1" >/dev/null 2>&1; then
        echo "wrong password was accepted"
        exit 1
    fi
    ;;
stop)
    [ -d "$dir/data" ] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|login|stop DIR [VERIFIER|PASSWORD]" >&2
    exit 1
    ;;
esac
exit 0
