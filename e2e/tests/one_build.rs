//! A newcomer's first `cargo run --release -p uplink-e2e -- demo` builds
//! each crate once: the demo's own `cargo build -p uplink-hub -p
//! uplink-agent` ([`uplink_e2e::binaries`]) must find every library already
//! built. Cargo reuses a library only when it is built with the same
//! features, and it unifies features over the packages a command selects:
//! if `uplink-e2e` turned on a feature of a shared crate that the hub and
//! the agent do not, the second build would compile that crate, and all
//! above it, again. This test asks cargo for the features each selection
//! resolves (`cargo tree`) and compares them.
//!
//! The other half, the environment the nested cargo runs in, is unit-tested
//! in `binaries.rs`; `scripts/one-build.sh` measures the whole cold run.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Every `(package version, features)` cargo resolves for `packages`. A
/// package may be listed more than once with different features (as a
/// build dependency and as a normal one), so the lines are kept as a set.
fn resolved_features(packages: &[&str]) -> BTreeSet<(String, String)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = Command::new(cargo);
    command.args([
        "tree",
        "--quiet",
        "--locked",
        "--offline",
        "--edges",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}|{f}",
        "--manifest-path",
    ]);
    command.arg(manifest);
    for package in packages {
        command.args(["--package", package]);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => panic!("running cargo tree: {error}"),
    };
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim_end_matches(" (*)");
            let (package, features) = line.split_once('|')?;
            // A path dependency prints its directory: keep name and version.
            let package = package.split(" (").next()?.to_owned();
            Some((package, features.to_owned()))
        })
        .collect()
}

#[test]
fn the_demo_builds_the_hub_and_agent_with_the_libraries_cargo_run_built() {
    let demo = resolved_features(&["uplink-e2e"]);
    let binaries = resolved_features(&["uplink-hub", "uplink-agent"]);
    // Every build of a package the hub and agent need is one `cargo run`
    // already made (the demo's own packages may add builds, never change one).
    let differing: Vec<String> = binaries
        .difference(&demo)
        .map(|(package, features)| {
            format!("{package} [{features}]: not built so by `cargo run -p uplink-e2e`")
        })
        .collect();
    assert!(
        differing.is_empty(),
        "the demo's `cargo build -p uplink-hub -p uplink-agent` would compile these again \
         (give the hub or agent the same features, or drop them from uplink-e2e):\n{}",
        differing.join("\n")
    );
}
