//! Upstream → downstream: what the hub sends down (a KCP object, in KCP's
//! coordinates) becomes the object the agent applies in its cluster.
//!
//! One pipeline, [`transform`], each step a small function:
//!
//! 1. [`check_type`]: only namespaced objects of `--downward-resources`;
//! 2. [`parse_manifest`] and [`check_identity`]: a JSON object naming the
//!    same type and name as the delta;
//! 3. [`check_never_synced`]: ServiceAccount token Secrets and the
//!    `kube-root-ca.crt` ConfigMap stay in KCP (each cluster has its own);
//! 4. [`strip_server_fields`]: what the KCP server set (uid, resourceVersion,
//!    managedFields, status, ...);
//! 5. [`strip_kcp_metadata`]: kcp's labels and annotations (`kcp.io/*`,
//!    `*.kcp.io/*`), finalizers and ownerReferences, but not this cluster's
//!    placement label, which [`set_placement_label`] makes sure of: it marks
//!    what the agent owns;
//! 6. [`place_in_namespace`]: the upstream namespace becomes `kcp-<hash>`
//!    ([`crate::mapping::NamespaceLocator::downstream_namespace`]), created by
//!    the apply stage as [`namespace_object`] says, with the locator the
//!    upward mapping reads. So the way back is exact: the object keeps its
//!    name, and its namespace's locator names the workspace and namespace.
//!
//! Nothing here talks to a cluster; [`crate::apply`] does.

use serde_json::{Map, Value, json};
use uplink_protocol::{ApplyFailure, ObjectRef, SyncTargetLocator};

use crate::config::ResourceSpec;
use crate::mapping::{NAMESPACE_LOCATOR, NamespaceLocator, SyncTargetRef};

/// The prefix of kcp's placement label: `state.workload.kcp.io/<key>`.
pub const PLACEMENT_LABEL_PREFIX: &str = "state.workload.kcp.io/";

/// The placement label's value for objects synced down.
pub const PLACEMENT_SYNC: &str = "Sync";

/// The placement label's value for objects born in the cluster that KCP
/// holds whole (kcp's own value): what the upsync watches select.
pub const PLACEMENT_UPSYNC: &str = "Upsync";

/// The Secret type whose objects are never synced.
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// The ConfigMap every namespace gets from its own cluster.
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The cluster the agent applies for: its SyncTarget, as the hub named it
/// in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sync_target: SyncTargetRef,
    /// kcp's SyncTarget key: the placement label is
    /// `state.workload.kcp.io/<key>`.
    pub key: String,
}

impl From<&SyncTargetLocator> for Target {
    fn from(locator: &SyncTargetLocator) -> Self {
        Target {
            sync_target: SyncTargetRef {
                workspace: locator.workspace.clone(),
                name: locator.name.clone(),
                uid: locator.uid.clone(),
            },
            key: locator.key.clone(),
        }
    }
}

impl Target {
    /// The label that marks what the agent applied for this cluster.
    pub fn placement_label(&self) -> String {
        format!("{PLACEMENT_LABEL_PREFIX}{}", self.key)
    }
}

/// An object ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Downstream {
    pub key: DownstreamKey,
    pub version: String,
    /// Where its namespace points upstream (the namespace's annotation).
    pub locator: NamespaceLocator,
    /// The body of the server-side apply.
    pub manifest: Value,
}

/// One downstream object, whatever its version: what a downward snapshot
/// names and what the sweep compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownstreamKey {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

/// Why a manifest cannot become a downstream object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("{0} is not one of the agent's --downward-resources")]
    NotConfigured(String),
    #[error("cluster-scoped objects are not applied")]
    ClusterScoped,
    #[error("the object names no KCP workspace")]
    NoWorkspace,
    #[error("the manifest is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("the manifest's {field} is {manifest:?}, the delta says {delta:?}")]
    Mismatch {
        field: &'static str,
        manifest: String,
        delta: String,
    },
    #[error("ServiceAccount token Secrets are never synced (each cluster issues its own)")]
    ServiceAccountToken,
    #[error("the kube-root-ca.crt ConfigMap is never synced (each cluster has its own)")]
    RootCa,
}

