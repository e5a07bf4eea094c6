//! Certificate rotation: the agent's TLS client configuration, read again
//! from `--tls-cert`, `--tls-key` and `--hub-ca` when they change on disk
//! (cert-manager renewing a Secret mounted in the pod) and used from the
//! next connection on.
//!
//! The files are polled, not watched with inotify: a mounted Secret changes
//! by kubelet swapping its `..data` symlink, and re-reading the paths
//! follows the new link. A change is noticed when any file's bytes differ
//! from the last read. The new material is used only if all of it parses
//! and the key fits the certificate; otherwise the error (naming the flag
//! and file) is logged once per distinct content and the previous
//! configuration stays. The session in progress is not touched.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Built, Material, TlsError, TlsFiles};
use crate::metrics::{Metrics, reload_result};

/// How many times a poll reads the files again when what it read did not
/// build and the files changed meanwhile.
const SETTLE_RETRIES: usize = 2;

/// What the last poll read: the material, or the error reading it.
#[derive(Debug)]
enum Seen {
    Material(Material),
    Unreadable(String),
}

/// The agent's client configuration, following its files.
#[derive(Debug)]
pub struct ClientTls {
    files: TlsFiles,
    current: RwLock<Built>,
    /// Only the poller touches it.
    seen: Mutex<Seen>,
    metrics: Option<Metrics>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Polled {
    /// The files hold what they held at the last poll.
    Unchanged,
    /// New material, used from the next connection; its notAfter.
    Reloaded { not_after: i64 },
    /// New content that is unusable; the previous configuration stays.
    Failed(TlsError),
}

impl ClientTls {
    /// Reads and builds the configuration; an error here is a startup error.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let material = files.read()?;
        let built = material.build()?;
        Ok(Self {
            files,
            current: RwLock::new(built),
            seen: Mutex::new(Seen::Material(material)),
            metrics: None,
        })
    }

    /// Reports the expiry and reloads in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.certificate_expiry.set(self.not_after());
        self.metrics = Some(metrics);
        self
    }

    /// The configuration the next connection uses.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .config
            .clone()
    }

    /// The notAfter of the client certificate in use, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .not_after
    }

    /// Reads the files; if they changed, builds and swaps in the new
    /// configuration, or keeps the old one. Counts and logs the outcome.
    pub fn poll(&self) -> Polled {
        let polled = self.check();
        match &polled {
            Polled::Unchanged => {}
            Polled::Reloaded { not_after } => {
                if let Some(metrics) = &self.metrics {
                    metrics
                        .certificate_reloads
                        .with_label_values(&[reload_result::SUCCESS])
                        .inc();
                    metrics.certificate_expiry.set(*not_after);
                }
                tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after,
                    outcome = "reloaded",
                    "TLS certificate, key or hub CA changed on disk; the next connection uses them"
                );
            }
            Polled::Failed(error) => {
                if let Some(metrics) = &self.metrics {
                    metrics
                        .certificate_reloads
                        .with_label_values(&[reload_result::FAILURE])
                        .inc();
                }
                tracing::error!(
                    %error,
                    outcome = "kept",
                    "TLS files changed on disk but are not usable; keeping the previous certificate"
                );
            }
        }
        polled
    }

    fn check(&self) -> Polled {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut material = match self.files.read() {
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
        let mut built = material.build();
        // Files read while they are being replaced can be torn (a new
        // certificate with the old key); when the files moved on since,
        // the newer material is tried at once instead of logging an error.
        for _ in 0..SETTLE_RETRIES {
            if built.is_ok() {
                break;
            }
            match self.files.read() {
                Ok(again) if again != material => {
                    material = again;
                    built = material.build();
                }
                _ => break,
            }
        }
        *seen = Seen::Material(material);
        match built {
            Ok(built) => {
                let not_after = built.not_after;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = built;
                Polled::Reloaded { not_after }
            }
            Err(error) => Polled::Failed(error),
        }
    }
}

/// Polls `tls`'s files every `period` until `shutdown`.
pub async fn watch(tls: Arc<ClientTls>, period: Duration, shutdown: CancellationToken) {
    if period.is_zero() {
        // Reloading is off (and an interval of zero would panic).
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
        let tls = tls.clone();
        // File reads block; keep them off the runtime's workers.
        if let Err(error) = tokio::task::spawn_blocking(move || tls.poll()).await {
            tracing::error!(%error, "polling the TLS files panicked");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use uplink_e2e::pki::DevPki;

    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles::new(
            &dir.join("edge.crt"),
            &dir.join("edge.key"),
            &dir.join("ca.crt"),
        )
    }

    #[test]
    fn a_renewed_certificate_is_used_and_a_torn_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("agent reload test CA").unwrap();
        pki.client_cert("edge")
            .unwrap()
            .write(dir.path(), "edge")
            .unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca_cert_pem).unwrap();
        let metrics = Metrics::new();
        let tls = ClientTls::load(files(dir.path()))
            .unwrap()
            .with_metrics(metrics.clone());
        let before = tls.config();
        assert_eq!(metrics.certificate_expiry.get(), tls.not_after());
        assert!(matches!(tls.poll(), Polled::Unchanged));

        // The new certificate without its key yet: refused, old kept.
        let renewed = pki.client_cert_for_days("edge", 30).unwrap();
        std::fs::write(dir.path().join("edge.crt"), &renewed.cert_pem).unwrap();
        match tls.poll() {
            Polled::Failed(error) => assert!(error.to_string().contains("--tls-key"), "{error}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(Arc::ptr_eq(&before, &tls.config()));
        assert!(matches!(tls.poll(), Polled::Unchanged), "logged once");

        // An empty CA file: refused, naming it.
        std::fs::write(dir.path().join("edge.key"), &renewed.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), "").unwrap();
        match tls.poll() {
            Polled::Failed(error) => assert!(error.to_string().contains("ca.crt"), "{error}"),
            other => panic!("expected a failure, got {other:?}"),
        }

        // Everything in place: used, and the expiry moves.
        let old_expiry = tls.not_after();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca_cert_pem).unwrap();
        assert!(matches!(tls.poll(), Polled::Reloaded { .. }));
        assert!(!Arc::ptr_eq(&before, &tls.config()));
        assert_ne!(tls.not_after(), old_expiry);
        assert_eq!(metrics.certificate_expiry.get(), tls.not_after());
        let reloads = |result: &str| {
            metrics
                .certificate_reloads
                .with_label_values(&[result])
                .get()
        };
        assert_eq!(
            (
                reloads(reload_result::SUCCESS),
                reloads(reload_result::FAILURE)
            ),
            (1, 2)
        );
    }
}
