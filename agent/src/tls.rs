//! The agent's TLS client configuration: its client certificate, and the hub
//! CA as the only trusted root.
//!
//! Built with an explicit ring provider, so the library works whether or not
//! a process-wide default provider is installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use uplink_ops::pem::{self, PemError};
use uplink_ops::rotation::Source;

/// Why the TLS material cannot be used; every variant names the flag and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("--hub-ca {}: certificate not usable as a trust root: {source}", path.display())]
    BadRoot {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("--tls-cert/--tls-key: the key does not fit the certificate, or is unsupported: {0}")]
    ClientAuth(#[source] rustls::Error),
    #[error("building the TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
}

pub mod reload;

/// Where the agent's PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the client certificate chain.
    pub cert: PathBuf,
    /// `--tls-key`: its private key.
    pub key: PathBuf,
    /// `--hub-ca`: the CA(s) the hub's certificate must chain to.
    pub hub_ca: PathBuf,
}

impl TlsFiles {
    pub fn new(cert: &Path, key: &Path, hub_ca: &Path) -> Self {
        Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            hub_ca: hub_ca.to_owned(),
        }
    }
}

/// What rotation reads and builds: the three files.
impl Source for TlsFiles {
    type Material = Material;
    type Built = Built;
    type Error = TlsError;

    fn not_after(built: &Built) -> i64 {
        built.not_after
    }

    fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The three files' bytes, each read once (through any symlink, as a
    /// mounted Secret's `..data` swap requires).
    fn read(&self) -> Result<Material, TlsError> {
        Ok(Material {
            cert: pem::read("--tls-cert", &self.cert)?,
            key: pem::read("--tls-key", &self.key)?,
            hub_ca: pem::read("--hub-ca", &self.hub_ca)?,
        })
    }

    /// The TLS 1.3 client configuration `material` makes: each file parsed,
    /// the key checked against the certificate.
    fn build(&self, material: &Material) -> Result<Built, TlsError> {
        let chain = pem::certificates("--tls-cert", &self.cert, &material.cert)?;
        // `pem::certificates` returns at least one.
        let not_after = pem::not_after("--tls-cert", &self.cert, &chain[0])?;
        let key = pem::private_key("--tls-key", &self.key, &material.key)?;
        let mut roots = RootCertStore::empty();
        for ca in pem::certificates("--hub-ca", &self.hub_ca, &material.hub_ca)? {
            roots.add(ca).map_err(|source| TlsError::BadRoot {
                path: self.hub_ca.clone(),
                source,
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::ClientAuth)?;
        Ok(Built {
            config: Arc::new(config),
            not_after,
        })
    }
}

/// The bytes of one set of [`TlsFiles`], as read at one moment; two reads
/// compare equal when nothing changed on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    hub_ca: Vec<u8>,
}

/// A client configuration built from [`Material`], with when its
/// certificate expires.
#[derive(Debug, Clone)]
pub struct Built {
    pub config: Arc<rustls::ClientConfig>,
    /// The client certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Loads the client certificate and key and the hub CA into a TLS 1.3 client
/// configuration.
pub fn client_config(
    cert: &Path,
    key: &Path,
    hub_ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let files = TlsFiles::new(cert, key, hub_ca);
    Ok(files.build(&files.read()?)?.config)
}
