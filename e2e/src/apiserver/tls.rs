//! The server's identity: a self-signed serving certificate (valid for
//! `localhost` and `127.0.0.1`), the rustls configuration that serves it, and
//! the kubeconfig that lets clients trust it.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ApiServerError;

/// A freshly generated serving certificate and its key.
#[derive(Debug)]
pub(crate) struct ServingCert {
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl ServingCert {
    /// Generates a self-signed certificate for `localhost` and `127.0.0.1`.
    pub fn generate() -> Result<ServingCert, ApiServerError> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params =
            rcgen::CertificateParams::new(names).map_err(ApiServerError::Certificate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "uplink-e2e-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(ApiServerError::Certificate)?;
        let cert = params
            .self_signed(&key)
            .map_err(ApiServerError::Certificate)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// A rustls server configuration (ring provider, HTTP/1.1 only) serving this certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, ApiServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ApiServerError::Tls)?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)
            .map_err(ApiServerError::Tls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A kubeconfig with one cluster, one user (bearer token) and one current context.
pub(crate) fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = super::object::base64_encode(ca_pem.as_bytes());
    // Every value is quoted JSON, which is valid YAML whatever the characters.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: uplink-e2e\n\
         \x20 cluster:\n\
         \x20   server: {server}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: uplink-e2e\n\
         \x20 user:\n\
         \x20   token: {token}\n\
         contexts:\n\
         - name: uplink-e2e\n\
         \x20 context:\n\
         \x20   cluster: uplink-e2e\n\
         \x20   user: uplink-e2e\n\
         current-context: uplink-e2e\n\
         preferences: {{}}\n",
        server = q(server),
        ca = q(&ca),
        token = q(token),
    )
}

/// A random bearer token (hex, 32 characters).
pub(crate) fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses_as_yaml() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:1/clusters/root:a", "PEM", "tok");
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap_or_default();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:1/clusters/root:a"
        );
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(v["current-context"], "uplink-e2e");
    }
}
