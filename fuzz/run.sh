#!/usr/bin/env bash
# Builds every fuzz target once, then, for each target:
#   1. replays its saved reproducers (regressions/<target>/*), if any: a bug that is
#      still there fails the run (skip with FUZZ_SKIP_REGRESSIONS=1);
#   2. fuzzes it for SECONDS on corpus/<target> (grows, not committed) plus
#      seeds/<target> (committed); seeds the targets build with the project's own
#      encoders are written into corpus/<target> first.
# Exits non-zero if any target crashed (panic, failed assertion, overflow, OOM,
# timeout); crash inputs land in artifacts/<target>/.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]
# Environment:
#   CARGO_TARGET_DIR        build directory (default: fuzz/target)
#   FUZZ_TOOLCHAIN          rustup toolchain (default: nightly)
#   FUZZ_SKIP_REGRESSIONS=1 do not replay regressions/
#   FUZZ_TIMEOUT            seconds one input may take before it counts as a hang (10)
#   FUZZ_SANITIZER          cargo fuzz --sanitizer (default address; none builds faster)
#   FUZZ_DEV=1              unoptimised build (a clean build in ~3 min instead of ~10;
#                           fewer executions per second; the CI setting)
set -uo pipefail

secs=${1:?usage: run.sh SECONDS [TARGET...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
td=${CARGO_TARGET_DIR:-$here/target}
tc=${FUZZ_TOOLCHAIN:-nightly}
timeout_s=${FUZZ_TIMEOUT:-10}
logs=$here/artifacts/logs
mkdir -p "$logs"

if ! cargo "+$tc" fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing; installing it" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

features=(${FUZZ_SANITIZER:+--sanitizer "$FUZZ_SANITIZER"} ${FUZZ_DEV:+--dev})
all=(tx_decode fhir_validate fhir_search checkpoint_parse blob_open keystore_open)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

fuzz() { cargo "+$tc" fuzz "$@"; }

start=$(date +%s)
if ! fuzz build "${features[@]}" --target-dir "$td"; then
    echo "fuzz: build failed" >&2
    exit 2
fi
echo "fuzz: build took $(($(date +%s) - start)) s"

passed=0
failed=0
summary=()
for t in "${targets[@]}"; do
    [ -n "$t" ] || continue
    ok=1
    note=""
    if [ "${FUZZ_SKIP_REGRESSIONS:-}" != 1 ] && [ -d "regressions/$t" ]; then
        for r in "regressions/$t"/*; do
            [ -f "$r" ] || continue
            if ! fuzz run "${features[@]}" --target-dir "$td" "$t" "$r" -- -runs=1 \
                >"$logs/$t.regression.$(basename "$r").log" 2>&1; then
                ok=0
                note="$note regression $(basename "$r") still crashes;"
            fi
        done
    fi
    mkdir -p "corpus/$t"
    corpora=("corpus/$t")
    [ -d "seeds/$t" ] && corpora+=("seeds/$t")
    MEDLEDGER_FUZZ_SEEDS="$here/corpus/$t" fuzz run "${features[@]}" --target-dir "$td" \
        "$t" "${corpora[@]}" -- \
        -max_total_time="$secs" -timeout="$timeout_s" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$logs/$t.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    if [ $rc -ne 0 ]; then
        ok=0
        note="$note fuzzing crashed (exit $rc), see $logs/$t.log and artifacts/$t/;"
        grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY" "$logs/$t.log" >&2 || true
    fi
    if [ $ok = 1 ]; then
        passed=$((passed + 1))
        summary+=("PASS $t: ${execs:-?} execs in ${secs}s")
    else
        failed=$((failed + 1))
        summary+=("FAIL $t: ${execs:-?} execs in ${secs}s;$note")
    fi
done

printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
