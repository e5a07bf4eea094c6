//! Certificate rotation for the hub's listeners: each TLS server
//! configuration follows its files on disk (see [`uplink_ops::rotation`] for
//! how changes are found and settled) and is used from the next handshake
//! on. Connections already established keep the configuration they were
//! accepted with.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::ServerConfig;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use uplink_ops::rotation::{self, Rotating};

use super::{Built, TlsError, TlsFiles};

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

/// What one poll found.
pub type Polled = rotation::Polled<Built, TlsError>;

/// A server configuration that follows its files.
#[derive(Debug)]
pub struct ServerTls {
    /// `tunnel` or `https`: for logs and metric labels.
    listener: &'static str,
    files: Rotating<TlsFiles>,
}

impl ServerTls {
    /// Reads and builds the configuration; an error here is a startup error.
    pub fn load(listener: &'static str, files: TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            listener,
            files: Rotating::load(listener, files)?,
        })
    }

    /// The tunnel's TLS from `--tls-cert`, `--tls-key` and `--client-ca`
    /// (client certificates required).
    pub fn tunnel(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        Self::load("tunnel", TlsFiles::tunnel(cert, key, client_ca))
    }

    /// The HTTPS listener's TLS from `--tls-cert`, `--tls-key` and
    /// `--http-client-ca` (client certificates optional).
    pub fn https(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        Self::load("https", TlsFiles::https(cert, key, client_ca))
    }

    /// Reports the expiry and reloads in `metrics` from now on; both
    /// results are present from the start, so a rate reads 0, not nothing.
    pub fn with_metrics(self, metrics: RotationMetrics) -> Self {
        let listener = self.listener;
        let reloads = |result| metrics.reloads.with_label_values(&[listener, result]);
        Self {
            listener,
            files: self.files.with_metrics(rotation::RotationMetrics {
                expiry: metrics.expiry.with_label_values(&[listener]),
                reloaded: reloads(reload_result::SUCCESS),
                failed: reloads(reload_result::FAILURE),
            }),
        }
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.files.current().config
    }

    /// An acceptor with [`ServerTls::config`].
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// The notAfter of the certificate in use, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.files.not_after()
    }

    /// Reads the files; if they changed, builds and swaps in the new
    /// configuration, or keeps the old one. Counts and logs the outcome.
    pub fn poll(&self) -> Polled {
        self.files.poll()
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
    rotation::watch(period, shutdown, move || {
        for target in &targets {
            target.poll();
        }
    })
    .await;
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
        TlsFiles::tunnel(
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
        let tls = ServerTls::load("tunnel", files(dir.path())).unwrap();
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
        assert!(matches!(tls.poll(), Polled::Reloaded(_)));
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new("reload test CA").unwrap();
        write(dir.path(), &pki);
        let tls = ServerTls::load("tunnel", files(dir.path())).unwrap();
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
        let tls = ServerTls::load("tunnel", files(dir.path())).unwrap();
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
            Polled::Reloaded(Built { not_after, .. }) => {
                assert_ne!(not_after, old_expiry);
                assert_eq!(tls.not_after(), not_after);
            }
            other => panic!("expected a reload, got {other:?}"),
        }
    }
}
