# Sourced by tests/run.sh and deploy/quickstart.sh: install the Debian packages this project
# needs, only those `dpkg -s` reports missing, running `apt-get update` once before.
# As root it installs directly; otherwise through `sudo -n` if that works without a
# password; otherwise it names what is missing and fails.

SP_BUILD_PACKAGES=(build-essential cmake pkg-config libuv1-dev libssl-dev libzstd-dev
    libsqlite3-dev libinih-dev libjansson-dev libpq-dev libssh-dev openssl)
SP_POSTGRES_PACKAGES=(postgresql-15 postgresql-client-15)
SP_SSH_PACKAGES=(openssh-server openssh-client)
SP_TEST_PACKAGES=(libcmocka-dev python3-pytest python3-psycopg python3-paramiko clang
    openssh-server openssh-client rsync tmux)

sp_ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "installing missing packages: ${missing[*]}"
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        if sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "missing packages and no root: sudo apt-get install ${missing[*]}" >&2
            return 1
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}"
}