impl TransformError {
    /// The [`ApplyFailure`] reason the hub gets.
    pub fn reason(&self) -> &'static str {
        match self {
            TransformError::NotAnObject(_)
            | TransformError::Mismatch { .. }
            | TransformError::NoWorkspace => ApplyFailure::MALFORMED,
            TransformError::NotConfigured(_)
            | TransformError::ClusterScoped
            | TransformError::ServiceAccountToken
            | TransformError::RootCa => ApplyFailure::FORBIDDEN,
        }
    }
}

/// The whole pipeline: `manifest_json` of the placed `object` → the object
/// to apply in the cluster of `target`.
pub fn transform(
    object: &ObjectRef,
    manifest_json: &str,
    target: &Target,
    types: &[ResourceSpec],
) -> Result<Downstream, TransformError> {
    check_type(object, types)?;
    let locator = namespace_locator(object, target)?;
    let mut manifest = parse_manifest(manifest_json)?;
    check_identity(&mut manifest, object)?;
    check_never_synced(&manifest, object)?;
    strip_server_fields(&mut manifest);
    strip_kcp_metadata(&mut manifest, &target.placement_label());
    set_placement_label(&mut manifest, &target.placement_label());
    let namespace = locator.downstream_namespace();
    place_in_namespace(&mut manifest, &namespace);
    Ok(Downstream {
        key: DownstreamKey {
            group: object.group.clone(),
            resource: object.resource.clone(),
            namespace,
            name: object.name.clone(),
        },
        version: object.version.clone(),
        locator,
        manifest: Value::Object(manifest),
    })
}

/// Where `object` lives downstream, without its manifest (for deletes and
/// the snapshot's names).
pub fn locate(object: &ObjectRef, target: &Target) -> Result<DownstreamKey, TransformError> {
    let locator = namespace_locator(object, target)?;
    Ok(DownstreamKey {
        group: object.group.clone(),
        resource: object.resource.clone(),
        namespace: locator.downstream_namespace(),
        name: object.name.clone(),
    })
}

/// Step 1: a namespaced object of a configured type.
pub fn check_type(object: &ObjectRef, types: &[ResourceSpec]) -> Result<(), TransformError> {
    let configured = types.iter().any(|t| {
        t.group == object.group && t.version == object.version && t.resource == object.resource
    });
    if !configured {
        let spec = ResourceSpec {
            resource: object.resource.clone(),
            version: object.version.clone(),
            group: object.group.clone(),
        };
        return Err(TransformError::NotConfigured(spec.to_string()));
    }
    if object.namespace.is_none() {
        return Err(TransformError::ClusterScoped);
    }
    Ok(())
}

/// kcp's namespace locator of `object` in the cluster of `target`.
pub fn namespace_locator(
    object: &ObjectRef,
    target: &Target,
) -> Result<NamespaceLocator, TransformError> {
    let namespace = object
        .namespace
        .clone()
        .ok_or(TransformError::ClusterScoped)?;
    if object.workspace.is_empty() {
        return Err(TransformError::NoWorkspace);
    }
    Ok(NamespaceLocator {
        sync_target: target.sync_target.clone(),
        workspace: object.workspace.clone(),
        namespace,
    })
}

/// Step 2a: the manifest as a JSON object.
pub fn parse_manifest(manifest_json: &str) -> Result<Map<String, Value>, TransformError> {
    match serde_json::from_str(manifest_json) {
        Ok(Value::Object(manifest)) => Ok(manifest),
        Ok(_) => Err(TransformError::NotAnObject("not an object".into())),
        Err(e) => Err(TransformError::NotAnObject(e.to_string())),
    }
}

/// Step 2b: the manifest's `apiVersion`, `kind` and `metadata.name` are the
/// delta's (filled in from it where the manifest leaves them out).
pub fn check_identity(
    manifest: &mut Map<String, Value>,
    object: &ObjectRef,
) -> Result<(), TransformError> {
    let api_version = if object.group.is_empty() {
        object.version.clone()
    } else {
        format!("{}/{}", object.group, object.version)
    };
    agree(manifest, "apiVersion", &api_version)?;
    agree(manifest, "kind", &object.kind)?;
    let metadata = manifest
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(metadata) = metadata else {
        return Err(TransformError::NotAnObject(
            "metadata is not an object".into(),
        ));
    };
    agree(metadata, "name", &object.name).map_err(|e| match e {
        TransformError::Mismatch {
            manifest, delta, ..
        } => TransformError::Mismatch {
            field: "metadata.name",
            manifest,
            delta,
        },
        other => other,
    })
}

