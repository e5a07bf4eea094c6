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
# cargo prints "Compiling <package>" once per package and build, so a
# package whose library the first build compiled shows again in the second
# when its binary is linked there. The rule: the first build (`cargo run`,
# up to the demo's "building ..." line) compiles each package once; the
# second compiles nothing but the binaries it was asked for, once each.
compiled() { grep -E '^ +Compiling ' | awk '{print $2, $3}'; }
first=$(sed '/^building /,$d' "$work/cargo.err" | compiled || true)
second=$(sed -n '/^building /,$p' "$work/cargo.err" | compiled || true)
echo "one-build: $secs s from clone to the demo's end (its 30 s included), exit $status;" \
    "$(printf '%s\n' "$first" | grep -c . || true) packages compiled by cargo run," \
    "then $(printf '%s\n' "$second" | grep -c . || true) by the demo's build:" \
    "$(printf '%s\n' "$second" | awk '{print $1}' | tr '\n' ' ')" >&2
grep -E 'Finished|^building' "$work/cargo.err" | sed 's/^/one-build:   /' >&2 || true
twice=$( (printf '%s\n' "$first" | sort | uniq -d; printf '%s\n' "$second" | sort | uniq -d) | grep . || true)
again=$(printf '%s\n' "$second" | grep -vE '^uplink-(hub|agent) ' | grep . || true)
if [ -n "$twice$again" ]; then
    echo "one-build: compiled twice:" >&2
    printf '%s\n' "$twice" "$again" | grep . | sed 's/^/one-build:   /' >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "one-build: the demo failed; see $work/demo.out and $work/cargo.err" >&2
    exit "$status"
fi
echo "one-build: every package compiled once (the hub and agent binaries by the demo)" >&2
