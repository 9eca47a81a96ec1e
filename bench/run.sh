#!/usr/bin/env bash
# The benchmarks: sallyport next to a direct connection and pgbouncer, in one run.
#   ./bench/run.sh [--quick] [--seconds N] [--copy-mib N] [--ssh-mib N] [--idle N] ...
# (./bench/run.sh --help lists them.) Run as root on an otherwise quiet machine: it starts
# PostgreSQL and pgbouncer as an unprivileged user, and an sshd and the gateways as root.
# Writes bench/results/<stamp>.md and .png and appends the table to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in postgresql-15 pgbouncer openssh-server openssh-client python3-psycopg \
    python3-matplotlib cmake gcc libuv1-dev libssl-dev libzstd-dev libsqlite3-dev \
    libinih-dev libjansson-dev libpq-dev libssh-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null
make -C build-bench -j"$(nproc)" sallyport >/dev/null
SALLYPORT_BIN=$PWD/build-bench/sallyport exec /usr/bin/python3 bench/run.py "$@"
