#!/usr/bin/env bash
# CI's short fuzz run (FUZZING.md): builds the fuzz targets and runs each for
# a bounded time on the corpus kept in fuzz/corpus/<target>. New inputs go to
# a scratch directory, so the kept corpus is only read; a crash fails the run
# and leaves its input under the scratch directory (printed).
#
# Needs cargo-fuzz; it is installed from crates.io when missing (9 minutes
# on two busy cores). Stable Rust only: `-s none` builds without a
# sanitizer, the one part of cargo fuzz that needs nightly.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SMOKE_SECONDS:-30}"
targets=(frame_decode hub_session namespace_locator quantity)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo fuzz build -s none

scratch="$(mktemp -d)"
echo "fuzz: scratch corpus and artifacts in $scratch" >&2
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s on corpus/$target" >&2
    cargo fuzz run -s none "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$scratch/$target-" -print_final_stats=1
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash" >&2
