#!/usr/bin/env bash
# sallyport in front of a local PostgreSQL and a local sshd, in one command.
#
#   ./deploy/quickstart.sh         start (or restart) everything and print how to connect
#   ./deploy/quickstart.sh stop    stop the gateway and the PostgreSQL and sshd it fronts
#   ./deploy/quickstart.sh reset   stop, then delete .quickstart/ (store, recordings, audit
#                                  trail, PostgreSQL) so the next start begins afresh
#
# What it does: installs missing packages, builds build/sallyport (release), and keeps all
# state in .quickstart/ at the top of the repository (git-ignored):
#   postgres/   a private PostgreSQL 15 on 127.0.0.1:55432, TLS with its own CA, hardened
#               as docs/hardening.md says, with the synthetic PHI schema (deploy/phi_schema.sql),
#               and the gateway's client certificate (gateway-client.pem/.key) without which
#               the ephemeral roles cannot log in
#   sshd/       a private OpenSSH sshd on 127.0.0.1:55022 (run as root only) that admits
#               nothing but certificates from the gateway's target CA (TrustedUserCAKeys), with
#               the login clinic-ops (a local user the script creates)
#   gateway.pem, gateway.key, gateway-ca.pem   the gateway's TLS certificate and its CA
#   ssh_host_ed25519_key, ssh_user_ca.pem, ssh_target_ca.pem   the gateway's SSH host key and
#               its two SSH CAs (`sallyport ca init`)
#   alice_ed25519, alice_ed25519-cert.pub, known_hosts   alice's demo SSH key, the certificate
#               the gateway issued for it, and the gateway's host key for the ssh client
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
SSHD_PORT=55022
GW_SSH_PORT=2222
SSH_LOGIN=clinic-ops

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

stop_sshd() {
    [[ -f $QS/sshd/sshd.pid ]] || return 0
    local pid
    pid=$(cat "$QS/sshd/sshd.pid")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping the demo sshd (pid $pid)"
        kill -TERM "$pid"
    fi
    rm -f "$QS/sshd/sshd.pid"
}

stop_all() {
    stop_gateway
    stop_sshd
    stop_postgres
}

# Host keys made once and kept: the configuration pins the sshd's (host_key_file), and ssh
# clients remember the gateway's. Also made for a .quickstart/ from before SSH was added.
ensure_ssh_keys() {
    mkdir -p "$QS/sshd"
    [[ -s $QS/sshd/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C phi-host -f "$QS/sshd/ssh_host_ed25519_key"
    [[ -s $QS/ssh_host_ed25519_key ]] ||
        ssh-keygen -q -t ed25519 -N '' -C sallyport-gateway -f "$QS/ssh_host_ed25519_key"
    printf '[127.0.0.1]:%s %s\n' "$GW_SSH_PORT" \
        "$(cut -d' ' -f1,2 "$QS/ssh_host_ed25519_key.pub")" >"$QS/known_hosts"
}

# The target: a private sshd that trusts only the gateway's target CA. sshd must run as root
# to log users in; as another user the SSH half of the demo is skipped.
start_sshd() {
    stop_sshd
    if [[ $EUID -ne 0 ]]; then
        say "not root: the demo sshd is not started (the PostgreSQL demo works as it is)"
        return 0
    fi
    id "$SSH_LOGIN" >/dev/null 2>&1 || useradd -m -s /bin/bash "$SSH_LOGIN"
    # Without PAM, sshd refuses a locked account ('!') even with a valid certificate.
    usermod -p '*' "$SSH_LOGIN"
    cli ca show --target-ca >"$QS/sshd/trusted_user_ca.pub"
    cat >"$QS/sshd/sshd_config" <<CONF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $QS/sshd/ssh_host_ed25519_key
PidFile $QS/sshd/sshd.pid
TrustedUserCAKeys $QS/sshd/trusted_user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowTcpForwarding yes
LogLevel VERBOSE
Subsystem sftp internal-sftp
CONF
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    say "starting the demo sshd (the target phi-host) on 127.0.0.1:$SSHD_PORT"
    /usr/sbin/sshd -f "$QS/sshd/sshd_config" -E "$QS/sshd/sshd.log" ||
        die "sshd did not start; see $QS/sshd/sshd.log"
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
    say "starting sallyport on 127.0.0.1:$GW_PORT (PostgreSQL) and 127.0.0.1:$GW_SSH_PORT (SSH)"
    # Recording keys (master key, signing key) and the SSH CAs: made once, kept across runs
    # (both commands are idempotent).
    "$BIN" -c "$CONF" keys init >>"$QS/sallyport.log" 2>&1 ||
        die "cannot create the recording keys; see $QS/sallyport.log"
    "$BIN" -c "$CONF" ca init >>"$QS/sallyport.log" 2>&1 ||
        die "cannot create the SSH CAs; see $QS/sallyport.log"
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
        ".quickstart/sshd/" "the demo sshd's host key, configuration and log" \
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
    if ! grep -q '^  #[0-9]* ops,' <<<"$shown"; then
        say "granting alice the ops role (SSH as $SSH_LOGIN on phi-host)"
        cli grant alice ops --reason "quickstart: look after the PHI host" >/dev/null
    fi
    [[ -s $QS/alice_ed25519 ]] ||
        ssh-keygen -q -t ed25519 -N '' -C alice-quickstart -f "$QS/alice_ed25519"
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

    sp_ensure_packages "${SP_BUILD_PACKAGES[@]}" "${SP_POSTGRES_PACKAGES[@]}" \
        "${SP_SSH_PACKAGES[@]}" ||
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
    ensure_ssh_keys
    start_gateway
    start_sshd
    seed_demo
    local token
    token=$(cli cred issue alice | head -n 1)
    cli cred issue alice --ssh-key "$QS/alice_ed25519.pub" --force >/dev/null

    cat <<EOF

sallyport is running on 127.0.0.1:$GW_PORT in front of PostgreSQL on 127.0.0.1:$PG_PORT,
and on 127.0.0.1:$GW_SSH_PORT in front of sshd on 127.0.0.1:$SSHD_PORT.
Configuration: conf/sallyport.ini    log: .quickstart/sallyport.log

Connect as alice (the token is valid for 15 minutes; \`build/sallyport -c conf/sallyport.ini cred issue alice\` makes another):

  PGPASSWORD='$token' psql "host=127.0.0.1 port=$GW_PORT user=alice dbname=clinic sslmode=verify-full sslrootcert=.quickstart/gateway-ca.pem"

  clinic=> SELECT mrn, given_name, family_name FROM patients ORDER BY id LIMIT 5;

Or reach the host phi-host over SSH as $SSH_LOGIN (the certificate in
.quickstart/alice_ed25519-cert.pub is valid for 15 minutes;
\`build/sallyport -c conf/sallyport.ini cred issue alice --ssh-key .quickstart/alice_ed25519.pub --force\`
renews it):

  ssh -p $GW_SSH_PORT -i .quickstart/alice_ed25519 -o UserKnownHostsFile=.quickstart/known_hosts $SSH_LOGIN+phi-host@127.0.0.1

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
