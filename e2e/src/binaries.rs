//! Finds the workspace's own binaries (`uplink-hub`, `uplink-agent`) so the
//! demo, tests and benchmarks can run them as real child processes.
//!
//! `cargo run -p uplink-e2e` builds only `uplink-e2e`, so a binary of another
//! package may be missing or stale. When cargo is available (`$CARGO`, which
//! cargo sets for `cargo run`, or `cargo` on `PATH`) we ask it to build the
//! packages with the profile of the running executable; cargo does nothing when
//! they are up to date. Then the binary is taken from beside
//! [`std::env::current_exe`], which is where cargo put it.
//!
//! That cargo must reuse what the first one built: it runs without the
//! variables cargo set for us ([`is_set_by_cargo_for_crates`]), and the
//! demo's own packages need no feature the hub and agent do not (checked by
//! `scripts/one-build.sh`).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The cargo profile a binary was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The profile of the running executable: `Release` when it lives in a
    /// `release` directory (`target/release/uplink-e2e`), `Debug` otherwise.
    /// Tests and benchmarks run from `target/<profile>/deps/`.
    pub fn current() -> Profile {
        let in_release_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| profile_dir(&exe))
            .is_some_and(|dir| dir.file_name().is_some_and(|name| name == "release"));
        if in_release_dir {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    /// The name cargo's `--profile` flag takes.
    pub fn cargo_name(self) -> &'static str {
        match self {
            Profile::Debug => "dev",
            Profile::Release => "release",
        }
    }
}

/// Why a binary could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("finding the running executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("running {cargo:?} to build {packages:?}: {source}")]
    SpawnCargo {
        cargo: OsString,
        packages: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("`cargo build` of {packages:?} failed ({status}); see its output above")]
    BuildFailed {
        packages: Vec<String>,
        status: std::process::ExitStatus,
    },
    #[error(
        "{} does not exist; build it with `cargo build -p {name}` (add --release for a release build) or point to it explicitly",
        path.display()
    )]
    Missing { name: String, path: PathBuf },
}

/// Returns the path of the binary `name` (which is also its package's name),
/// building it first when cargo is available. See the module documentation.
pub fn locate(name: &str, profile: Profile) -> Result<PathBuf, BinariesError> {
    let mut paths = locate_all(&[name], profile)?;
    // `locate_all` returns one path per name, in order.
    Ok(paths.remove(0))
}

/// [`locate`] for several binaries with a single `cargo build`, so the
/// packages share one build and one progress line. Returns the paths in the
/// order of `names`.
pub fn locate_all(names: &[&str], profile: Profile) -> Result<Vec<PathBuf>, BinariesError> {
    if let Some(cargo) = cargo_command() {
        build(&cargo, names, profile)?;
    }
    let exe = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
    let dir = profile_dir(&exe).unwrap_or_default();
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(BinariesError::Missing {
                    name: (*name).to_owned(),
                    path,
                })
            }
        })
        .collect()
}

/// The directory cargo puts a profile's binaries in, from the path of one of
/// them: `target/release` for `target/release/uplink-e2e` and for a test
/// binary in `target/release/deps/`.
fn profile_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// The target directory the running executable was built into (the one
/// holding cargo's `CACHEDIR.TAG`): the nested build must put the binaries
/// where [`locate_all`] looks for them, beside this executable, even when
/// it is run directly (`target/release/uplink-e2e bench`) from an
/// environment without the `CARGO_TARGET_DIR` it was built with; without
/// this, cargo would build into the default `target/` and the binaries
/// beside this one would be taken stale.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = profile_dir(&exe)?.parent()?.to_path_buf();
    dir.join("CACHEDIR.TAG").is_file().then_some(dir)
}

/// `$CARGO` when set, else `cargo` when it is on `PATH`.
fn cargo_command() -> Option<OsString> {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return Some(cargo);
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("cargo").is_file()));
    on_path.then(|| OsString::from("cargo"))
}

