#!/usr/bin/env bash
# Supply-chain check: `cargo deny check` (advisories, licenses, duplicate
# versions, sources; the policy is deny.toml) against the offline copy of the
# RustSec advisory database in ../shared/advisory-db, with fetching disabled.
#
# cargo-deny reads advisory databases from `<db-path>/<folder named after the
# database URL>` and wants a git repository there (it reads the HEAD commit's
# time), so the copy goes to a scratch folder as a fresh one-commit repository
# (see ../shared/ADVISORY-DB.md). Nothing depends on the copy's date or
# commit: a newer copy in ../shared is read the same way.
#
# Needs: crates.io (to install cargo-deny when missing, and for `cargo fetch`);
# no other network. Installing cargo-deny 0.20 from source took 648 s on a
# 2-core machine (once per runner; later runs find it in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

source_db=${UPLINK_ADVISORY_DB:-../shared/advisory-db}
if [ ! -d "$source_db/crates" ]; then
    echo "deny: no RustSec advisory database at $source_db (set UPLINK_ADVISORY_DB)" >&2
    exit 1
fi

if ! cargo deny --version >/dev/null 2>&1; then
    started=$SECONDS
    cargo install cargo-deny --locked
    echo "deny: installed cargo-deny in $((SECONDS - started)) s" >&2
fi

# `--offline` makes cargo-deny call `cargo metadata --offline`, which needs
# every crate of every platform downloaded.
cargo fetch --locked

dbs=$(mktemp -d "${TMPDIR:-/tmp}/uplink-advisory-dbs.XXXXXX")
trap 'rm -rf "$dbs"' EXIT
# The folder name cargo-deny derives from the default database URL.
db="$dbs/advisory-db-3157b0e258782691"
cp -R "$source_db" "$db"
rm -rf "$db/.git"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name=uplink-ci -c user.email=ci@uplink.invalid \
    commit -q -m "offline copy of $source_db"

UPLINK_ADVISORY_DBS=$dbs cargo deny --offline check
