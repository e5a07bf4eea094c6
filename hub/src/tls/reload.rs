//! Certificate rotation: a TLS server configuration that is read again from
//! its files when they change on disk (cert-manager renewing a Secret
//! mounted in the pod) and swapped in for the next handshake.
//!
//! The files are polled, not watched with inotify: a mounted Secret changes
//! by kubelet swapping its `..data` symlink, which inotify on the file paths
//! does not see, while re-reading the paths follows the new link. A change
//! is noticed when any file's bytes differ from the last read. The new
//! material is used only if all of it parses and the key fits the
//! certificate; otherwise the error (naming the file) is logged once per
//! distinct content and the previous configuration stays. Connections
//! already established keep the configuration they were accepted with.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::ServerConfig;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Built, ClientCertificate, Material, TlsError, TlsFiles};

/// Results of `uplink_hub_certificate_reloads_total`.
pub mod reload_result {
    pub const SUCCESS: &str = "success";
    pub const FAILURE: &str = "failure";
}

/// The rotation metrics, one series per listener (`tunnel`, `https`).
#[derive(Debug, Clone)]
pub struct RotationMetrics {
    /// `uplink_hub_certificate_expiry_timestamp_seconds{listener}`: the
    /// notAfter of the serving certificate in use.
    pub expiry: IntGaugeVec,
    /// `uplink_hub_certificate_reloads_total{listener,result}`.
    pub reloads: IntCounterVec,
}

impl RotationMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "uplink_hub_certificate_expiry_timestamp_seconds",
                "When the serving certificate in use expires (its notAfter, Unix seconds), by listener.",
            ),
            &["listener"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "uplink_hub_certificate_reloads_total",
                "Changes of the TLS files on disk, by listener and result: success (in use for new handshakes), failure (the previous material stays).",
            ),
            &["listener", "result"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Self { expiry, reloads })
    }
}

/// How many times a poll reads the files again when what it read did not
/// build and the files changed meanwhile.
const SETTLE_RETRIES: usize = 2;

/// What the last poll read: the material, or the error reading it.
#[derive(Debug)]
enum Seen {
    Material(Material),
    Unreadable(String),
}

/// A server configuration that follows its files.
#[derive(Debug)]
pub struct ServerTls {
    /// `tunnel` or `https`: for logs and metric labels.
    listener: &'static str,
    files: TlsFiles,
    clients: ClientCertificate,
    current: RwLock<Built>,
    /// Only the poller touches it.
    seen: Mutex<Seen>,
    metrics: Option<RotationMetrics>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Polled {
    /// The files hold what they held at the last poll.
    Unchanged,
    /// New material, in use from the next handshake; its notAfter.
    Reloaded { not_after: i64 },
    /// New content that is unusable; the previous configuration stays.
    Failed(TlsError),
}

impl ServerTls {
    /// Reads and builds the configuration; an error here is a startup error.
    pub fn load(
        listener: &'static str,
        files: TlsFiles,
        clients: ClientCertificate,
    ) -> Result<Self, TlsError> {
        let material = files.read()?;
        let built = material.build(clients)?;
        Ok(Self {
            listener,
            files,
            clients,
            current: RwLock::new(built),
            seen: Mutex::new(Seen::Material(material)),
            metrics: None,
        })
    }

    /// The tunnel's TLS from `--tls-cert`, `--tls-key` and `--client-ca`
    /// (client certificates required).
    pub fn tunnel(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        let files = TlsFiles::new(cert, key, client_ca);
        Self::load("tunnel", files, ClientCertificate::Required)
    }

    /// The HTTPS listener's TLS from `--tls-cert`, `--tls-key` and
    /// `--http-client-ca` (client certificates optional).
    pub fn https(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        let files = TlsFiles::new(cert, key, client_ca);
        Self::load("https", files, ClientCertificate::Optional)
    }

    /// Reports the expiry and reloads in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: RotationMetrics) -> Self {
        metrics
            .expiry
            .with_label_values(&[self.listener])
            .set(self.not_after());
        // Both results present from the start, so a rate reads 0, not nothing.
        for result in [reload_result::SUCCESS, reload_result::FAILURE] {
            metrics.reloads.with_label_values(&[self.listener, result]);
        }
        self.metrics = Some(metrics);
        self
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .config
            .clone()
    }

