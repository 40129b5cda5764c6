#!/usr/bin/env bash
# A smoke run of every fuzz target (docs/fuzzing.md): builds them, then runs each on its seed
# corpus for SMOKE_SECONDS (20 by default). Any crash, leak, timeout or broken invariant fails
# the run. Needs the nightly toolchain (`cargo +nightly`); without it, says so and skips.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${SMOKE_SECONDS:-20}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "SKIPPED: fuzz smoke (no nightly toolchain: \`cargo +nightly\` is not available)"
    exit 0
fi
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# -a: debug assertions (and overflow checks) on, as in the tests.
build_started=$(date +%s)
cargo +nightly fuzz build -O -a
echo "fuzz build: $(($(date +%s) - build_started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $(cargo +nightly fuzz list); do
    # New inputs go to a scratch directory: the committed seeds stay as they are.
    mkdir -p "$work/$target"
    started=$(date +%s)
    if ! cargo +nightly fuzz run -O -a "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log"
        echo "FAILED: fuzz target $target (the input is under fuzz/artifacts/$target/)"
        exit 1
    fi
    # libFuzzer's last line: "#N DONE cov: C ft: F corp: K/SIZE lim: L exec/s: E rss: R".
    done_line=$(grep -E 'DONE +cov:' "$work/$target.log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$done_line")
    rate=$(grep -oE 'exec/s: [0-9]+' <<<"$done_line")
    echo "ok: $target, $(($(date +%s) - started)) s, $cov, $rate"
done
