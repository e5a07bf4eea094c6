//! Certificate rotation: TLS material that is read again from its files when
//! they change on disk (cert-manager renewing a Secret mounted in the pod)
//! and swapped in for the next handshake. What is read and what it builds
//! is the caller's ([`Source`]); the polling, the change detection and the
//! settling of torn writes are here, once for the hub and the agent.
//!
//! The files are polled, not watched with inotify: a mounted Secret changes
//! by kubelet swapping its `..data` symlink, which inotify on the file paths
//! does not see, while re-reading the paths follows the new link. A change
//! is noticed when the bytes differ from the last read. The new material is
//! used only if it builds; otherwise the error is reported once per distinct
//! content and the previous configuration stays. Whatever was built from the
//! old material (established sessions) is not touched.

use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

/// A set of files and what they build.
pub trait Source {
    /// The files' bytes as read at one moment; two reads compare equal when
    /// nothing changed on disk.
    type Material: PartialEq;
    /// What the material builds; cloned out for each use, so cheap to clone
    /// (an `Arc`'d configuration).
    type Built: Clone;
    /// Why the files cannot be read or do not build; names the file.
    type Error: std::fmt::Display;

    fn read(&self) -> Result<Self::Material, Self::Error>;
    fn build(&self, material: &Self::Material) -> Result<Self::Built, Self::Error>;
    /// When `built` expires: its certificate's notAfter, Unix seconds.
    fn not_after(built: &Self::Built) -> i64;
    /// The certificate file, for logs.
    fn cert_path(&self) -> &Path;
}

/// One configuration's rotation metrics, labels already chosen by the
/// binary that owns them (`uplink_hub_...{listener}`, `uplink_agent_...`).
#[derive(Debug, Clone)]
pub struct RotationMetrics {
    /// `..._certificate_expiry_timestamp_seconds`: the notAfter in use.
    pub expiry: IntGauge,
    /// `..._certificate_reloads_total{result="success"}`.
    pub reloaded: IntCounter,
    /// `..._certificate_reloads_total{result="failure"}`.
    pub failed: IntCounter,
}

/// How many times a poll reads the files again when what it read did not
/// build and the files changed meanwhile.
const SETTLE_RETRIES: usize = 2;

/// What the last poll read: the material, or the error reading it.
#[derive(Debug)]
enum Seen<M> {
    Material(M),
    Unreadable(String),
}

/// What one poll found.
#[derive(Debug)]
pub enum Polled<B, E> {
    /// The files hold what they held at the last poll.
    Unchanged,
    /// New material, built and in use from now on.
    Reloaded(B),
    /// New content that is unusable; the previous material stays in use.
    Failed(E),
}

/// What a [`Source`] built, following its files.
#[derive(Debug)]
pub struct Rotating<S: Source> {
    /// What the configuration is for (`tunnel`, `https`, `client`): logs.
    name: &'static str,
    source: S,
    current: RwLock<S::Built>,
    /// Only the poller touches it.
    seen: Mutex<Seen<S::Material>>,
    metrics: Option<RotationMetrics>,
}

impl<S: Source> Rotating<S> {
    /// Reads and builds; an error here is a startup error.
    pub fn load(name: &'static str, source: S) -> Result<Self, S::Error> {
        let material = source.read()?;
        let built = source.build(&material)?;
        Ok(Self {
            name,
            source,
            current: RwLock::new(built),
            seen: Mutex::new(Seen::Material(material)),
            metrics: None,
        })
    }

    /// Reports the expiry and reloads in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: RotationMetrics) -> Self {
        metrics.expiry.set(self.not_after());
        self.metrics = Some(metrics);
        self
    }

    /// The notAfter of the certificate in use, Unix seconds.
    pub fn not_after(&self) -> i64 {
        S::not_after(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// What is in use now.
    pub fn current(&self) -> S::Built {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files; if they changed, builds and swaps in the result, or
    /// keeps what is in use; counts and logs the outcome. Blocks on file
    /// reads.
    pub fn poll(&self) -> Polled<S::Built, S::Error> {
        let polled = self.check();
        match &polled {
            Polled::Unchanged => {}
            Polled::Reloaded(built) => {
                let not_after = S::not_after(built);
                if let Some(metrics) = &self.metrics {
                    metrics.reloaded.inc();
                    metrics.expiry.set(not_after);
                }
                let expires = jiff::Timestamp::from_second(not_after)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| not_after.to_string());
                tracing::info!(
                    tls = self.name,
                    cert = %self.source.cert_path().display(),
                    %expires,
                    outcome = "reloaded",
                    "TLS certificate, key or CA changed on disk; new handshakes use them"
                );
            }
            Polled::Failed(error) => {
                if let Some(metrics) = &self.metrics {
                    metrics.failed.inc();
                }
                tracing::error!(
                    tls = self.name,
                    %error,
                    outcome = "kept",
                    "TLS files changed on disk but are not usable; keeping the previous certificate"
                );
            }
        }
        polled
    }

    fn check(&self) -> Polled<S::Built, S::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut material = match self.source.read() {
            Ok(material) => material,
            Err(error) => {
                let text = error.to_string();
                if matches!(&*seen, Seen::Unreadable(last) if *last == text) {
                    return Polled::Unchanged;
                }
                *seen = Seen::Unreadable(text);
                return Polled::Failed(error);
            }
        };
        if matches!(&*seen, Seen::Material(last) if *last == material) {
            return Polled::Unchanged;
        }
        let mut built = self.source.build(&material);
        // Files read while they are being replaced can be torn (a new
        // certificate with the old key); when the files moved on since,
        // the newer material is tried at once instead of reporting an error.
        for _ in 0..SETTLE_RETRIES {
            if built.is_ok() {
                break;
            }
            match self.source.read() {
                Ok(again) if again != material => {
                    material = again;
                    built = self.source.build(&material);
                }
                _ => break,
            }
        }
        *seen = Seen::Material(material);
        match built {
            Ok(built) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = built.clone();
                Polled::Reloaded(built)
            }
            Err(error) => Polled::Failed(error),
        }
    }
}

