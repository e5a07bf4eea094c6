//! The demo's child processes (the hub and the agents): started with their
//! output in a log file, watched for unexpected exits, and stopped the way an
//! operator would stop them: SIGTERM, a grace period, then SIGKILL.
//!
//! SIGTERM goes through the `kill` command line tool because the workspace
//! forbids `unsafe` (so no `libc::kill`) and tokio only offers SIGKILL. Should
//! `kill` be missing, stopping falls back to SIGKILL. `kill_on_drop` is the
//! last line of defence: a child never outlives the demo, even on a panic.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// What failed while starting a child.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("creating the log file {}: {source}", path.display())]
    LogFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {name} ({}): {source}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a child ended when it was stopped.
#[derive(Debug)]
pub enum Stopped {
    /// It had exited already, on its own.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// It ignored SIGTERM and was killed.
    Killed,
    /// Waiting for it failed; it was killed as far as possible.
    Lost(std::io::Error),
}

/// A running child process whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl ChildProcess {
    /// Starts `command` as `name`, its stdout and stderr appended to `log_path`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log_path: &Path,
    ) -> Result<ChildProcess, ProcessError> {
        let log_error = |source| ProcessError::LogFile {
            path: log_path.to_owned(),
            source,
        };
        let stdout = File::create(log_path).map_err(log_error)?;
        let stderr = stdout.try_clone().map_err(log_error)?;
        let program = PathBuf::from(command.as_std().get_program());
        // A process group of its own: Ctrl-C in the terminal reaches the demo
        // only, which then stops its children in order.
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program,
            source,
        })?;
        tracing::info!(name, pid = child.id(), log = %log_path.display(), "child started");
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The operating system's id of the child, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, up to `grace` for the child to exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.exited() {
            return Stopped::AlreadyExited(status);
        }
        if let Some(pid) = self.child.id() {
            let sent = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|status| status.success());
            if sent {
                match tokio::time::timeout(grace, self.child.wait()).await {
                    Ok(Ok(status)) => return Stopped::Terminated(status),
                    Ok(Err(error)) => return self.kill(Some(error)).await,
                    Err(_elapsed) => {}
                }
            }
        }
        self.kill(None).await
    }

    /// SIGKILL at once: a crash, as far as its peers can tell.
    pub async fn crash(self) -> Stopped {
        self.kill(None).await
    }

    async fn kill(mut self, error: Option<std::io::Error>) -> Stopped {
        let killed = self.child.kill().await;
        match (error, killed) {
            (Some(error), _) | (None, Err(error)) => Stopped::Lost(error),
            (None, Ok(())) => Stopped::Killed,
        }
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_goes_to_the_log_and_sigterm_stops_the_child() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let log = dir.path().join("sleeper.log");
        let mut command = Command::new("sh");
        // `exec` so the shell's pid is sleep's and SIGTERM reaches it.
        command.arg("-c").arg("echo started; exec sleep 30");
        let mut child =
            ChildProcess::spawn("sleeper", command, &log).unwrap_or_else(|e| panic!("spawn: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while child.log_tail(5) != "started" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no output in the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(child.exited().is_none());
        match child.stop(Duration::from_secs(10)).await {
            Stopped::Terminated(status) => assert!(!status.success(), "{status}"),
            other => panic!("expected a SIGTERM exit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let log = dir.path().join("stubborn.log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("trap '' TERM; echo ready; while :; do sleep 1; done");
        let child =
            ChildProcess::spawn("stubborn", command, &log).unwrap_or_else(|e| panic!("spawn: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while child.log_tail(5) != "ready" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no output in the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(
            child.stop(Duration::from_millis(300)).await,
            Stopped::Killed
        ));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&path, 9), "a\nb\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
