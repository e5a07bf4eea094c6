//! Driving the real `kubectl` binary against a server under test.
//!
//! Every [`Kubectl`] has its own kubeconfig and discovery cache in a
//! temporary directory, so tests never share state with each other or with
//! the user's `~/.kube`.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};
use uplink_e2e::apiserver::ApiServer;

/// The path of `kubectl` on `PATH`, if there is one.
pub fn find_kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|candidate| candidate.is_file())
}

/// `kubectl` configured for one server (and workspace).
#[derive(Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
    workdir: tempfile::TempDir,
}

impl Kubectl {
    /// `kubectl` for `server`, or `None` after printing a skip notice when
    /// kubectl is not installed.
    pub fn for_server(server: &ApiServer, workspace: Option<&str>) -> Result<Option<Kubectl>> {
        let Some(binary) = find_kubectl() else {
            eprintln!("skipping: kubectl not found on PATH");
            return Ok(None);
        };
        let workdir = tempfile::tempdir().context("creating a kubectl work directory")?;
        let kubeconfig = workdir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig, workspace)
            .context("writing the server's kubeconfig")?;
        let cache_dir = workdir.path().join("cache");
        Ok(Some(Kubectl {
            binary,
            kubeconfig,
            cache_dir,
            workdir,
        }))
    }

    /// A `kubectl` command with this instance's kubeconfig and cache, a
    /// request timeout, and no way to outlive the test.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", self.workdir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl args...` to completion (at most 60 s).
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        let child = self
            .command(args)
            .spawn()
            .with_context(|| format!("starting kubectl {}", args.join(" ")))?;
        match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
            Err(_) => bail!("kubectl {} did not finish within 60s", args.join(" ")),
            Ok(output) => Ok(output?),
        }
    }

    /// Runs `kubectl args...`, failing with its stderr unless it succeeds;
    /// returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let output = self.run(args).await?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout),
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Writes `contents` to `name` in the work directory; returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.workdir.path().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The work directory (kubeconfig, cache, written files).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Starts a long-running `kubectl args...` (e.g. `get -w`) whose stdout
    /// is read line by line.
    pub fn spawn_lines(&self, args: &[&str]) -> Result<KubectlLines> {
        let mut child = self
            .command(args)
            .spawn()
            .with_context(|| format!("starting kubectl {}", args.join(" ")))?;
        let stdout = child.stdout.take().context("kubectl without stdout")?;
        Ok(KubectlLines {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        })
    }
}

/// A running kubectl whose output is read line by line.
#[derive(Debug)]
pub struct KubectlLines {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl KubectlLines {
    /// Reads lines until one satisfies `wanted`, failing after `limit` or
    /// when kubectl exits first.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match next {
                Err(_) => bail!(
                    "no matching kubectl output within {limit:?}; saw {:?}",
                    self.seen
                ),
                Ok(Err(error)) => bail!("reading kubectl output: {error}"),
                Ok(Ok(None)) => {
                    let stderr = match self.child.stderr.take() {
                        Some(mut stderr) => {
                            let mut text = String::new();
                            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
                                .await;
                            text
                        }
                        None => String::new(),
                    };
                    bail!(
                        "kubectl exited before the expected output; saw {:?}; stderr: {stderr}",
                        self.seen
                    )
                }
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
            }
        }
    }

    /// Stops kubectl.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