/// Calls `poll` every `period` until `shutdown`, on the blocking pool (it
/// reads files). A zero `period` turns reloading off.
pub async fn watch<F>(period: Duration, shutdown: CancellationToken, poll: F)
where
    F: Fn() + Clone + Send + 'static,
{
    if period.is_zero() {
        // An interval of zero would panic.
        return;
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the files were just read at startup.
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = tokio::task::spawn_blocking(poll.clone()).await {
            tracing::error!(%error, "polling the TLS files panicked");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Files as a list of contents, one per read: a poll that reads the
    /// same as last time sees no change.
    #[derive(Debug)]
    struct Script {
        reads: Mutex<Vec<Result<&'static str, &'static str>>>,
    }

    impl Script {
        fn new(reads: &[Result<&'static str, &'static str>]) -> Self {
            let mut reads = reads.to_vec();
            reads.reverse();
            Self {
                reads: Mutex::new(reads),
            }
        }
    }

    impl Source for Script {
        type Material = &'static str;
        type Built = String;
        type Error = String;

        fn read(&self) -> Result<&'static str, String> {
            let mut reads = self.reads.lock().unwrap();
            let next = if reads.len() > 1 {
                reads.pop().unwrap()
            } else {
                reads[0]
            };
            next.map_err(str::to_owned)
        }

        /// Material builds unless it is "torn".
        fn build(&self, material: &&'static str) -> Result<String, String> {
            if *material == "torn" {
                Err("torn".into())
            } else {
                Ok(material.to_uppercase())
            }
        }

        fn not_after(built: &String) -> i64 {
            built.len() as i64
        }

        fn cert_path(&self) -> &Path {
            Path::new("script.crt")
        }
    }

    fn metrics() -> RotationMetrics {
        RotationMetrics {
            expiry: IntGauge::new("expiry", "test").unwrap(),
            reloaded: IntCounter::new("reloaded", "test").unwrap(),
            failed: IntCounter::new("failed", "test").unwrap(),
        }
    }

    #[test]
    fn a_change_is_built_once_and_a_failure_reported_once() {
        let metrics = metrics();
        let files = Rotating::load(
            "test",
            Script::new(&[
                Ok("a"),
                Ok("a"),
                Ok("torn"),
                Ok("torn"),
                Err("gone"),
                Err("gone"),
                Ok("bb"),
            ]),
        )
        .unwrap()
        .with_metrics(metrics.clone());
        assert_eq!(files.current(), "A");
        assert_eq!(metrics.expiry.get(), 1);
        assert!(matches!(files.poll(), Polled::Unchanged));
        // Torn, and still torn when read again: reported, old kept.
        assert!(matches!(files.poll(), Polled::Failed(e) if e == "torn"));
        assert_eq!(files.current(), "A");
        assert!(matches!(files.poll(), Polled::Failed(e) if e == "gone"));
        assert!(matches!(files.poll(), Polled::Unchanged), "reported once");
        assert!(matches!(files.poll(), Polled::Reloaded(b) if b == "BB"));
        assert_eq!(files.current(), "BB");
        assert_eq!(
            (metrics.reloaded.get(), metrics.failed.get()),
            (1, 2),
            "counted as reported"
        );
        assert_eq!(metrics.expiry.get(), 2, "the expiry moves");
    }

    #[test]
    fn a_torn_read_that_settles_is_no_failure() {
        let files = Rotating::load("test", Script::new(&[Ok("a"), Ok("torn"), Ok("b")])).unwrap();
        assert!(matches!(files.poll(), Polled::Reloaded(b) if b == "B"));
    }

    #[tokio::test(start_paused = true)]
    async fn watch_polls_each_period_until_shutdown() {
        let polls = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counter = polls.clone();
        let task = tokio::spawn(watch(Duration::from_secs(5), shutdown.clone(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while polls.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "three polls");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        // Off: returns at once.
        watch(Duration::ZERO, CancellationToken::new(), || {}).await;
    }
}