    /// An acceptor with [`ServerTls::config`].
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The notAfter of the certificate in use, Unix seconds.
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
        let count = |result: &str| {
            if let Some(metrics) = &self.metrics {
                metrics
                    .reloads
                    .with_label_values(&[self.listener, result])
                    .inc();
            }
        };
        match &polled {
            Polled::Unchanged => {}
            Polled::Reloaded { not_after } => {
                count(reload_result::SUCCESS);
                if let Some(metrics) = &self.metrics {
                    metrics
                        .expiry
                        .with_label_values(&[self.listener])
                        .set(*not_after);
                }
                let expires = jiff::Timestamp::from_second(*not_after)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| not_after.to_string());
                tracing::info!(
                    listener = self.listener,
                    cert = %self.files.cert.display(),
                    %expires,
                    outcome = "reloaded",
                    "TLS certificate, key or CA changed on disk; new handshakes use them"
                );
            }
            Polled::Failed(error) => {
                count(reload_result::FAILURE);
                tracing::error!(
                    listener = self.listener,
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
        let mut built = material.build(self.clients);
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
                    built = material.build(self.clients);
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

/// Starts [`watch`] unless `period` is zero (reloading turned off).
pub fn spawn(
    targets: impl IntoIterator<Item = Arc<ServerTls>>,
    period: Duration,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let targets = targets.into_iter().collect();
    (!period.is_zero()).then(|| tokio::spawn(watch(targets, period, shutdown)))
}

/// Polls every configuration in `targets` each `period` until `shutdown`.
pub async fn watch(targets: Vec<Arc<ServerTls>>, period: Duration, shutdown: CancellationToken) {
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
        for target in &targets {
            let target = target.clone();
            // File reads block; keep them off the runtime's workers.
            if let Err(error) = tokio::task::spawn_blocking(move || target.poll()).await {
                tracing::error!(%error, "polling the TLS files panicked");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uplink_e2e::pki::DevPki;

    use super::*;

    fn write(dir: &Path, pki: &DevPki) {
        pki.hub_cert(&[]).unwrap().write(dir, "hub").unwrap();
        std::fs::write(dir.join("ca.crt"), &pki.ca_cert_pem).unwrap();
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles::new(
            &dir.join("hub.crt"),
            &dir.join("hub.key"),
            &dir.join("ca.crt"),
        )
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_material() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("reload test CA").unwrap();
        write(dir.path(), &pki);
        let tls =
            ServerTls::load("tunnel", files(dir.path()), ClientCertificate::Required).unwrap();
        let before = tls.config();
        assert!(matches!(tls.poll(), Polled::Unchanged));

        // A half-written certificate: refused, naming the file; old kept.
        std::fs::write(
            dir.path().join("hub.crt"),
            "-----BEGIN CERTIFICATE-----\nMII",
        )
        .unwrap();
        match tls.poll() {
            Polled::Failed(error) => {
                assert!(error.to_string().contains("hub.crt"), "{error}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(Arc::ptr_eq(&before, &tls.config()));
        // Logged once, not at every poll.
        assert!(matches!(tls.poll(), Polled::Unchanged));

        // A certificate whose key has not been written yet: refused.
        let next = pki.hub_cert(&[]).unwrap();
        std::fs::write(dir.path().join("hub.crt"), &next.cert_pem).unwrap();
        assert!(matches!(tls.poll(), Polled::Failed(_)));
        assert!(Arc::ptr_eq(&before, &tls.config()));

        // Then the key: the pair is in use.
        std::fs::write(dir.path().join("hub.key"), &next.key_pem).unwrap();
        assert!(matches!(tls.poll(), Polled::Reloaded { .. }));
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("reload test CA").unwrap();
        write(dir.path(), &pki);
        let tls =
            ServerTls::load("tunnel", files(dir.path()), ClientCertificate::Required).unwrap();
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        match tls.poll() {
            Polled::Failed(error) => assert!(error.to_string().contains("ca.crt"), "{error}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(tls.poll(), Polled::Unchanged));
    }

    /// A mounted Secret as kubelet writes it: the files are symlinks into
    /// `..data`, itself a symlink to a timestamped directory that is
    /// replaced by renaming a new `..data` link over the old one.
    #[cfg(unix)]
    #[test]
    fn the_secret_volume_symlink_swap_is_followed() {
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("reload test CA").unwrap();
        let first = dir.path().join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&first).unwrap();
        write(&first, &pki);
        symlink(&first, dir.path().join("..data")).unwrap();
        for name in ["hub.crt", "hub.key", "ca.crt"] {
            symlink(Path::new("..data").join(name), dir.path().join(name)).unwrap();
        }
        let tls =
            ServerTls::load("tunnel", files(dir.path()), ClientCertificate::Required).unwrap();
        let old_expiry = tls.not_after();

        let second = dir.path().join("..2026_02_01_00_00_00.2");
        std::fs::create_dir(&second).unwrap();
        pki.hub_cert_for_days(&[], 30)
            .unwrap()
            .write(&second, "hub")
            .unwrap();
        std::fs::write(second.join("ca.crt"), &pki.ca_cert_pem).unwrap();
        symlink(&second, dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

        match tls.poll() {
            Polled::Reloaded { not_after } => {
                assert_ne!(not_after, old_expiry);
                assert_eq!(tls.not_after(), not_after);
            }
            other => panic!("expected a reload, got {other:?}"),
        }
    }
}
