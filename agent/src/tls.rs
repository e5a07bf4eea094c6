//! The agent's TLS client configuration: its client certificate, and the hub
//! CA as the only trusted root.
//!
//! Built with an explicit ring provider, so the library works whether or not
//! a process-wide default provider is installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS material cannot be used; every variant names the flag and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: cannot read the file: {source}", path.display())]
    ReadFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--tls-cert {}: cannot parse the certificate: {reason}", path.display())]
    ParseCertificate { path: PathBuf, reason: String },
    #[error("{flag} {}: cannot read PEM certificates: {source}", path.display())]
    ReadCertificates {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{flag} {}: no certificate in the file", path.display())]
    NoCertificates { flag: &'static str, path: PathBuf },
    #[error("--tls-key {}: cannot read a PEM private key: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
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

    /// The three files' bytes, each read once (through any symlink, as a
    /// mounted Secret's `..data` swap requires).
    pub fn read(&self) -> Result<Material, TlsError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::ReadFile {
                flag,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Material {
            files: self.clone(),
            cert: read("--tls-cert", &self.cert)?,
            key: read("--tls-key", &self.key)?,
            hub_ca: read("--hub-ca", &self.hub_ca)?,
        })
    }
}

/// The bytes of one set of [`TlsFiles`], as read at one moment; two reads
/// compare equal when nothing changed on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    files: TlsFiles,
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

impl Material {
    /// The TLS 1.3 client configuration this material makes: each file
    /// parsed, the key checked against the certificate.
    pub fn build(&self) -> Result<Built, TlsError> {
        let files = &self.files;
        let chain = parse_certificates("--tls-cert", &files.cert, &self.cert)?;
        let not_after = not_after(&files.cert, &chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|source| TlsError::ReadKey {
            path: files.key.clone(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for ca in parse_certificates("--hub-ca", &files.hub_ca, &self.hub_ca)? {
            roots.add(ca).map_err(|source| TlsError::BadRoot {
                path: files.hub_ca.clone(),
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

fn parse_certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::ReadCertificates {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The notAfter of `cert` (read from `path`), Unix seconds.
fn not_after(path: &Path, cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        TlsError::ParseCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Loads the client certificate and key and the hub CA into a TLS 1.3 client
/// configuration.
pub fn client_config(
    cert: &Path,
    key: &Path,
    hub_ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(TlsFiles::new(cert, key, hub_ca).read()?.build()?.config)
}
