//! The tunnel's TLS: a TLS 1.3 server that requires a client certificate
//! signed by the configured CA, and the cluster identity such a certificate
//! proves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use uplink_ops::pem::{self, PemError};
use uplink_ops::rotation::Source;
use x509_parser::extensions::GeneralName;

pub mod reload;

/// The URI SAN prefix that names a cluster in a client certificate.
pub const CLUSTER_URI_PREFIX: &str = "uplink://cluster/";

/// Why the TLS configuration could not be built; each variant names the
/// flag or file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{flag} {}: certificate not usable as a client CA: {source}", path.display())]
    AddClientCa {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{flag} {}: cannot build the client certificate verifier: {source}", path.display())]
    ClientVerifier {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("--tls-cert {} / --tls-key {}: the key does not fit the certificate, or is unsupported: {source}", cert.display(), key.display())]
    ServingCertificate {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("selecting TLS 1.3: {0}")]
    ProtocolVersions(#[source] rustls::Error),
}

/// Builds the tunnel's TLS server configuration.
///
/// Only TLS 1.3, only the ring provider (not relying on a process-wide
/// default), a client certificate signed by `client_ca` required, ALPN
/// `http/1.1` (the WebSocket upgrade is HTTP/1.1).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let files = TlsFiles::tunnel(cert, key, client_ca);
    Ok(files.build(&files.read()?)?.config)
}

/// Builds the HTTPS configuration of the hub's HTTP listener (mutual TLS
/// for the hub API, `--http-client-ca`): as [`server_config`], but a client
/// may come without a certificate (bearer tokens, probes); one it presents
/// must be signed by `client_ca`.
pub fn https_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let files = TlsFiles::https(cert, key, client_ca);
    Ok(files.build(&files.read()?)?.config)
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificate {
    Required,
    Optional,
}

/// Where one listener's PEM files are, and whether its clients must present
/// a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the serving certificate chain.
    pub cert: PathBuf,
    /// `--tls-key`: its private key.
    pub key: PathBuf,
    /// The CA(s) client certificates must chain to.
    pub client_ca: PathBuf,
    /// The flag that named `client_ca`, for errors.
    pub client_ca_flag: &'static str,
    pub clients: ClientCertificate,
}

impl TlsFiles {
    /// The tunnel's: `--client-ca`, client certificates required.
    pub fn tunnel(cert: &Path, key: &Path, client_ca: &Path) -> Self {
        Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.to_owned(),
            client_ca_flag: "--client-ca",
            clients: ClientCertificate::Required,
        }
    }

    /// The HTTPS listener's: `--http-client-ca`, client certificates
    /// optional.
    pub fn https(cert: &Path, key: &Path, client_ca: &Path) -> Self {
        Self {
            client_ca_flag: "--http-client-ca",
            clients: ClientCertificate::Optional,
            ..Self::tunnel(cert, key, client_ca)
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

    /// The three files' bytes, read once each (through any symlink, as a
    /// mounted Secret's `..data` swap requires).
    fn read(&self) -> Result<Material, TlsError> {
        Ok(Material {
            cert: pem::read("--tls-cert", &self.cert)?,
            key: pem::read("--tls-key", &self.key)?,
            client_ca: pem::read(self.client_ca_flag, &self.client_ca)?,
        })
    }

    /// The TLS 1.3 server configuration `material` makes: each file parsed,
    /// the key checked against the certificate.
    fn build(&self, material: &Material) -> Result<Built, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_flag = self.client_ca_flag;

        let chain = pem::certificates("--tls-cert", &self.cert, &material.cert)?;
        // `pem::certificates` returns at least one.
        let not_after = pem::not_after("--tls-cert", &self.cert, &chain[0])?;
        let key = pem::private_key("--tls-key", &self.key, &material.key)?;

        let mut roots = rustls::RootCertStore::empty();
        for ca in pem::certificates(ca_flag, &self.client_ca, &material.client_ca)? {
            roots.add(ca).map_err(|source| TlsError::AddClientCa {
                flag: ca_flag,
                path: self.client_ca.clone(),
                source,
            })?;
        }
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if self.clients == ClientCertificate::Optional {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier
            .build()
            .map_err(|source| TlsError::ClientVerifier {
                flag: ca_flag,
                path: self.client_ca.clone(),
                source,
            })?;

        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::ProtocolVersions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::ServingCertificate {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
    client_ca: Vec<u8>,
}

/// A server configuration built from [`Material`], with when its
/// certificate expires.
#[derive(Debug, Clone)]
pub struct Built {
    pub config: Arc<ServerConfig>,
    /// The serving certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Why a verified client certificate names no cluster.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("parsing the client certificate: {0}")]
    Parse(String),
    #[error(
        "the client certificate has neither a `{CLUSTER_URI_PREFIX}<name>` URI SAN nor a subject CN"
    )]
    NoName,
}

/// The cluster a (verified) client certificate proves: the name in its URI
/// SAN `uplink://cluster/<name>`, else its subject common name.
pub fn cluster_identity(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Parse(e.to_string()))?;

    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    if let Some(san) = san {
        let from_uri = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => uri
                .strip_prefix(CLUSTER_URI_PREFIX)
                .filter(|name| !name.is_empty()),
            _ => None,
        });
        if let Some(name) = from_uri {
            return Ok(name.to_owned());
        }
    }

    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned)
        .ok_or(IdentityError::NoName)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cn: &str, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("cert: {e}"))
            .der()
            .clone()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap_or_else(|e| panic!("uri: {e}")))
    }

    #[test]
    fn the_uri_san_wins_over_the_common_name() {
        let der = cert(
            "not-this",
            vec![uri("spiffe://elsewhere/x"), uri("uplink://cluster/edge-1")],
        );
        assert_eq!(cluster_identity(&der).ok().as_deref(), Some("edge-1"));
    }

    #[test]
    fn the_common_name_is_the_fallback() {
        let der = cert(
            "edge-2",
            vec![SanType::DnsName(
                "edge-2.example"
                    .try_into()
                    .unwrap_or_else(|e| panic!("{e}")),
            )],
        );
        assert_eq!(cluster_identity(&der).ok().as_deref(), Some("edge-2"));
    }

    #[test]
    fn no_name_is_an_error() {
        let der = cert("", vec![]);
        assert!(matches!(cluster_identity(&der), Err(IdentityError::NoName)));
    }
}
