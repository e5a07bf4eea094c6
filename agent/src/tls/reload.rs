//! Certificate rotation for the agent: its TLS client configuration follows
//! `--tls-cert`, `--tls-key` and `--hub-ca` on disk (see
//! [`uplink_ops::rotation`] for how changes are found and settled) and is
//! used from the next connection on. The session in progress is not touched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uplink_ops::rotation::{self, Rotating, RotationMetrics};

use super::{Built, TlsError, TlsFiles};
use crate::metrics::{Metrics, reload_result};

/// What one poll found.
pub type Polled = rotation::Polled<Built, TlsError>;

/// The agent's client configuration, following its files.
#[derive(Debug)]
pub struct ClientTls {
    files: Rotating<TlsFiles>,
}

impl ClientTls {
    /// Reads and builds the configuration; an error here is a startup error.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            files: Rotating::load("client", files)?,
        })
    }

    /// Reports the expiry and reloads in `metrics` from now on.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let reloads = |result| metrics.certificate_reloads.with_label_values(&[result]);
        Self {
            files: self.files.with_metrics(RotationMetrics {
                expiry: metrics.certificate_expiry.clone(),
                reloaded: reloads(reload_result::SUCCESS),
                failed: reloads(reload_result::FAILURE),
            }),
        }
    }

    /// The configuration the next connection uses.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.files.current().config
    }

    /// The notAfter of the client certificate in use, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.files.not_after()
    }

    /// Reads the files; if they changed, builds and swaps in the new
    /// configuration, or keeps the old one. Counts and logs the outcome.
    pub fn poll(&self) -> Polled {
        self.files.poll()
    }
}

/// Polls `tls`'s files every `period` until `shutdown`.
pub async fn watch(tls: Arc<ClientTls>, period: Duration, shutdown: CancellationToken) {
    rotation::watch(period, shutdown, move || {
        tls.poll();
    })
    .await;
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
        assert!(matches!(tls.poll(), Polled::Reloaded(_)));
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
