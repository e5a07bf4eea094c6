//! A development PKI: one CA, the hub's serving certificate and one client
//! certificate per cluster, so that agents and the hub can speak mutual TLS
//! on a laptop, in tests and in the demo.
//!
//! Nothing here is meant for production: keys are generated in process,
//! written unencrypted (mode 0600) and never rotated.
//!
//! # What the certificates say
//!
//! - `ca.crt` / `ca.key`: a self-signed CA (ECDSA P-256), path length 0, so it
//!   can sign leaf certificates only. Valid from yesterday for ten years.
//! - `hub.crt` / `hub.key`: the hub's serving certificate, extended key usage
//!   `serverAuth`, SANs `localhost`, `127.0.0.1` and every `--hub-san` (a DNS
//!   name or an IP address). Valid from yesterday for 397 days.
//! - `<cluster>.crt` / `<cluster>.key`: one client certificate per cluster,
//!   extended key usage `clientAuth`, the cluster name as the subject CN, a URI
//!   SAN `uplink://cluster/<name>` and, when the name is a valid DNS name, a DNS
//!   SAN `<name>`. Valid from yesterday for 397 days.
//!
//! # Which name the hub trusts
//!
//! The hub takes a cluster's identity from the URI SAN
//! [`CLUSTER_URI_PREFIX`]`<name>` first and falls back to the subject CN. The
//! DNS SAN is only there for tools that display DNS names; the hub must not use
//! it, because not every cluster name is a DNS name (`root:org` is not).
//!
//! # Cluster names
//!
//! A cluster name is 1 to [`MAX_CLUSTER_NAME_LEN`] characters from
//! `[A-Za-z0-9._:-]`. That covers Kubernetes object names and KCP logical
//! cluster paths (`root:org:team`), keeps the URI SAN valid without escaping and
//! keeps `<cluster>.crt` a plain file name. `ca` and `hub` are refused because
//! their files would overwrite the CA's and the hub's.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// The URI SAN prefix that carries a cluster's identity: `uplink://cluster/<name>`.
pub const CLUSTER_URI_PREFIX: &str = "uplink://cluster/";

/// The longest accepted cluster name (the longest DNS name).
pub const MAX_CLUSTER_NAME_LEN: usize = 253;

/// Common name of the CA that `uplink-e2e certs` generates unless told otherwise.
pub const DEFAULT_CA_COMMON_NAME: &str = "Uplink development CA";

/// Common name of the hub's serving certificate.
const HUB_COMMON_NAME: &str = "uplink-hub";
/// Organization written into every certificate, so nobody mistakes them for real ones.
const ORGANIZATION: &str = "Uplink development PKI";
/// File stems that `write_all` uses for itself; a cluster may not take them.
const RESERVED_STEMS: [&str; 2] = ["ca", "hub"];
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 397;

/// What went wrong while building or writing the development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },
    #[error(
        "invalid hub subject alternative name {san:?}: it is neither an IP address nor a DNS name"
    )]
    InvalidHubSan { san: String },
    #[error("generating {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("computing the validity period")]
    Validity(#[source] jiff::Error),
    #[error("reading back the {what} from PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("creating directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; pass --force to replace the PKI in that directory", path.display())]
    AlreadyExists { path: PathBuf },
}

/// A certificate and its private key, both PEM-encoded.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `<stem>.crt` (mode 0644) and `<stem>.key` (mode 0600) into `dir`,
    /// which must exist. Existing files are replaced.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        write_file(
            &dir.join(format!("{stem}.crt")),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(format!("{stem}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )
    }

    /// The certificate as the chain rustls wants (a leaf only: peers trust the CA).
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PkiError::Pem {
                what: "certificate",
                source,
            })
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| PkiError::Pem {
            what: "private key",
            source,
        })
    }
}

impl fmt::Debug for IssuedCert {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// An in-memory development CA that issues the hub's and the clusters' certificates.
pub struct DevPki {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevPki {
    /// Shows the CA certificate, never its key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// Generates a fresh CA with the given common name.
    pub fn new(ca_common_name: &str) -> Result<DevPki, PkiError> {
        let what = || format!("the CA {ca_common_name:?}");
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(ca_common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_DAYS)?;

        let key = generate_key(what)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: what(),
                source,
            })?;
        Ok(DevPki {
            ca_cert_pem: cert.pem(),
            ca_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, for a rustls root store.
    pub fn ca_cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes()).map_err(|source| {
            PkiError::Pem {
                what: "CA certificate",
                source,
            }
        })
    }

