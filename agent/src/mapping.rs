//! Downstream → upstream coordinates: which KCP workspace and namespace a
//! downstream object belongs to. This is the only place that converts between
//! the two.
//!
//! The rule is kcp's syncer convention: an object is synced when its
//! downstream NAMESPACE carries the annotation `kcp.io/namespace-locator`, a
//! JSON object whose `cluster` field names the KCP workspace and whose
//! `namespace` field names the upstream namespace (other fields such as
//! `syncTarget` are ignored). The upstream object has the same name, group,
//! version and resource. Workspace names are taken whole: they may contain
//! dashes and colons (`root:org:team-a`) and are never split or rebuilt.
//!
//! Objects without a locator (no annotation, a malformed one, cluster-scoped
//! objects) are not synced. No downstream labels or annotations are carried
//! upstream with a status, so there is nothing to strip.
//!
//! Upsynced objects (protocol version 3, `--upsync-resources`) travel whole:
//! [`upsynced_object`] turns one into what KCP is to hold (upstream
//! namespace, nothing the downstream server set, references to other
//! synced objects mapped too); a cluster-scoped one lives in the workspace
//! of the cluster's SyncTarget ([`cluster_scoped_upstream`]).
//!
//! The other direction (upstream → downstream, for the objects the hub sends
//! down) names the downstream namespace as kcp's syncer did:
//! [`NamespaceLocator::downstream_namespace`] hashes the full locator, which
//! the agent also writes on the namespace it creates, so the upward rule
//! above reads it back unchanged.

use serde::Serialize;
use sha2::{Digest, Sha224};
use uplink_protocol::ObjectRef;
use uplink_protocol::names::is_valid_path_segment;

use crate::config::ResourceSpec;

/// The namespace annotation that names an object's upstream coordinates.
pub const NAMESPACE_LOCATOR: &str = "kcp.io/namespace-locator";

/// Where a downstream namespace's objects live upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locator {
    /// The KCP workspace (logical cluster), e.g. `root:org:team-a`.
    pub workspace: String,
    /// The namespace in that workspace.
    pub namespace: String,
}

/// Why a namespace's locator annotation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocatorError {
    #[error("annotation {NAMESPACE_LOCATOR} is not a JSON object: {0}")]
    InvalidJson(String),
    #[error("annotation {NAMESPACE_LOCATOR} has no {0:?} field")]
    MissingField(&'static str),
    #[error("annotation {NAMESPACE_LOCATOR} field {field:?} = {value:?} {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The annotation's JSON shape, for writing it; when reading, fields other
/// than these two (`syncTarget`, ...) are ignored.
#[derive(Serialize)]
struct LocatorJson<'a> {
    cluster: &'a str,
    namespace: &'a str,
}

impl Locator {
    /// Parses the value of the `kcp.io/namespace-locator` annotation.
    pub fn parse(annotation: &str) -> Result<Self, LocatorError> {
        let json: serde_json::Value = serde_json::from_str(annotation)
            .map_err(|e| LocatorError::InvalidJson(e.to_string()))?;
        let serde_json::Value::Object(fields) = json else {
            return Err(LocatorError::InvalidJson("not a JSON object".into()));
        };
        let field = |name: &'static str| -> Result<String, LocatorError> {
            match fields.get(name) {
                None | Some(serde_json::Value::Null) => Err(LocatorError::MissingField(name)),
                Some(serde_json::Value::String(value)) => {
                    check_field(name, value)?;
                    Ok(value.clone())
                }
                Some(other) => Err(LocatorError::InvalidField {
                    field: name,
                    value: other.to_string(),
                    reason: "is not a string",
                }),
            }
        };
        Ok(Self {
            workspace: field("cluster")?,
            namespace: field("namespace")?,
        })
    }

    /// The annotation value naming this locator (the inverse of [`Self::parse`]).
    pub fn to_annotation(&self) -> String {
        let json = LocatorJson {
            cluster: &self.workspace,
            namespace: &self.namespace,
        };
        // Serializing a struct of two strings cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }

    /// The locator an upstream object was mapped with.
    pub fn of_upstream(object: &ObjectRef) -> Option<Self> {
        Some(Self {
            workspace: object.workspace.clone(),
            namespace: object.namespace.clone()?,
        })
    }
}

