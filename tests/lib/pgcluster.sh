#!/usr/bin/env bash
# A private, hardened PostgreSQL 15 cluster for the integration tests and the quickstart.
#
#   pgcluster.sh ca DIR NAME              DIR/NAME.pem + DIR/NAME.key: an ECDSA P-256 test CA
#   pgcluster.sh cert DIR NAME CA         DIR/NAME.pem + DIR/NAME.key signed by DIR/CA.*,
#                                         SAN IP:127.0.0.1, DNS:localhost (a server cert)
#   pgcluster.sh up STATE PORT ADMIN_PASSWORD
#                                         initdb (as an unprivileged user), TLS, hardened
#                                         pg_hba, roles, database clinic with the PHI schema;
#                                         start on 127.0.0.1:PORT, unix socket in STATE/pg
#   pgcluster.sh start STATE | stop STATE start or stop an existing cluster
#   pgcluster.sh running STATE            exit 0 if the cluster is running
#
# The hardening is docs/hardening.md applied with 127.0.0.1 as the gateway's address:
# - the managed group (sallyport_managed) is admitted only over TLS from the gateway's
#   address, with SCRAM *and* the gateway's client certificate (clientcert=verify-ca), and
#   rejected everywhere else. An ephemeral role can change its own password, so the
#   password alone must never be enough to log in directly;
# - the minting admin has CREATEROLE and pg_signal_backend, a CONNECTION LIMIT, and is
#   admitted only to its default database (clinic) over TLS from the gateway's address;
# - PUBLIC loses CONNECT and TEMP on every non-template database (clinic and postgres).
# The superuser `postgres` is reachable only through the unix socket, whose directory is
# private to the cluster's owner (and root).
#
# Layout under STATE:
#   ca.pem/ca.key                 the cluster's CA (signs the server certificate)
#   gateway-client-ca.pem/.key    the CA PostgreSQL trusts for client certificates
#   gateway-client.pem/.key       the gateway's client certificate (upstream_cert and
#                                 upstream_key of the [target]); keys are owner-only
#   pg/                           data, socket, log, server cert, the client CA copy
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PG_OS_USER=${SP_PG_OS_USER:-sallyport-test}

die() {
    echo "pgcluster: $*" >&2
    exit 1
}

make_ca() { # DIR NAME
    local dir=$1 name=$2
    [[ -s $dir/$name.pem && -s $dir/$name.key ]] && return 0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.pem" -days 30 \
        -subj "/CN=sallyport test $name" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null ||
        die "openssl could not make the CA $dir/$name.pem"
    chmod 600 "$dir/$name.key"
}

make_cert() { # DIR NAME CA
    local dir=$1 name=$2 ca=$3
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=localhost" 2>/dev/null ||
        die "openssl could not make a key and request for $dir/$name"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca.key" \
        -CAcreateserial -out "$dir/$name.pem" -days 30 -sha256 -extfile "$dir/$name.ext" \
        2>/dev/null || die "openssl could not sign $dir/$name.pem with $dir/$ca.pem"
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    chmod 600 "$dir/$name.key"
}

# The gateway's client certificate comes from its own CA, not from the cluster's CA: with
# clientcert=verify-ca PostgreSQL accepts ANY certificate its ssl_ca_file signed (it does not
# look at the name), so that CA must sign nothing but gateway client certificates. The
# cluster's CA signs server certificates; trusting it for clients would let whoever holds
# any of those keys (a server's) pass as the gateway.
make_client_cert() { # DIR NAME CA
    local dir=$1 name=$2 ca=$3
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=sallyport-gateway" 2>/dev/null ||
        die "openssl could not make a key and request for $dir/$name"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
        >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.pem" -CAkey "$dir/$ca.key" \
        -CAcreateserial -out "$dir/$name.pem" -days 30 -sha256 -extfile "$dir/$name.ext" \
        2>/dev/null || die "openssl could not sign $dir/$name.pem with $dir/$ca.pem"
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    chmod 600 "$dir/$name.key"
}

# PostgreSQL refuses to run as root: as root we run it as an unprivileged user (created when
# missing); as anyone else, as ourselves.
ensure_os_user() {
    [[ $EUID -ne 0 ]] && return 0
    id "$PG_OS_USER" >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER" ||
        die "cannot create the unprivileged user $PG_OS_USER for PostgreSQL"
}

as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

pg_chown() {
    [[ $EUID -eq 0 ]] && chown -R "$PG_OS_USER" "$@"
    return 0
}

