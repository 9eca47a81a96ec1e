#!/usr/bin/env bash
# Soak test (not in CI): MINUTES (default 30) of mixed pgbench, SSH sessions and reconnect
# churn through one gateway, sampling its RSS, open fds and a latency probe every 10 s into
# bench/results/soak-<stamp>.csv and .png. Exit 1 when RSS or fds grew (bench/soak.py says
# by how much counts as growth) or the load failed.
#   ./bench/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
for pkg in postgresql-15 openssh-server python3-psycopg python3-matplotlib libssh-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || { echo "soak: install $pkg first (or run ./bench/run.sh once)" >&2; exit 2; }
done
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSP_TESTS=OFF >/dev/null
make -C build-bench -j"$(nproc)" sallyport >/dev/null
exec /usr/bin/python3 bench/soak.py --binary "$PWD/build-bench/sallyport" "$@"