/// kcp's `NamespaceLocator` (the `kcp.io/namespace-locator` annotation as
/// kcp's syncer wrote it): the SyncTarget the namespace was made for, the
/// upstream workspace and the upstream namespace. On the wire:
/// `{"syncTarget":{"cluster":W,"name":N,"uid":U},"cluster":WS,"namespace":NS}`,
/// fields in this order, empty `cluster`s left out (Go's `json.Marshal` of
/// kcp's struct, whose `cluster` fields are `omitempty`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NamespaceLocator {
    #[serde(rename = "syncTarget")]
    pub sync_target: SyncTargetRef,
    /// The upstream workspace (kcp's logical cluster).
    #[serde(rename = "cluster", skip_serializing_if = "String::is_empty")]
    pub workspace: String,
    /// The upstream namespace.
    pub namespace: String,
}

/// The SyncTarget part of a [`NamespaceLocator`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct SyncTargetRef {
    /// The workspace holding the SyncTarget.
    #[serde(rename = "cluster", skip_serializing_if = "String::is_empty")]
    pub workspace: String,
    pub name: String,
    pub uid: String,
}

impl NamespaceLocator {
    /// The annotation value: the locator as JSON, exactly the bytes
    /// [`Self::downstream_namespace`] hashes. [`Locator::parse`] reads it.
    pub fn to_annotation(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// kcp's `PhysicalClusterNamespaceName`: `kcp-` and the first 12
    /// characters of the SHA-224 digest of [`Self::to_annotation`], read as
    /// one big-endian number and written in lowercase base 36 (a `0` in
    /// front for each leading zero byte, as kcp's base36 library does).
    pub fn downstream_namespace(&self) -> String {
        let digest = Sha224::digest(self.to_annotation().as_bytes());
        let mut digits = base36(&digest);
        digits.truncate(12);
        format!("kcp-{digits}")
    }

    /// The locator the upward mapping reads from this one.
    pub fn upstream(&self) -> Locator {
        Locator {
            workspace: self.workspace.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// `bytes` as one big-endian unsigned number in lowercase base 36, by long
/// division, with one `0` in front per leading zero byte.
fn base36(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    let mut number: Vec<u8> = bytes[zeros..].to_vec();
    let mut reversed = Vec::new();
    while !number.is_empty() {
        let mut remainder = 0u32;
        let mut quotient = Vec::with_capacity(number.len());
        for byte in &number {
            let value = (remainder << 8) | u32::from(*byte);
            let q = value / 36;
            remainder = value % 36;
            if !(quotient.is_empty() && q == 0) {
                // q < 256: value < 36 * 256 since remainder < 36.
                quotient.push(u8::try_from(q).unwrap_or(u8::MAX));
            }
        }
        reversed.push(DIGITS[remainder as usize]);
        number = quotient;
    }
    reversed.extend(std::iter::repeat_n(b'0', zeros));
    reversed.reverse();
    String::from_utf8_lossy(&reversed).into_owned()
}

fn check_field(field: &'static str, value: &str) -> Result<(), LocatorError> {
    let fail = |reason| {
        Err(LocatorError::InvalidField {
            field,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("is empty");
    }
    // Both end up in URL paths upstream (`/clusters/<ws>/.../namespaces/<ns>`):
    // the hub refuses anything else, by the same rule.
    if !is_valid_path_segment(value) {
        return fail("is not a valid name (ASCII letters, digits and -._:~ only)");
    }
    Ok(())
}

/// A namespaced object in downstream coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DownstreamRef {
    pub resource: ResourceSpec,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The upstream coordinates of `object`, whose namespace has `locator`.
pub fn to_upstream(object: &DownstreamRef, locator: &Locator) -> ObjectRef {
    ObjectRef {
        group: object.resource.group.clone(),
        version: object.resource.version.clone(),
        resource: object.resource.resource.clone(),
        kind: object.kind.clone(),
        workspace: locator.workspace.clone(),
        namespace: Some(locator.namespace.clone()),
        name: object.name.clone(),
        uid: object.uid.clone(),
    }
}

/// The upstream coordinates of a cluster-scoped upsynced `object`: the
/// workspace of the cluster's SyncTarget.
pub fn cluster_scoped_upstream(object: &DownstreamRef, synctarget_workspace: &str) -> ObjectRef {
    ObjectRef {
        group: object.resource.group.clone(),
        version: object.resource.version.clone(),
        resource: object.resource.resource.clone(),
        kind: object.kind.clone(),
        workspace: synctarget_workspace.to_owned(),
        namespace: None,
        name: object.name.clone(),
        uid: object.uid.clone(),
    }
}

/// Annotations the downstream cluster's own tools set, which mean nothing
/// upstream.
const DOWNSTREAM_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "pv.kubernetes.io/bound-by-controller",
    NAMESPACE_LOCATOR,
];

/// An upsynced downstream object (without its status) as KCP is to hold it
/// at `upstream`: `apiVersion`, `kind`, `metadata` with only `name`, the
/// upstream `namespace`, `labels` and `annotations` (less the downstream
/// tools' own), and every other top-level field. A PersistentVolume's
/// `spec.claimRef` names its claim upstream (through `locator_of`, the
/// locator of a downstream namespace), without the downstream claim's uid
/// and resourceVersion; a claim in a namespace that is not synced to the
/// same workspace is not named at all.
pub fn upsynced_object(
    object: &serde_json::Value,
    upstream: &ObjectRef,
    locator_of: impl Fn(&str) -> Option<Locator>,
) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut out = match object {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    out.remove("status");
    let meta = out
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut kept = Map::new();
    kept.insert("name".into(), Value::from(upstream.name.clone()));
    if let Some(namespace) = &upstream.namespace {
        kept.insert("namespace".into(), Value::from(namespace.clone()));
    }
    if let Some(labels) = meta.get("labels").filter(|l| l.is_object()) {
        kept.insert("labels".into(), labels.clone());
    }
    if let Some(Value::Object(annotations)) = meta.get("annotations") {
        let annotations: Map<String, Value> = annotations
            .iter()
            .filter(|(key, _)| !DOWNSTREAM_ANNOTATIONS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if !annotations.is_empty() {
            kept.insert("annotations".into(), Value::Object(annotations));
        }
    }
    out.insert("metadata".into(), Value::Object(kept));
    if upstream.group.is_empty() && upstream.resource == "persistentvolumes" {
        map_claim_ref(&mut out, upstream, locator_of);
    }
    Value::Object(out)
}

/// A PersistentVolume's `spec.claimRef`, upstream (see [`upsynced_object`]).
fn map_claim_ref(
    volume: &mut serde_json::Map<String, serde_json::Value>,
    upstream: &ObjectRef,
    locator_of: impl Fn(&str) -> Option<Locator>,
) {
    let Some(spec) = volume.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let Some(claim) = spec.get_mut("claimRef").and_then(|c| c.as_object_mut()) else {
        return;
    };
    claim.remove("uid");
    claim.remove("resourceVersion");
    let mapped = claim
        .get("namespace")
        .and_then(|n| n.as_str())
        .and_then(&locator_of)
        .filter(|locator| locator.workspace == upstream.workspace);
    match mapped {
        Some(locator) => {
            claim.insert("namespace".into(), locator.namespace.into());
        }
        None => {
            spec.remove("claimRef");
        }
    }
}

/// The downstream coordinates of `object`, given the downstream namespace
/// whose locator points at the object's workspace and namespace (the inverse
/// of [`to_upstream`]).
pub fn to_downstream(object: &ObjectRef, downstream_namespace: &str) -> DownstreamRef {
    DownstreamRef {
        resource: ResourceSpec {
            resource: object.resource.clone(),
            version: object.version.clone(),
            group: object.group.clone(),
        },
        kind: object.kind.clone(),
        namespace: downstream_namespace.to_owned(),
        name: object.name.clone(),
        uid: object.uid.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn downstream(namespace: &str, name: &str) -> DownstreamRef {
        DownstreamRef {
            resource: ResourceSpec::deployments(),
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: "3f1c-uid".into(),
        }
    }

    #[test]
    fn parses_kcp_syncer_annotation_and_ignores_other_fields() {
        let annotation = r#"{"syncTarget":{"cluster":"root:compute","name":"east","uid":"u"},"cluster":"root:org:team-a","namespace":"default"}"#;
        let locator = Locator::parse(annotation).unwrap();
        assert_eq!(locator.workspace, "root:org:team-a");
        assert_eq!(locator.namespace, "default");
    }

    #[test]
    fn round_trip_keeps_dashes_and_colons() {
        for (workspace, namespace, name) in [
            ("root:org:team-a", "my-app", "web-frontend-v2"),
            ("root", "default", "a"),
            (
                "root:a-b-c:d--e:f-",
                "ns-with-many-dashes",
                "name:with:colons",
            ),
        ] {
            let locator = Locator {
                workspace: workspace.into(),
                namespace: namespace.into(),
            };
            // Through the annotation text and back.
            assert_eq!(Locator::parse(&locator.to_annotation()).unwrap(), locator);
            // Downstream → upstream → downstream.
            let down = downstream("kcp-2x8f1-downstream", name);
            let up = to_upstream(&down, &locator);
            assert_eq!(up.workspace, workspace);
            assert_eq!(up.namespace.as_deref(), Some(namespace));
            assert_eq!(up.name, name);
            assert_eq!(
                (up.group.as_str(), up.version.as_str(), up.resource.as_str()),
                ("apps", "v1", "deployments")
            );
            assert_eq!(Locator::of_upstream(&up), Some(locator));
            assert_eq!(to_downstream(&up, &down.namespace), down);
        }
    }

    /// kcp's own test fixture (pkg/syncer/spec, kcp.io era): this locator
    /// names the downstream namespace `kcp-33jbiactwhg0`. The expected name
    /// was also checked with Python's hashlib and a hand-written base 36.
    #[test]
    fn downstream_namespace_is_kcps_physical_cluster_namespace_name() {
        let locator = NamespaceLocator {
            sync_target: SyncTargetRef {
                workspace: "root:org:ws".into(),
                name: "us-west1".into(),
                uid: "syncTargetUID".into(),
            },
            workspace: "root:org:ws".into(),
            namespace: "test".into(),
        };
        assert_eq!(
            locator.to_annotation(),
            r#"{"syncTarget":{"cluster":"root:org:ws","name":"us-west1","uid":"syncTargetUID"},"cluster":"root:org:ws","namespace":"test"}"#
        );
        assert_eq!(locator.downstream_namespace(), "kcp-33jbiactwhg0");
        // The upward mapping reads the full locator back.
        assert_eq!(
            Locator::parse(&locator.to_annotation()).unwrap(),
            locator.upstream()
        );
        // Another SyncTarget, another namespace.
        let mut other = locator.clone();
        other.sync_target.uid = "another".into();
        assert_ne!(other.downstream_namespace(), locator.downstream_namespace());
    }

    #[test]
    fn base36_reads_big_endian_and_keeps_leading_zero_bytes() {
        assert_eq!(base36(&[]), "");
        assert_eq!(base36(&[35]), "z");
        assert_eq!(base36(&[1, 0]), "74"); // 256 = 7 * 36 + 4
        assert_eq!(base36(&[0, 0, 36]), "0010");
        // Worked out with Python: int.from_bytes(b"Hello World", "big")
        // written in base 36.
        assert_eq!(base36(b"Hello World"), "azw5bz2xp56m4qyck");
    }

    #[test]
    fn malformed_locators_are_clear_errors() {
        assert!(matches!(
            Locator::parse("not json"),
            Err(LocatorError::InvalidJson(_))
        ));
        assert!(matches!(
            Locator::parse(r#"["root"]"#),
            Err(LocatorError::InvalidJson(_))
        ));
        assert!(matches!(
            Locator::parse(r#"{"cluster": 5, "namespace": "x"}"#),
            Err(LocatorError::InvalidField {
                field: "cluster",
                ..
            })
        ));
        assert_eq!(
            Locator::parse(r#"{"namespace": "x"}"#),
            Err(LocatorError::MissingField("cluster"))
        );
        assert_eq!(
            Locator::parse(r#"{"cluster": "root"}"#),
            Err(LocatorError::MissingField("namespace"))
        );
        let err = Locator::parse(r#"{"cluster": "", "namespace": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("\"cluster\""), "{err}");
        assert!(Locator::parse(r#"{"cluster": "root/evil", "namespace": "x"}"#).is_err());
        assert!(Locator::parse(r#"{"cluster": "root", "namespace": "a b"}"#).is_err());
        // The hub's rule for path segments, not a weaker one.
        for bad in ["a?b", "a#b", "..", "é", "a%2Fb"] {
            let annotation = format!(r#"{{"cluster": "root", "namespace": "{bad}"}}"#);
            assert!(Locator::parse(&annotation).is_err(), "{bad}");
        }
    }
}
