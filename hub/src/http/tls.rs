//! Who a verified client certificate of the HTTP listener proves, as
//! kube-apiserver's x509 authenticator reads it: the subject's common name
//! is the user, each organization a group.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::auth::UserInfo;

/// The user of the connection's client certificate; `None` without one
/// (rustls verified any certificate it accepted against the client CA).
pub(super) fn client_user(connection: &rustls::ServerConnection) -> Option<UserInfo> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}
