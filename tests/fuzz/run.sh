#!/bin/sh
# Builds the libFuzzer targets with clang into build-fuzz/ and runs each for SECONDS
# (default 30) over a temporary copy of its seed corpus (tests/fuzz/corpus/<target>/), so runs
# never grow the repository. Exits non-zero if any target crashes, leaks or times out, naming
# the target and the input that did it (kept in build-fuzz/fuzz-artifacts/).
#
#   tests/fuzz/run.sh [SECONDS]
set -u
seconds=${1:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$root/build-fuzz
artifacts=$build/fuzz-artifacts
targets="fuzz_pg_startup fuzz_pg_msg fuzz_scram fuzz_config fuzz_sshcert fuzz_audit fuzz_recording fuzz_sftp"

CC=clang cmake -S "$root" -B "$build" -DSP_FUZZ=ON -DSP_TESTS=OFF >/dev/null || exit 1
# shellcheck disable=SC2086
cmake --build "$build" -j "$(nproc)" --target $targets >/dev/null || {
    echo "run.sh: building the fuzz targets failed (cmake --build $build)" >&2
    exit 1
}

work=$(mktemp -d /tmp/sp-fuzz.XXXXXX) || exit 1
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"
failed=""
for t in $targets; do
    mkdir -p "$work/$t"
    cp "$root/tests/fuzz/corpus/$t/"* "$work/$t/" 2>/dev/null
    echo "== $t: ${seconds}s"
    if ! "$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
        -artifact_prefix="$artifacts/$t-" "$work/$t" >"$work/$t.log" 2>&1; then
        input=$(grep -o "Test unit written to .*" "$work/$t.log" | tail -1 | sed 's/Test unit written to //')
        echo "FAIL $t: input ${input:-unknown} (log follows)" >&2
        grep -A 30 "ERROR\|==ERROR\|runtime error\|deadly signal\|timeout" "$work/$t.log" | head -60 >&2
        failed="$failed $t"
    else
        tail -1 "$work/$t.log"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzzing failed:$failed" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash"
