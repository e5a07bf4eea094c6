#!/usr/bin/env bash
# A newcomer's first demo, measured: a fresh clone of this repository's HEAD
# commit, then a cold `cargo run --release -p uplink-e2e -- demo --duration
# 30s`, timed, and checked from cargo's own output that no crate was compiled
# twice (the demo builds the hub and agent with a second `cargo build`, which
# must reuse every library the first one built: e2e/src/binaries.rs).
#
#   scripts/one-build.sh [DIR]    DIR: where to clone (default: a temp dir)
#
# It takes the machine for the whole build (README gives the time measured on
# two cores); run it on a quiet machine for a number worth writing down.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse HEAD)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
git clone -q --no-checkout "$repo" "$work/uplink"
git -C "$work/uplink" checkout -q "$commit"
cd "$work/uplink"
# The clone builds in its own target/, as a newcomer's would.
unset CARGO_TARGET_DIR
echo "one-build: cold demo of $commit in $work/uplink" >&2
start=$(date +%s)
status=0
cargo run --release -p uplink-e2e -- demo --duration 30s >"$work/demo.out" 2>"$work/cargo.err" || status=$?
secs=$(($(date +%s) - start))
compiled=$(grep -E '^ +Compiling ' "$work/cargo.err" | awk '{print $2, $3}' || true)
twice=$(printf '%s\n' "$compiled" | sort | uniq -d)
echo "one-build: $secs s from clone to the demo's end (its 30 s included), exit $status," \
    "$(printf '%s\n' "$compiled" | grep -c . || true) crates compiled" >&2
grep -E 'Finished|building' "$work/cargo.err" | sed 's/^/one-build:   /' >&2 || true
if [ -n "$twice" ]; then
    echo "one-build: compiled twice:" >&2
    printf '%s\n' "$twice" | sed 's/^/one-build:   /' >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "one-build: the demo failed; see $work/demo.out and $work/cargo.err" >&2
    exit "$status"
fi
echo "one-build: every crate compiled once" >&2
