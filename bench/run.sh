#!/usr/bin/env bash
# The benchmarks: sallyport next to a direct connection and pgbouncer, in one run.
#   ./bench/run.sh [--seconds N] [--copy-mib N] [--idle N]
# Writes bench/results/<stamp>.md and .png and appends to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in postgresql-15 pgbouncer python3-psycopg python3-matplotlib cmake gcc libuv1-dev \
    libssl-dev libzstd-dev libsqlite3-dev libinih-dev libjansson-dev libpq-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null
make -C build-bench -j"$(nproc)" sallyport >/dev/null
exec /usr/bin/python3 bench/run.py --binary build-bench/sallyport "$@"
