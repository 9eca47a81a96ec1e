#!/usr/bin/env bash
# The whole test suite, from a fresh clone, as root in CI or as a developer:
#   1. install missing Debian packages (only what `dpkg -s` says is missing)
#   2. build two trees: build/ (release, unit tests) and build-asan/ (ASan + UBSan)
#   3. ctest in both trees
#   4. the integration suite (tests/integration, real PostgreSQL 15) against the sanitizer
#      build, then against the release build (SP_TEST_BOTH=0 skips the second run)
#   5. tests/fuzz/run.sh 30, when it exists
# Ends with one line `N passed, N failed` summing every stage; exits non-zero on any failure.
#
# Environment: SP_TEST_BOTH (default 1), SP_JOBS (parallel make jobs, default nproc),
# PYTEST_ARGS (extra arguments for pytest, e.g. "-k copy -x").
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

JOBS=${SP_JOBS:-$(nproc)}
SP_TEST_BOTH=${SP_TEST_BOTH:-1}
PYTHON=/usr/bin/python3
RESULTS=$(mktemp -d /tmp/sallyport-results.XXXXXX)
PASSED=0
FAILED=0
FAILED_STAGES=()
START=$SECONDS

# shellcheck source=tests/lib/packages.sh
source "$REPO/tests/lib/packages.sh"

stage() { printf '\n=== %s (%ds elapsed)\n' "$*" $((SECONDS - START)); }

record() { # STAGE PASSED FAILED
    PASSED=$((PASSED + $2))
    FAILED=$((FAILED + $3))
    [[ $3 -gt 0 ]] && FAILED_STAGES+=("$1")
    echo "--- $1: $2 passed, $3 failed"
}

# Counts from a JUnit XML file (ctest and pytest both write one): "passed failed".
junit_counts() {
    "$PYTHON" - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0")
    sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = failed = skipped = 0
for s in suites:
    total += int(s.get("tests", 0))
    failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
    skipped += int(s.get("skipped", 0)) + int(s.get("disabled", 0) or 0)
print(total - failed - skipped, failed)
EOF
}

build_tree() { # DIR CMAKE_ARGS...
    local dir=$1
    shift
    stage "build $dir"
    if cmake -S . -B "$dir" -DSP_TESTS=ON "$@" >"$RESULTS/$dir-cmake.log" 2>&1 &&
        make -C "$dir" -j"$JOBS" >"$RESULTS/$dir-make.log" 2>&1; then
        record "build $dir" 1 0
        return 0
    fi
    tail -n 60 "$RESULTS/$dir-cmake.log" "$RESULTS/$dir-make.log"
    record "build $dir" 0 1
    return 1
}

run_ctest() { # DIR
    local dir=$1 xml=$RESULTS/ctest-$1.xml
    stage "ctest $dir"
    ctest --test-dir "$dir" --output-on-failure --timeout 120 --output-junit "$xml"
    local rc=$? counts
    counts=$(junit_counts "$xml")
    set -- $counts
    # ctest failing without a test failure (e.g. a crash before any test) still counts.
    if [[ $rc -ne 0 && $2 -eq 0 ]]; then
        record "ctest $dir" "$1" 1
    else
        record "ctest $dir" "$1" "$2"
    fi
}

run_pytest() { # LABEL BINARY
    local label=$1 bin=$2 xml=$RESULTS/pytest-$1.xml
    stage "integration suite against $bin"
    # shellcheck disable=SC2086
    SALLYPORT_BIN="$bin" timeout --signal=INT --kill-after=30 600 \
        "$PYTHON" -m pytest -p no:cacheprovider -q -rfE --junitxml="$xml" \
        tests/integration ${PYTEST_ARGS:-} </dev/null
    local rc=$? counts
    counts=$(junit_counts "$xml")
    set -- $counts
    if [[ $rc -ne 0 && $2 -eq 0 ]]; then
        record "pytest $label" "$1" 1
    else
        record "pytest $label" "$1" "$2"
    fi
}

stage "packages"
if sp_ensure_packages "${SP_BUILD_PACKAGES[@]}" "${SP_POSTGRES_PACKAGES[@]}" \
    "${SP_TEST_PACKAGES[@]}"; then
    record packages 1 0
else
    record packages 0 1
fi

release_ok=0
asan_ok=0
build_tree build -DCMAKE_BUILD_TYPE=Release && release_ok=1
build_tree build-asan -DSP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug && asan_ok=1

[[ $release_ok -eq 1 ]] && run_ctest build
if [[ $asan_ok -eq 1 ]]; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_ctest build-asan
fi

if [[ $asan_ok -eq 1 ]]; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_pytest asan "$REPO/build-asan/sallyport"
fi
if [[ $release_ok -eq 1 && $SP_TEST_BOTH == 1 ]]; then
    run_pytest release "$REPO/build/sallyport"
fi

if [[ -x tests/fuzz/run.sh ]]; then
    stage "fuzz (30 s per target)"
    if tests/fuzz/run.sh 30 </dev/null; then
        record fuzz 1 0
    else
        record fuzz 0 1
    fi
fi

rm -rf "$RESULTS"
echo
[[ ${#FAILED_STAGES[@]} -gt 0 ]] && echo "failed stages: ${FAILED_STAGES[*]}"
echo "total time: $((SECONDS - START))s"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
