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

fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
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

/// Loads the client certificate and key and the hub CA into a TLS 1.3 client
/// configuration.
pub fn client_config(
    cert: &Path,
    key: &Path,
    hub_ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let chain = read_certificates("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certificates("--hub-ca", hub_ca)? {
        roots.add(ca).map_err(|source| TlsError::BadRoot {
            path: hub_ca.to_owned(),
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
    Ok(Arc::new(config))
}