    /// Issues the hub's serving certificate: SANs `localhost`, `127.0.0.1` and
    /// `extra_sans` (each a DNS name or an IP address), extended key usage `serverAuth`.
    pub fn hub_cert(&self, extra_sans: &[String]) -> Result<IssuedCert, PkiError> {
        self.hub_cert_for_days(extra_sans, LEAF_VALIDITY_DAYS)
    }

    /// As [`DevPki::hub_cert`], valid from yesterday for `days` days (a
    /// renewed certificate in a rotation test expires on another day).
    pub fn hub_cert_for_days(
        &self,
        extra_sans: &[String],
        days: i64,
    ) -> Result<IssuedCert, PkiError> {
        let mut params =
            self.leaf_params(HUB_COMMON_NAME, ExtendedKeyUsagePurpose::ServerAuth, days)?;
        let defaults = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        for san in defaults.iter().chain(extra_sans) {
            let san = hub_san(san)?;
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        self.sign(params, || "the hub's serving certificate".to_owned())
    }

    /// Issues the client certificate of `cluster`: CN and URI SAN
    /// `uplink://cluster/<cluster>`, plus a DNS SAN when the name is a DNS
    /// name; extended key usage `clientAuth`.
    pub fn client_cert(&self, cluster: &str) -> Result<IssuedCert, PkiError> {
        self.client_cert_for_days(cluster, LEAF_VALIDITY_DAYS)
    }

    /// As [`DevPki::client_cert`], valid from yesterday for `days` days.
    pub fn client_cert_for_days(&self, cluster: &str, days: i64) -> Result<IssuedCert, PkiError> {
        validate_cluster_name(cluster)?;
        let mut params = self.leaf_params(cluster, ExtendedKeyUsagePurpose::ClientAuth, days)?;
        params
            .subject_alt_names
            .push(SanType::URI(ia5(cluster_uri(cluster))?));
        if rustls_pki_types::DnsName::try_from(cluster).is_ok() {
            params
                .subject_alt_names
                .push(SanType::DnsName(ia5(cluster.to_owned())?));
        }
        self.sign(params, || {
            format!("the client certificate of cluster {cluster:?}")
        })
    }

    /// Writes `ca.crt`, `ca.key`, `hub.crt`, `hub.key` and `<cluster>.crt` /
    /// `<cluster>.key` for every cluster into `dir` (created if missing). Keys get
    /// mode 0600. Every name is checked before the first file is written.
    pub fn write_all(
        &self,
        dir: &Path,
        clusters: &[String],
        hub_sans: &[String],
    ) -> Result<(), PkiError> {
        for cluster in clusters {
            validate_cluster_name(cluster)?;
            if RESERVED_STEMS.contains(&cluster.as_str()) {
                return Err(PkiError::InvalidClusterName {
                    name: cluster.clone(),
                    reason: "its files would overwrite the CA's or the hub's",
                });
            }
        }
        let hub = self.hub_cert(hub_sans)?;
        let client_certs = clusters
            .iter()
            .map(|cluster| Ok((cluster, self.client_cert(cluster)?)))
            .collect::<Result<Vec<_>, PkiError>>()?;

        fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        IssuedCert {
            cert_pem: self.ca_cert_pem.clone(),
            key_pem: self.ca_key_pem.clone(),
        }
        .write(dir, "ca")?;
        hub.write(dir, "hub")?;
        for (cluster, cert) in client_certs {
            cert.write(dir, cluster)?;
        }
        Ok(())
    }

    fn leaf_params(
        &self,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days)?;
        Ok(params)
    }