/// Runs `cargo build --profile P -p a -p b` in this workspace. Cargo's own
/// progress goes to our stderr so a long first build is visible.
fn build(cargo: &OsString, packages: &[&str], profile: Profile) -> Result<(), BinariesError> {
    let owned = || packages.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
    eprintln!(
        "building {} ({} profile) ...",
        packages.join(", "),
        profile.cargo_name()
    );
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_set_by_cargo_for_crates) {
            command.env_remove(name);
        }
    }
    command
        .arg("build")
        .arg("--profile")
        .arg(profile.cargo_name())
        .stdin(Stdio::null());
    if let Some(manifest) = workspace_manifest() {
        command.arg("--manifest-path").arg(manifest);
    }
    if let Some(dir) = target_dir() {
        command.arg("--target-dir").arg(dir);
    }
    for package in packages {
        command.arg("-p").arg(package);
    }
    let status = command
        .status()
        .map_err(|source| BinariesError::SpawnCargo {
            cargo: cargo.clone(),
            packages: owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BinariesError::BuildFailed {
            packages: owned(),
            status,
        })
    }
}

/// Whether `name` is one of the variables cargo sets for the program it
/// runs (`cargo run`, `cargo test`: "Environment variables Cargo sets for
/// crates" in the Cargo book), which a cargo started from here must not
/// inherit. Build scripts read some of them through
/// `cargo:rerun-if-env-changed` (ring's reads `CARGO_MANIFEST_DIR` and
/// `CARGO_PKG_*`); cargo checks those against its own environment, so a
/// nested `cargo build` that inherits `uplink-e2e`'s values finds them
/// changed and rebuilds ring and everything above it: rustls, kube, the hub
/// and the agent, a second time (and again at the next plain `cargo`
/// command, which sees them changed back).
fn is_set_by_cargo_for_crates(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// The workspace's `Cargo.toml`, when the source tree this binary was built
/// from is still there; otherwise cargo searches from the current directory.
fn workspace_manifest() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("Cargo.toml");
    manifest.is_file().then_some(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_cargo_profiles() {
        assert_eq!(Profile::Debug.cargo_name(), "dev");
        assert_eq!(Profile::Release.cargo_name(), "release");
    }

    #[test]
    fn binaries_live_in_the_profile_dir_even_for_tests() {
        let dir = |exe: &str| profile_dir(Path::new(exe));
        assert_eq!(
            dir("/w/target/release/uplink-e2e"),
            Some(PathBuf::from("/w/target/release"))
        );
        assert_eq!(
            dir("/w/target/debug/deps/uplink_e2e-0123abcd"),
            Some(PathBuf::from("/w/target/debug"))
        );
    }

    /// This test runs from `<target>/debug/deps/`: the nested build is
    /// pointed at that `<target>`, wherever `CARGO_TARGET_DIR` put it.
    #[test]
    fn the_nested_build_goes_to_the_target_dir_of_this_executable() {
        let exe = std::env::current_exe().unwrap_or_default();
        let dir = target_dir();
        assert!(
            dir.as_ref().is_some_and(|dir| exe.starts_with(dir)),
            "{dir:?} should hold {}",
            exe.display()
        );
        assert!(dir.is_some_and(|dir| dir.join("CACHEDIR.TAG").is_file()));
    }

    #[test]
    fn a_nested_cargo_inherits_no_package_variables_but_keeps_its_settings() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "OUT_DIR",
        ] {
            assert!(is_set_by_cargo_for_crates(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "RUSTFLAGS",
        ] {
            assert!(!is_set_by_cargo_for_crates(name), "{name}");
        }
    }

    #[test]
    fn the_workspace_manifest_is_found_from_the_source_tree() {
        let manifest = workspace_manifest();
        assert!(manifest.is_some_and(|m| m.ends_with("Cargo.toml")));
    }
}
