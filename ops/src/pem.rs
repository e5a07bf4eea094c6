//! Reading the PEM files a TLS configuration is made of: each error names
//! the flag the operator set and the file, so a bad mount or a half-written
//! Secret is found from the log line alone.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file cannot be used. `flag` is the command-line flag that
/// named the file (`--tls-cert`, `--hub-ca`, ...).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{flag} {}: cannot read the file: {source}", path.display())]
    ReadFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: cannot read PEM certificates: {source}", path.display())]
    ReadCertificates {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{flag} {}: no certificate in the file", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {}: cannot parse the certificate: {reason}", path.display())]
    ParseCertificate {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} {}: cannot read a PEM private key: {source}", path.display())]
    ReadKey {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
}

/// One file named by `flag`, read once (through any symlink, as a mounted
/// Secret's `..data` swap requires).
pub fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::ReadFile {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The certificates in `pem` (the bytes of `path`); at least one.
pub fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::ReadCertificates {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in `pem` (the bytes of `path`).
pub fn private_key(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| PemError::ReadKey {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The notAfter of `cert` (read from `path`), Unix seconds.
pub fn not_after(
    flag: &'static str,
    path: &Path,
    cert: &CertificateDer<'_>,
) -> Result<i64, PemError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        PemError::ParseCertificate {
            flag,
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let path = Path::new("/etc/uplink/edge.crt");
        let error = certificates("--tls-cert", path, b"not pem").map(|c| c.len());
        match error {
            Err(error @ PemError::NoCertificate { .. }) => {
                let text = error.to_string();
                assert!(text.contains("--tls-cert"), "{text}");
                assert!(text.contains("/etc/uplink/edge.crt"), "{text}");
            }
            other => panic!("expected NoCertificate, got {other:?}"),
        }
        let torn = b"-----BEGIN CERTIFICATE-----\nMII";
        assert!(matches!(
            certificates("--hub-ca", path, torn),
            Err(PemError::ReadCertificates {
                flag: "--hub-ca",
                ..
            })
        ));
        assert!(matches!(
            private_key("--tls-key", path, b""),
            Err(PemError::ReadKey {
                flag: "--tls-key",
                ..
            })
        ));
        let missing = read("--tls-key", Path::new("/nonexistent/uplink/key.pem"));
        assert!(
            matches!(&missing, Err(e) if e.to_string().contains("--tls-key /nonexistent/uplink/key.pem")),
            "{missing:?}"
        );
    }
}