    fn sign(
        &self,
        params: CertificateParams,
        what: impl Fn() -> String,
    ) -> Result<IssuedCert, PkiError> {
        let key = generate_key(&what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                what: what(),
                source,
            })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The URI SAN that names `cluster`: `uplink://cluster/<cluster>`.
pub fn cluster_uri(cluster: &str) -> String {
    format!("{CLUSTER_URI_PREFIX}{cluster}")
}

/// Accepts 1 to [`MAX_CLUSTER_NAME_LEN`] characters from `[A-Za-z0-9._:-]`.
pub fn validate_cluster_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| {
        Err(PkiError::InvalidClusterName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return invalid("it is longer than 253 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return invalid("only A-Z, a-z, 0-9, '.', '_', ':' and '-' are allowed");
    }
    if name == "." || name == ".." {
        return invalid("it is a path component");
    }
    Ok(())
}

fn hub_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || PkiError::InvalidHubSan {
        san: san.to_owned(),
    };
    rustls_pki_types::DnsName::try_from(san).map_err(|_| invalid())?;
    Ia5String::try_from(san)
        .map(SanType::DnsName)
        .map_err(|_| invalid())
}

fn ia5(value: String) -> Result<Ia5String, PkiError> {
    Ia5String::try_from(value.as_str()).map_err(|source| PkiError::Generate {
        what: format!("the subject alternative name {value:?}"),
        source,
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn generate_key(what: impl Fn() -> String) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: format!("the key for {}", what()),
        source,
    })
}

/// Valid from the start of yesterday (UTC), so a peer whose clock is a little
/// behind still accepts it, for `days` days.
fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .yesterday()
        .map_err(PkiError::Validity)?;
    let end = start
        .checked_add(jiff::Span::new().days(days))
        .map_err(PkiError::Validity)?;
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(
            i32::from(d.year()),
            d.month().unsigned_abs(),
            d.day().unsigned_abs(),
        )
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);
    Ok(())
}

/// Replaces `path` with `contents`. The mode is set before the contents are
/// written, so a key never sits in a file that others can read, even when the
/// file existed with a wider mode.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(mode);
        let file = options.open(path).map_err(failed)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(failed)?;
        write_contents(file, contents).map_err(failed)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        write_contents(options.open(path).map_err(failed)?, contents).map_err(failed)
    }
}

fn write_contents(mut file: fs::File, contents: &[u8]) -> io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()
}

/// `uplink-e2e certs`: write a development PKI into a directory.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, hub.crt, hub.key and <cluster>.crt/.key into (created if missing).
    #[arg(long, env = "UPLINK_CERTS_OUT", default_value = "certs/dev")]
    pub out: PathBuf,
    /// Clusters to issue client certificates for, comma-separated. Names use [A-Za-z0-9._:-].
    #[arg(
        long,
        env = "UPLINK_CERTS_CLUSTERS",
        value_delimiter = ',',
        required = true
    )]
    pub clusters: Vec<String>,
    /// Extra subject alternative names of the hub (DNS name or IP address), besides localhost and 127.0.0.1.
    /// Repeat the flag or separate with commas.
    #[arg(long = "hub-san", env = "UPLINK_CERTS_HUB_SANS", value_delimiter = ',')]
    pub hub_sans: Vec<String>,
    /// Common name of the generated CA.
    #[arg(long, env = "UPLINK_CERTS_CA_NAME", default_value = DEFAULT_CA_COMMON_NAME)]
    pub ca_name: String,
    /// Replace an existing PKI in the output directory (its CA key would otherwise be lost silently).
    #[arg(long, env = "UPLINK_CERTS_FORCE")]
    pub force: bool,
}

impl Default for CertsArgs {
    fn default() -> Self {
        CertsArgs {
            out: PathBuf::from("certs/dev"),
            clusters: Vec::new(),
            hub_sans: Vec::new(),
            ca_name: DEFAULT_CA_COMMON_NAME.to_owned(),
            force: false,
        }
    }
}

