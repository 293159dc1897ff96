#!/usr/bin/env bash
# Run hearth's cargo-fuzz (libFuzzer) targets for a while each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET (default 30)] [TARGET...]   (all targets by default)
#
# Builds every target once (`cargo fuzz build`, with its defaults: --release with debug
# assertions and AddressSanitizer, in fuzz/target/), then runs each built fuzzer for
# SECONDS, as `cargo fuzz run` would but without its rebuild (so the time is all fuzzing
# and every target tests the same build), starting from a scratch copy of its committed
# corpus (fuzz/corpus/<target>/ is never modified; new
# inputs go to the scratch copy and are dropped). Prints one line per target and a total;
# exits non-zero if any target crashed, timed out or ran out of memory, printing the
# input libFuzzer saved (under fuzz/artifacts/<target>/) and the end of its log.
#
# Runs on stable Rust: RUSTC_BOOTSTRAP=1 lets it take the nightly flags cargo fuzz needs.
# Reproduce a crash with:  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ="$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

SECONDS_PER_TARGET=30
if [[ $# -gt 0 ]]; then
    case "$1" in
        -h | --help) usage 0 ;;
        *[!0-9]*) ;; # not a number: a target name
        *) SECONDS_PER_TARGET=$1; shift ;;
    esac
fi
if [[ "$SECONDS_PER_TARGET" -lt 1 ]]; then
    echo "fuzz: SECONDS_PER_TARGET must be at least 1" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$FUZZ"
mapfile -t ALL < <(cargo fuzz list)
if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
    for t in "${TARGETS[@]}"; do
        if ! printf '%s\n' "${ALL[@]}" | grep -qx -- "$t"; then
            echo "fuzz: no target '$t' (targets: ${ALL[*]})" >&2
            exit 2
        fi
    done
else
    TARGETS=("${ALL[@]}")
fi

# libFuzzer dictionary per target, where one helps.
dict_for() {
    case "$1" in
        json_schema | http_request | safetensors) echo "$FUZZ/dicts/json.dict" ;;
        chat_template) echo "$FUZZ/dicts/jinja.dict" ;;
        gguf) echo "$FUZZ/dicts/gguf.dict" ;;
        *) ;;
    esac
}

echo "fuzz: building ${#ALL[@]} targets" >&2
build_start=$(date +%s)
cargo fuzz build --target-dir "$FUZZ/target"
echo "fuzz: built in $(($(date +%s) - build_start)) s" >&2
BIN="$FUZZ/target/$(rustc -vV | sed -n 's/^host: //p')/release"
# as cargo fuzz run sets it
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hearth-fuzz.XXXXXX")
keep_work=0
cleanup() {
    if [[ $keep_work -eq 0 ]]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

passed=0
failed=0
summary=()
for t in "${TARGETS[@]}"; do
    committed="$FUZZ/corpus/$t"
    scratch="$WORK/corpus/$t"
    artifacts="$FUZZ/artifacts/$t"
    log="$WORK/$t.log"
    mkdir -p "$scratch" "$artifacts" "$committed"
    cp -R "$committed/." "$scratch/"
    args=(
        -max_total_time="$SECONDS_PER_TARGET"
        -timeout=10
        -rss_limit_mb=2048
        -print_final_stats=1
        -artifact_prefix="$artifacts/"
    )
    dict=$(dict_for "$t")
    if [[ -n "$dict" ]]; then
        args+=(-dict="$dict")
    fi
    echo "fuzz: running $t for $SECONDS_PER_TARGET s" >&2
    start=$(date +%s)
    rc=0
    # the scratch corpus first: libFuzzer adds the inputs it finds to the first directory
    "$BIN/$t" "${args[@]}" "$scratch" "$committed" >"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - start))

    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
    # crash-, timeout-, oom- and leak- inputs (not slow-unit- ones, which are only slow)
    mapfile -t found < <(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" |
        grep -E '/(crash|timeout|oom|leak)-[^/]*$' || true)
    crashes=${#found[@]}
    if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
        crashes=1 # it failed without saving an input (e.g. the harness did not start)
    fi
    line="fuzz $t: ${runs:-?} runs in $elapsed s, $crashes crashes"
    summary+=("$line")
    echo "$line"
    if [[ $crashes -eq 0 ]]; then
        passed=$((passed + 1))
        continue
    fi
    failed=$((failed + 1))
    keep_work=1
    echo "---- $t failed (exit $rc); full log: $log"
    for f in "${found[@]}"; do
        echo "crash input: $f"
        echo "reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${f#"$FUZZ"/})"
    done
    # the sanitizer report or panic, and libFuzzer's lines after it
    first=$(grep -n -m1 -E '^==[0-9]+==|panicked at|^thread .* panicked|ERROR: libFuzzer|^error' "$log" | cut -d: -f1 || true)
    if [[ -n "$first" ]]; then
        tail -n "+$first" "$log" | head -n 80
    else
        tail -n 40 "$log"
    fi
    echo "----"
done

echo
printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
