#!/bin/sh
# Does PostgreSQL accept a SCRAM verifier computed by sallyport, and does the password it was
# made from then log in through libpq (psql)?
#
#   pg_scram_verifier.sh VERIFIER PASSWORD
#
# Run by test_scram (verifier_logs_in_to_postgres). Starts a throwaway PostgreSQL 15 in a temp
# dir listening on a Unix socket only (no TCP), as the unprivileged user `nobody` when run as
# root. Exit 0: logged in; 1: refused or broken; 77: no PostgreSQL here (the test is skipped).
set -u
verifier=$1
password=$2
bindir=${SP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && command -v psql >/dev/null || exit 77

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

dir=$(mktemp -d /tmp/sp-scram-pg.XXXXXX) || exit 1
[ "$(id -u)" = 0 ] && chown nobody "$dir"
cleanup() {
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT

as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log"; exit 1; }
cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
EOF
as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-c listen_addresses='' -k $dir -c password_encryption=scram-sha-256" start >/dev/null ||
    { cat "$dir/pg.log"; exit 1; }

as_pg psql -h "$dir" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
    -c "CREATE ROLE sp_verifier_test LOGIN PASSWORD '$verifier'" || exit 1
# PostgreSQL must have stored the verifier as given, not hashed it again as a password.
stored=$(as_pg psql -h "$dir" -U postgres -d postgres -qAt \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'sp_verifier_test'")
[ "$stored" = "$verifier" ] || { echo "stored verifier differs: $stored"; exit 1; }

who=$(PGPASSWORD=$password as_pg psql -h "$dir" -U sp_verifier_test -d postgres -qAt \
    -c "SELECT current_user") || exit 1
[ "$who" = sp_verifier_test ] || exit 1
# and a wrong password is refused
if PGPASSWORD=${password}x as_pg psql -h "$dir" -U sp_verifier_test -d postgres -qAt \
    -c "SELECT 1" >/dev/null 2>&1; then
    echo "wrong password was accepted"
    exit 1
fi
exit 0
