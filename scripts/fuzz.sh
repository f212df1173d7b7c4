#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see README.md, "Fuzzing"); needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
#   scripts/fuzz.sh                    # every target for 25 s (what CI runs)
#   scripts/fuzz.sh -t 600 endpoint    # one target for 10 minutes
#   scripts/fuzz.sh -r 10000000        # every target for 10 million executions
#
# Each target starts from its seeds (fuzz/seeds/<target>, read only) and the corpus earlier runs
# grew (fuzz/corpus/<target>, not in git). One job at a time. A crash stops the script with a
# non-zero status and leaves the input in fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run -s none <target> <file>` (FUZZ_TRACE=1 prints what happened).
#
# Built without AddressSanitizer (`-s none`): the code under test is `#![forbid(unsafe_code)]`
# (protocol, session, journal), so a sanitizer finds nothing a bounds-checked panic does not, and
# it made the targets about ten times slower. Debug assertions and overflow checks stay on.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

limit=(-max_total_time=25)
while getopts "t:r:" opt; do
    case "$opt" in
        t) limit=(-max_total_time="$OPTARG") ;;
        r) limit=(-runs="$OPTARG") ;;
        *) echo "usage: $0 [-t seconds | -r runs] [target...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode deframer endpoint device)
fi

echo "==> cargo +nightly fuzz build -s none"
cargo +nightly fuzz build -s none

summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="$(mktemp)"
    echo "==> cargo +nightly fuzz run -s none $t fuzz/corpus/$t fuzz/seeds/$t -- ${limit[*]}"
    start=$(date +%s)
    if ! cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        "${limit[@]}" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "==> fuzz target $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    end=$(date +%s)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    summary+=("$(printf '%-9s %12s executions %6s s %8s exec/s %6s corpus files' \
        "$t" "${runs:-?}" "$((end - start))" "${rate:-?}" "$corpus")")
    echo "    ${summary[-1]}"
    rm -f "$log"
done

echo "==> scripts/fuzz.sh: no crash"
printf '%s\n' "${summary[@]}"