/// `map[field]` is `expected`, or absent (then it is set).
fn agree(
    map: &mut Map<String, Value>,
    field: &'static str,
    expected: &str,
) -> Result<(), TransformError> {
    match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.to_owned(), Value::String(expected.to_owned()));
            Ok(())
        }
        Some(Value::String(value)) if value == expected => Ok(()),
        Some(other) => Err(TransformError::Mismatch {
            field,
            manifest: other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned),
            delta: expected.to_owned(),
        }),
    }
}

/// Step 3: objects every cluster makes for itself never go down.
pub fn check_never_synced(
    manifest: &Map<String, Value>,
    object: &ObjectRef,
) -> Result<(), TransformError> {
    let core = object.group.is_empty();
    if core
        && object.kind == "Secret"
        && manifest.get("type") == Some(&json!(SERVICE_ACCOUNT_TOKEN))
    {
        return Err(TransformError::ServiceAccountToken);
    }
    if core && object.kind == "ConfigMap" && object.name == ROOT_CA_CONFIGMAP {
        return Err(TransformError::RootCa);
    }
    Ok(())
}

/// Step 4: what the KCP server set on its copy means nothing downstream.
pub fn strip_server_fields(manifest: &mut Map<String, Value>) {
    manifest.remove("status");
    if let Some(Value::Object(metadata)) = manifest.get_mut("metadata") {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "namespace",
        ] {
            metadata.remove(field);
        }
    }
}

/// Whether a label or annotation key is kcp's own: its prefix is `kcp.io`
/// or ends in `.kcp.io`.
pub fn is_kcp_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, _)) => prefix == "kcp.io" || prefix.ends_with(".kcp.io"),
        None => false,
    }
}

/// Step 5: kcp's labels and annotations (except `keep`, this cluster's
/// placement label), finalizers and ownerReferences go; they belong to KCP.
pub fn strip_kcp_metadata(manifest: &mut Map<String, Value>, keep: &str) {
    let Some(Value::Object(metadata)) = manifest.get_mut("metadata") else {
        return;
    };
    metadata.remove("finalizers");
    metadata.remove("ownerReferences");
    for field in ["labels", "annotations"] {
        if let Some(Value::Object(entries)) = metadata.get_mut(field) {
            entries.retain(|key, _| key == keep || !is_kcp_key(key));
            if entries.is_empty() {
                metadata.remove(field);
            }
        }
    }
}

/// Step 5b: the placement label marks the object as the agent's (the sweep
/// after a downward snapshot looks for it).
pub fn set_placement_label(manifest: &mut Map<String, Value>, label: &str) {
    let metadata = manifest
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(metadata) = metadata {
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Value::Object(labels) = labels {
            labels
                .entry(label.to_owned())
                .or_insert_with(|| Value::String(PLACEMENT_SYNC.to_owned()));
        }
    }
}