/// Generates a fresh PKI and writes it to `args.out`.
pub fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    let ca_key = args.out.join("ca.key");
    if !args.force && ca_key.exists() {
        return Err(PkiError::AlreadyExists { path: ca_key }.into());
    }
    // A cluster named twice gets one certificate, not two that overwrite each other.
    let mut clusters = Vec::with_capacity(args.clusters.len());
    for cluster in args.clusters {
        if !clusters.contains(&cluster) {
            clusters.push(cluster);
        }
    }
    let pki = DevPki::new(&args.ca_name)?;
    pki.write_all(&args.out, &clusters, &args.hub_sans)?;
    println!(
        "wrote a development PKI to {}: ca, hub, {}",
        args.out.display(),
        clusters.join(", ")
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

    use rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    };
    use rustls_pki_types::{ServerName, UnixTime};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(pki: &DevPki) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_cert_der().unwrap()).unwrap();
        Arc::new(roots)
    }

    fn client_verifier(pki: &DevPki) -> Arc<dyn ClientCertVerifier> {
        WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
            .build()
            .unwrap()
    }

    /// The parts of a certificate the tests look at, read back with x509-parser.
    #[derive(Debug)]
    struct Parsed {
        common_name: String,
        dns: Vec<String>,
        uris: Vec<String>,
        ips: Vec<IpAddr>,
        server_auth: bool,
        client_auth: bool,
        is_ca: bool,
    }

    fn parse(pem: &str) -> Parsed {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        parsed(&cert)
    }

    fn parsed(cert: &X509Certificate<'_>) -> Parsed {
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (mut dns, mut uris, mut ips) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(san) = cert.subject_alternative_name().unwrap() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                        _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                    }),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
        let eku = cert.extended_key_usage().unwrap().map(|e| e.value.clone());
        Parsed {
            common_name,
            dns,
            uris,
            ips,
            server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
            client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
            is_ca: cert.is_ca(),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn pki_written_to_a_directory_parses_back_with_the_right_names_and_usages() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let pki = DevPki::new("test CA").unwrap();
        let clusters = vec!["east-1".to_owned(), "root:org:team".to_owned()];
        let sans = vec![
            "hub.uplink.test".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ];
        pki.write_all(&out, &clusters, &sans).unwrap();

        let read = |name: &str| fs::read_to_string(out.join(name)).unwrap();
        let ca = parse(&read("ca.crt"));
        assert!(ca.is_ca);
        assert_eq!(ca.common_name, "test CA");
        assert_eq!(read("ca.key"), pki.ca_key_pem);

        let hub = parse(&read("hub.crt"));
        assert!(!hub.is_ca);
        assert!(hub.server_auth && !hub.client_auth);
        assert_eq!(hub.dns, ["localhost", "hub.uplink.test"]);
        assert_eq!(
            hub.ips,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.7".parse().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(hub.uris.is_empty());

        let east = parse(&read("east-1.crt"));
        assert!(east.client_auth && !east.server_auth);
        assert_eq!(east.common_name, "east-1");
        assert_eq!(east.uris, ["uplink://cluster/east-1"]);
        assert_eq!(east.dns, ["east-1"]);

        // Not a DNS name: the identity travels in the URI SAN and the CN only.
        let team = parse(&read("root:org:team.crt"));
        assert_eq!(team.common_name, "root:org:team");
        assert_eq!(team.uris, ["uplink://cluster/root:org:team"]);
        assert!(team.dns.is_empty());

        for key in ["ca.key", "hub.key", "east-1.key", "root:org:team.key"] {
            assert_eq!(mode(&out.join(key)), 0o600, "{key}");
            PrivateKeyDer::from_pem_file(out.join(key)).unwrap();
        }
        assert_eq!(mode(&out.join("hub.crt")), 0o644);
    }

    #[test]
    fn rewriting_a_key_that_was_world_readable_makes_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("east.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let pki = DevPki::new("test CA").unwrap();
        pki.client_cert("east")
            .unwrap()
            .write(dir.path(), "east")
            .unwrap();
        assert_eq!(mode(&key), 0o600);
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
    }

    #[test]
    fn client_certificates_verify_against_their_ca_only() {
        let pki = DevPki::new("test CA").unwrap();
        let other = DevPki::new("other CA").unwrap();
        let verifier = client_verifier(&pki);
        let now = UnixTime::now();

        let own = pki.client_cert("east").unwrap().cert_chain().unwrap();
        verifier.verify_client_cert(&own[0], &[], now).unwrap();

        let foreign = other.client_cert("east").unwrap().cert_chain().unwrap();
        let err = verifier
            .verify_client_cert(&foreign[0], &[], now)
            .unwrap_err();
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

        // The hub's certificate is for serving only: it cannot log in as a client.
        let hub = pki.hub_cert(&[]).unwrap().cert_chain().unwrap();
        verifier.verify_client_cert(&hub[0], &[], now).unwrap_err();
    }

    #[test]
    fn bad_cluster_names_and_hub_sans_are_refused_with_the_name() {
        let pki = DevPki::new("test CA").unwrap();
        for name in ["", "a/b", "east 1", "ümlaut", "..", &"x".repeat(254)] {
            match pki.client_cert(name) {
                Err(PkiError::InvalidClusterName { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        for name in ["East_1", "a.b-c", "root:org", "x"] {
            pki.client_cert(name).unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let err = pki
            .write_all(dir.path(), &["hub".to_owned()], &[])
            .unwrap_err();
        assert!(err.to_string().contains("\"hub\""), "{err}");
        let err = pki
            .write_all(dir.path(), &["ok".to_owned(), "a/b".to_owned()], &[])
            .unwrap_err();
        assert!(err.to_string().contains("a/b"), "{err}");
        assert!(
            !dir.path().join("ca.key").exists(),
            "nothing is written when a name is bad"
        );

        let err = pki.hub_cert(&["not a name".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("not a name"), "{err}");
    }

    #[test]
    fn certs_command_refuses_to_replace_a_pki_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            out: dir.path().to_owned(),
            clusters: vec!["east".to_owned(), "west".to_owned(), "east".to_owned()],
            ..CertsArgs::default()
        };
        run_certs(args.clone()).unwrap();
        let first = fs::read_to_string(dir.path().join("ca.key")).unwrap();
        for file in [
            "ca.crt", "hub.crt", "hub.key", "east.crt", "east.key", "west.crt", "west.key",
        ] {
            assert!(dir.path().join(file).exists(), "{file}");
        }

        let err = run_certs(args.clone()).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("ca.key")).unwrap(),
            first
        );

        run_certs(CertsArgs {
            force: true,
            ..args
        })
        .unwrap();
        assert_ne!(
            fs::read_to_string(dir.path().join("ca.key")).unwrap(),
            first
        );
    }

    #[test]
    fn certs_flags_parse_with_commas_and_repeats() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            certs: CertsArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "certs",
            "--out",
            "/tmp/x",
            "--clusters",
            "a,b",
            "--hub-san",
            "h1",
            "--hub-san",
            "10.1.1.1,h2",
        ])
        .unwrap();
        assert_eq!(cli.certs.out, PathBuf::from("/tmp/x"));
        assert_eq!(cli.certs.clusters, ["a", "b"]);
        assert_eq!(cli.certs.hub_sans, ["h1", "10.1.1.1", "h2"]);
    }

    /// What one side of a loopback handshake saw.
    async fn handshake(
        pki: &DevPki,
        client: &IssuedCert,
    ) -> (Result<(), String>, Result<String, String>) {
        let hub = pki.hub_cert(&["hub.uplink.test".to_owned()]).unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier(pki))
            .with_single_cert(hub.cert_chain().unwrap(), hub.private_key().unwrap())
            .unwrap();
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(pki))
            .with_client_auth_cert(client.cert_chain().unwrap(), client.private_key().unwrap())
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"welcome").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });

        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("hub.uplink.test").unwrap();
        let client = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut got = String::new();
            tls.read_to_string(&mut got)
                .await
                .map_err(|e| e.to_string())?;
            Ok(got)
        }
        .await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn mutual_tls_handshake_succeeds_with_a_cluster_certificate_from_the_ca() {
        let pki = DevPki::new("test CA").unwrap();
        let cluster = pki.client_cert("east").unwrap();
        let (server, client) = handshake(&pki, &cluster).await;
        server.unwrap();
        assert_eq!(client.unwrap(), "welcome");
    }

    #[tokio::test]
    async fn mutual_tls_handshake_fails_with_a_certificate_from_another_ca() {
        let pki = DevPki::new("test CA").unwrap();
        let intruder = DevPki::new("other CA")
            .unwrap()
            .client_cert("east")
            .unwrap();
        let (server, client) = handshake(&pki, &intruder).await;
        let server_err = server.unwrap_err();
        assert!(server_err.contains("UnknownIssuer"), "{server_err}");
        // TLS 1.3 clients finish before the server judges them; the refusal arrives as an alert.
        let client_err = client.unwrap_err();
        assert!(client_err.contains("alert"), "{client_err}");
    }
}