write_conf() { # PGDIR PORT
    local pg=$1 port=$2
    cat >>"$pg/data/postgresql.conf" <<EOF

# --- sallyport test cluster ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pg'
unix_socket_permissions = 0700
ssl = on
ssl_cert_file = '$pg/server.pem'
ssl_key_file = '$pg/server.key'
ssl_ca_file = '$pg/gateway-client-ca.pem'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_connections = on
log_disconnections = on
log_line_prefix = '%m [%p] %q%u@%d app=%a '
EOF
    # First match wins; 127.0.0.1 is the gateway's address (it shares loopback with the
    # tests). The first six lines are docs/hardening.md step 2, in its order.
    cat >"$pg/data/pg_hba.conf" <<'EOF'
# TYPE    DATABASE  USER                ADDRESS        METHOD
# The minting admin: its default database only, over TLS, from the gateway's address.
hostssl   clinic    sallyport_admin     127.0.0.1/32   scram-sha-256
local     all       sallyport_admin                    reject
host      all       sallyport_admin     all            reject
# Ephemeral roles: TLS from the gateway's address, SCRAM and the gateway's client
# certificate. A role may change its own password; without the gateway's key that
# password does not get in.
hostssl   all       +sallyport_managed  127.0.0.1/32   scram-sha-256  clientcert=verify-ca
local     all       +sallyport_managed                 reject
host      all       +sallyport_managed  all            reject
# Test-only: the superuser over the unix socket, whose directory is mode 0700 (the harness
# and this script set up and inspect the cluster this way). Other socket users: refused.
local     all       postgres                           trust
local     all       all                                reject
# Test-only: any other role (bench_direct, the direct leg of bench/pg_select.sh; the
# outsider of test_target_hardening.py) over TLS with SCRAM; which database it may open
# is then decided by CONNECT privileges, which PUBLIC does not have.
hostssl   all       all                 127.0.0.1/32   scram-sha-256
host      all       all                 all            reject
EOF
}

setup_sql() { # PGDIR PORT ADMIN_PASSWORD
    local pg=$1 port=$2 pw=$3
    local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg" -p "$port" -U postgres)
    as_pg "${psql[@]}" -d postgres -v admin_password="$pw" <<'EOF'
-- docs/hardening.md step 1.
CREATE ROLE sallyport_admin LOGIN CREATEROLE
    NOSUPERUSER NOCREATEDB NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 10 PASSWORD :'admin_password';
GRANT pg_signal_backend TO sallyport_admin;
CREATE ROLE sallyport_managed NOLOGIN;
CREATE ROLE phi_read NOLOGIN;
CREATE ROLE phi_write NOLOGIN;
CREATE DATABASE clinic;
-- Every non-template database; template1 keeps PUBLIC CONNECT (see docs/hardening.md).
REVOKE CONNECT, TEMPORARY ON DATABASE clinic FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE clinic TO sallyport_admin, phi_read, phi_write;
EOF
    as_pg "${psql[@]}" -d clinic -f "$REPO/deploy/phi_schema.sql" >/dev/null
}

cmd_start() { # STATE
    local pg=$1/pg
    as_pg "$PGBIN/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w -t 60 start >/dev/null ||
        die "PostgreSQL did not start; see $pg/postgres.log"
}

cmd_running() { # STATE
    local pg=$1/pg
    [[ -f $pg/data/postmaster.pid ]] || return 1
    as_pg "$PGBIN/pg_ctl" -D "$pg/data" status >/dev/null 2>&1
}

cmd_stop() { # STATE
    local pg=$1/pg
    [[ -f $pg/data/postmaster.pid ]] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$pg/data" -m fast -w -t 60 stop >/dev/null || true
}

cmd_up() { # STATE PORT ADMIN_PASSWORD
    local state=$1 port=$2 pw=$3
    local pg=$state/pg
    [[ -x $PGBIN/initdb ]] || die "PostgreSQL 15 is not installed ($PGBIN/initdb missing)"
    [[ ${#pg} -lt 90 ]] || die "$pg is too long for a unix socket path; use a shorter directory"
    ensure_os_user
    mkdir -p "$pg"
    # The cluster's user must traverse STATE (keys in it stay owner-only files).
    [[ $EUID -eq 0 ]] && chmod a+x "$state"
    make_ca "$state" ca
    make_cert_in "$state" "$pg"
    make_ca "$state" gateway-client-ca
    make_client_cert "$state" gateway-client gateway-client-ca
    # PostgreSQL reads its own copy: files under STATE may be owner-only.
    cp "$state/gateway-client-ca.pem" "$pg/gateway-client-ca.pem"
    pg_chown "$pg"
    chmod 700 "$pg"
    as_pg test -w "$pg" || die "$pg is not reachable by the PostgreSQL user $PG_OS_USER (a parent directory is private); use a state directory under /tmp or /var/tmp"
    as_pg "$PGBIN/initdb" -D "$pg/data" -U postgres --auth-local=trust --auth-host=reject \
        -E UTF8 --locale=C.UTF-8 >"$pg/initdb.log" 2>&1 ||
        die "initdb failed; see $pg/initdb.log"
    write_conf "$pg" "$port"
    pg_chown "$pg"
    cmd_start "$state"
    setup_sql "$pg" "$port" "$pw"
}

# make_cert wants CA and leaf in one directory; the cluster keeps its CA one level up.
make_cert_in() { # STATE PGDIR
    local state=$1 pg=$2
    make_cert "$state" server ca
    mv "$state/server.pem" "$state/server.key" "$pg/"
}

# STATE may be reached through a symlink (the quickstart links it from a private directory);
# the PostgreSQL user must be given the real path.
real_state() {
    mkdir -p "$1"
    realpath "$1"
}

case ${1:-} in
ca) make_ca "$2" "$3" ;;
cert) make_cert "$2" "$3" "$4" ;;
up) cmd_up "$(real_state "$2")" "$3" "$4" ;;
start) cmd_start "$(real_state "$2")" ;;
stop) [[ -e $2 ]] && cmd_stop "$(realpath "$2")" ;;
running) [[ -e $2 ]] && cmd_running "$(realpath "$2")" ;;
*) die "usage: pgcluster.sh ca DIR NAME | cert DIR NAME CA | up STATE PORT ADMIN_PASSWORD | start STATE | stop STATE | running STATE" ;;
esac