/// Step 6: the object moves to its downstream namespace.
pub fn place_in_namespace(manifest: &mut Map<String, Value>, namespace: &str) {
    if let Some(Value::Object(metadata)) = manifest.get_mut("metadata") {
        metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
}

/// The namespace the agent creates for `locator`: named after it, with the
/// locator annotation (what the upward mapping reads) and the placement
/// label (what the agent owns).
pub fn namespace_object(locator: &NamespaceLocator, target: &Target) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": locator.downstream_namespace(),
            "annotations": { NAMESPACE_LOCATOR: locator.to_annotation() },
            "labels": { target.placement_label(): PLACEMENT_SYNC },
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mapping::{DownstreamRef, Locator, to_upstream};

    const KEY: &str = "6ohB8yeXhwqTQVuBzJRgqcRJTpRjX7yTZu5g5g";

    fn target() -> Target {
        Target {
            sync_target: SyncTargetRef {
                workspace: "root:compute".into(),
                name: "east".into(),
                uid: "st-uid".into(),
            },
            key: KEY.into(),
        }
    }

    fn deployment_ref(workspace: &str, namespace: &str) -> ObjectRef {
        ObjectRef {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            kind: "Deployment".into(),
            workspace: workspace.into(),
            namespace: Some(namespace.into()),
            name: "web".into(),
            uid: "upstream-uid".into(),
        }
    }

    fn types() -> Vec<ResourceSpec> {
        crate::config::default_downward_resources()
    }

    /// A Deployment as KCP holds it once placed on `east`.
    fn placed_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "upstream-uid",
                "resourceVersion": "42",
                "generation": 3,
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
                "finalizers": [format!("workload.kcp.io/syncer-{KEY}")],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Foo", "name": "x", "uid": "u"}],
                "labels": {
                    "app": "web",
                    format!("state.workload.kcp.io/{KEY}"): "Sync",
                    "state.workload.kcp.io/other-cluster": "Sync",
                },
                "annotations": {
                    "kcp.io/cluster": "2x8f1",
                    "experimental.status.workload.kcp.io/other": "{}",
                    "team.example.com/owner": "alice",
                },
            },
            "spec": { "replicas": 2 },
            "status": { "readyReplicas": 2 },
        })
    }

    #[test]
    fn a_placed_deployment_becomes_its_downstream_object() {
        let object = deployment_ref("root:org:team-a", "shop");
        let manifest = placed_deployment().to_string();
        let down = transform(&object, &manifest, &target(), &types()).unwrap();
        let namespace = down.locator.downstream_namespace();
        assert!(
            namespace.starts_with("kcp-") && namespace.len() == 16,
            "{namespace}"
        );
        assert_eq!(
            down.manifest,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "namespace": namespace,
                    "labels": { "app": "web", format!("state.workload.kcp.io/{KEY}"): "Sync" },
                    "annotations": { "team.example.com/owner": "alice" },
                },
                "spec": { "replicas": 2 },
            })
        );
        assert_eq!(down.key.namespace, namespace);
        assert_eq!(locate(&object, &target()).unwrap(), down.key);
    }

    #[test]
    fn the_upward_mapping_reverses_the_transformation() {
        for (workspace, namespace) in [
            ("root:org:team-a", "shop"),
            ("root:a-b-c:d--e:f-", "ns-with-many-dashes"),
            ("root", "default"),
        ] {
            let object = deployment_ref(workspace, namespace);
            let manifest = placed_deployment().to_string();
            let down = transform(&object, &manifest, &target(), &types()).unwrap();
            // What the agent writes on the namespace, read as the upward
            // path reads it.
            let ns = namespace_object(&down.locator, &target());
            let annotation = ns["metadata"]["annotations"][NAMESPACE_LOCATOR]
                .as_str()
                .unwrap();
            let locator = Locator::parse(annotation).unwrap();
            assert_eq!(ns["metadata"]["name"], json!(down.key.namespace));
            let downstream = DownstreamRef {
                resource: ResourceSpec::deployments(),
                kind: down.manifest["kind"].as_str().unwrap().into(),
                namespace: down.key.namespace.clone(),
                name: down.manifest["metadata"]["name"].as_str().unwrap().into(),
                uid: object.uid.clone(),
            };
            assert_eq!(to_upstream(&downstream, &locator), object);
        }
    }

    #[test]
    fn only_configured_namespaced_types_go_down() {
        let mut pods = deployment_ref("root:org", "shop");
        pods.group = String::new();
        pods.resource = "pods".into();
        assert_eq!(
            check_type(&pods, &types()),
            Err(TransformError::NotConfigured("pods.v1".into()))
        );
        let mut cluster_scoped = deployment_ref("root:org", "shop");
        cluster_scoped.namespace = None;
        assert_eq!(
            check_type(&cluster_scoped, &types()),
            Err(TransformError::ClusterScoped)
        );
        assert!(check_type(&deployment_ref("root:org", "shop"), &types()).is_ok());
        assert_eq!(
            TransformError::ClusterScoped.reason(),
            ApplyFailure::FORBIDDEN
        );
    }

    #[test]
    fn the_manifest_must_name_what_the_delta_names() {
        let object = deployment_ref("root:org", "shop");
        assert!(matches!(
            parse_manifest("[1]"),
            Err(TransformError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_manifest("{not json"),
            Err(TransformError::NotAnObject(_))
        ));
        let mut other_name = parse_manifest(r#"{"metadata":{"name":"api"}}"#).unwrap();
        let err = check_identity(&mut other_name, &object).unwrap_err();
        assert_eq!(err.reason(), ApplyFailure::MALFORMED);
        assert!(err.to_string().contains("metadata.name"), "{err}");
        let mut other_kind = parse_manifest(r#"{"kind":"StatefulSet"}"#).unwrap();
        assert!(matches!(
            check_identity(&mut other_kind, &object),
            Err(TransformError::Mismatch { field: "kind", .. })
        ));
        // Left out: filled in from the delta.
        let mut bare = parse_manifest("{}").unwrap();
        check_identity(&mut bare, &object).unwrap();
        assert_eq!(
            Value::Object(bare),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})
        );
        let mut no_workspace = object.clone();
        no_workspace.workspace = String::new();
        assert_eq!(
            namespace_locator(&no_workspace, &target()),
            Err(TransformError::NoWorkspace)
        );
    }

    #[test]
    fn service_account_tokens_and_the_root_ca_stay_upstream() {
        let mut secret = deployment_ref("root:org", "shop");
        (secret.group, secret.resource, secret.kind) =
            (String::new(), "secrets".into(), "Secret".into());
        let token = parse_manifest(r#"{"type":"kubernetes.io/service-account-token"}"#).unwrap();
        assert_eq!(
            check_never_synced(&token, &secret),
            Err(TransformError::ServiceAccountToken)
        );
        let opaque = parse_manifest(r#"{"type":"Opaque"}"#).unwrap();
        assert!(check_never_synced(&opaque, &secret).is_ok());

        let mut root_ca = secret.clone();
        (root_ca.resource, root_ca.kind, root_ca.name) = (
            "configmaps".into(),
            "ConfigMap".into(),
            "kube-root-ca.crt".into(),
        );
        assert_eq!(
            check_never_synced(&Map::new(), &root_ca),
            Err(TransformError::RootCa)
        );
        assert_eq!(TransformError::RootCa.reason(), ApplyFailure::FORBIDDEN);
        root_ca.name = "settings".into();
        assert!(check_never_synced(&Map::new(), &root_ca).is_ok());
    }

    #[test]
    fn server_fields_go() {
        let mut manifest = parse_manifest(
            r#"{"status":{"a":1},"spec":{"x":1},"metadata":{"name":"n","uid":"u","resourceVersion":"1","generation":2,"creationTimestamp":"t","deletionTimestamp":"t","deletionGracePeriodSeconds":30,"managedFields":[],"selfLink":"/x","namespace":"up"}}"#,
        )
        .unwrap();
        strip_server_fields(&mut manifest);
        assert_eq!(
            Value::Object(manifest),
            json!({"spec": {"x": 1}, "metadata": {"name": "n"}})
        );
    }

    #[test]
    fn kcp_metadata_goes_except_the_placement_label() {
        assert!(is_kcp_key("kcp.io/cluster"));
        assert!(is_kcp_key("state.workload.kcp.io/abc"));
        assert!(is_kcp_key("internal.workload.kcp.io/cluster"));
        assert!(!is_kcp_key("app"));
        assert!(!is_kcp_key("example.com/kcp.io"));
        assert!(!is_kcp_key("notkcp.io/x"));
        let keep = format!("state.workload.kcp.io/{KEY}");
        let mut manifest = parse_manifest(
            &json!({"metadata": {
                "finalizers": ["workload.kcp.io/syncer-x", "example.com/mine"],
                "ownerReferences": [{"uid": "u"}],
                "labels": {&keep: "Sync", "kcp.io/x": "1", "app": "web"},
                "annotations": {"kcp.io/cluster": "c"},
            }})
            .to_string(),
        )
        .unwrap();
        strip_kcp_metadata(&mut manifest, &keep);
        assert_eq!(
            Value::Object(manifest),
            json!({"metadata": {"labels": {&keep: "Sync", "app": "web"}}})
        );
    }

    #[test]
    fn the_placement_label_is_set_when_missing() {
        let label = target().placement_label();
        let mut bare = parse_manifest(r#"{"metadata":{"labels":{"app":"web"}}}"#).unwrap();
        set_placement_label(&mut bare, &label);
        assert_eq!(bare["metadata"]["labels"][&label], json!("Sync"));
        assert_eq!(bare["metadata"]["labels"]["app"], json!("web"));
        let mut none = Map::new();
        set_placement_label(&mut none, &label);
        assert_eq!(none["metadata"]["labels"][&label], json!("Sync"));
        let mut placed = parse_manifest(r#"{"metadata":{"namespace":"shop"}}"#).unwrap();
        place_in_namespace(&mut placed, "kcp-abc");
        assert_eq!(placed["metadata"]["namespace"], json!("kcp-abc"));
    }
}
