//! The resource table: the built-in resources every server serves and the
//! ones CustomResourceDefinitions add, with what discovery, validation and
//! the status subresource need to know about each.

use std::sync::Arc;

use serde_json::{Value, json};

/// One served version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VersionDef {
    pub name: String,
    /// Whether `<resource>/status` exists in this version.
    pub status: bool,
    /// The CRD's `openAPIV3Schema`, used for pruning unknown fields.
    pub schema: Option<Value>,
    /// CRD `additionalPrinterColumns` (for `kubectl get` tables).
    pub printer_columns: Vec<Value>,
    /// Extra fields usable in field selectors (besides metadata.name/namespace).
    pub selectable_fields: Vec<String>,
}

/// A resource (group + plural) and everything about it that does not depend on storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Served versions; the first is the preferred one.
    pub versions: Vec<VersionDef>,
    /// Whether `metadata.generation` is maintained.
    pub tracks_generation: bool,
    /// Defined by a CustomResourceDefinition.
    pub custom: bool,
    /// What discovery lists as the main resource's verbs (most have all of [`ALL_VERBS`]).
    pub verbs: &'static [&'static str],
    /// Subresources beyond `status` and `scale` (see [`SubresourceDef`]).
    pub subresources: Vec<SubresourceDef>,
    /// Another resource whose objects this one serves in its own shape
    /// (events.k8s.io/v1 Events are core/v1 Events underneath).
    pub storage: Option<Storage>,
    /// The `Warning` header of a deprecated resource (componentstatuses).
    pub deprecation: Option<&'static str>,
}

/// Every verb a stored resource serves.
pub(crate) const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of `status`, `scale` and other views of one object.
pub(crate) const OBJECT_VIEW_VERBS: &[&str] = &["get", "patch", "update"];

/// A subresource served by its own code (`pods/ephemeralcontainers`,
/// `serviceaccounts/token`, `certificatesigningrequests/approval`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubresourceDef {
    pub name: &'static str,
    /// The kind it takes and returns when that is not the parent's: (group, version, kind).
    pub kind: Option<(&'static str, &'static str, &'static str)>,
    pub verbs: &'static [&'static str],
}

/// Where a resource that shares another's objects keeps them, and how its
/// shape differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// events.k8s.io/v1 Events, stored as core/v1 Events.
    CoreEvents,
}

/// The key of a resource's storage: group and plural (independent of version).
pub(crate) type ResourceKey = (String, String);

pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

impl ResourceDef {
    /// The key of the objects this resource serves (another resource's, for
    /// a resource with [`Storage`]).
    pub fn key(&self) -> ResourceKey {
        match self.storage {
            Some(Storage::CoreEvents) => (String::new(), "events".to_string()),
            None => (self.group.clone(), self.plural.clone()),
        }
    }

    /// Whether this is `plural` in `group`.
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// A subresource served by its own code, if this resource has it.
    pub fn subresource(&self, name: &str) -> Option<&SubresourceDef> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn version(&self, version: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|v| v.name == version)
    }

    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// Whether any served version has a status subresource (the storage-level
    /// rule for resetting status on create and keeping it on main writes).
    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status)
    }

    /// A built-in resource whose versions all serve `/status` when `status` is set.
    pub(crate) fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short_names: &[&str],
        status: bool,
    ) -> ResourceDef {
        ResourceDef {
            group: group.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: short_names.iter().map(|s| (*s).to_string()).collect(),
            categories: Vec::new(),
            versions: vec![VersionDef {
                name: version.into(),
                status,
                schema: None,
                printer_columns: Vec::new(),
                selectable_fields: Vec::new(),
            }],
            tracks_generation: false,
            custom: false,
            verbs: ALL_VERBS,
            subresources: Vec::new(),
            storage: None,
            deprecation: None,
        }
    }

    fn with_generation(mut self) -> Self {
        self.tracks_generation = true;
        self
    }

    /// Only these verbs (reviews are create-only, componentstatuses read-only).
    fn with_verbs(mut self, verbs: &'static [&'static str]) -> Self {
        self.verbs = verbs;
        self
    }

    fn with_subresource(
        mut self,
        name: &'static str,
        kind: Option<(&'static str, &'static str, &'static str)>,
        verbs: &'static [&'static str],
    ) -> Self {
        self.subresources.push(SubresourceDef { name, kind, verbs });
        self
    }

    fn deprecated(mut self, warning: &'static str) -> Self {
        self.deprecation = Some(warning);
        self
    }

    fn stored_as(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    fn in_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|c| (*c).to_string()).collect();
        self
    }

    fn in_category_all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    fn with_fields(mut self, fields: &[&str]) -> Self {
        for v in &mut self.versions {
            v.selectable_fields = fields.iter().map(|f| (*f).to_string()).collect();
        }
        self
    }

    /// The resource a CRD defines, or why it defines none.
    pub fn from_crd(crd: &Value) -> Result<ResourceDef, String> {
        let spec = crd.get("spec").ok_or("spec is required")?;
        let group = spec
            .get("group")
            .and_then(Value::as_str)
            .ok_or("spec.group is required")?;
        let names = spec.get("names").ok_or("spec.names is required")?;
        let plural = names
            .get("plural")
            .and_then(Value::as_str)
            .ok_or("spec.names.plural is required")?;
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("spec.names.kind is required")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map_or_else(|| kind.to_lowercase(), str::to_string);
        let list_kind = names
            .get("listKind")
            .and_then(Value::as_str)
            .map_or_else(|| format!("{kind}List"), str::to_string);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            _ => return Err("spec.scope must be Namespaced or Cluster".into()),
        };
        let mut versions = Vec::new();
        for v in spec
            .get("versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                continue;
            };
            if v.get("served").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let def = VersionDef {
                name: name.to_string(),
                status: v.pointer("/subresources/status").is_some(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                selectable_fields: v
                    .get("selectableFields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect(),
            };
            versions.push(def);
        }
        if versions.is_empty() {
            return Err("spec.versions must contain a served version".into());
        }
        sort_versions(&mut versions);
        Ok(ResourceDef {
            group: group.to_string(),
            plural: plural.to_string(),
            singular,
            kind: kind.to_string(),
            list_kind,
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            versions,
            tracks_generation: true,
            custom: true,
            verbs: ALL_VERBS,
            subresources: Vec::new(),
            storage: None,
            deprecation: None,
        })
    }
}

/// Orders versions by Kubernetes version priority (GA > beta > alpha, higher
/// numbers first), which is what discovery's preferred version follows.
fn sort_versions(versions: &mut [VersionDef]) {
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.name)));
}

/// (stability, major, minor) for `v2`, `v1beta3`, `v1alpha1`; unknown forms sort last.
fn version_priority(v: &str) -> (u8, u64, u64) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (stability, n) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    (stability, major, n.parse().unwrap_or(0))
}

/// The built-in resources.
pub(crate) fn builtins() -> Vec<Arc<ResourceDef>> {
    let r = ResourceDef::builtin;
    let list = vec![
        r("", "v1", "namespaces", "Namespace", false, &["ns"], true).with_fields(&["status.phase"]),
        r("", "v1", "pods", "Pod", true, &["po"], true)
            .with_generation()
            .in_category_all()
            .with_fields(&[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "spec.host",
                "status.phase",
                "status.podIP",
                "status.podIPs",
                "status.nominatedNodeName",
            ]),
        r("", "v1", "services", "Service", true, &["svc"], true)
            .in_category_all()
            .with_fields(&["spec.clusterIP", "spec.type"]),
        r("", "v1", "nodes", "Node", false, &["no"], true).with_fields(&["spec.unschedulable"]),
        r(
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            false,
            &["pv"],
            true,
        ),
        r("", "v1", "events", "Event", true, &["ev"], false).with_fields(&[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]),
        r("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
        r("", "v1", "secrets", "Secret", true, &[], false).with_fields(&["type"]),
        r(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            &["pvc"],
            true,
        ),
        r(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        r(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
        )
        .with_generation()
        .in_category_all(),
        r(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            true,
            &["rs"],
            true,
        )
        .with_generation()
        .in_category_all(),
        r(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            true,
            &["sts"],
            true,
        )
        .with_generation()
        .in_category_all(),
        r("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true)
            .with_generation()
            .in_category_all(),
        r("batch", "v1", "jobs", "Job", true, &[], true)
            .with_generation()
            .in_category_all()
            .with_fields(&["status.successful"]),
        r(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
        ),
        r(
            CRD_GROUP,
            "v1",
            CRD_PLURAL,
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        )
        .with_generation(),
    ];
    list.into_iter()
        .chain(cluster_apis())
        .map(with_own_subresources)
        .map(Arc::new)
        .collect()
}

/// The subresources of core resources that their own code serves.
fn with_own_subresources(def: ResourceDef) -> ResourceDef {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => def.with_subresource("ephemeralcontainers", None, OBJECT_VIEW_VERBS),
        ("", "serviceaccounts") => def.with_subresource(
            "token",
            Some(("authentication.k8s.io", "v1", "TokenRequest")),
            &["create"],
        ),
        _ => def,
    }
}

/// The APIs a cluster serves beside workloads: RBAC, events.k8s.io, the
/// authentication and authorization reviews, certificates, API registration,
/// and the types kubectl's generators create. Shapes, verbs, short names
/// and subresources as kube-apiserver 1.34's discovery lists them.
fn cluster_apis() -> Vec<ResourceDef> {
    let r = ResourceDef::builtin;
    const CREATE: &[&str] = &["create"];
    const READ: &[&str] = &["get", "list"];
    const RBAC: &str = "rbac.authorization.k8s.io";
    const AUTHN: &str = "authentication.k8s.io";
    const AUTHZ: &str = "authorization.k8s.io";
    vec![
        r(
            "",
            "v1",
            "resourcequotas",
            "ResourceQuota",
            true,
            &["quota"],
            true,
        ),
        r(
            "",
            "v1",
            "componentstatuses",
            "ComponentStatus",
            false,
            &["cs"],
            false,
        )
        .with_verbs(READ)
        .deprecated("v1 ComponentStatus is deprecated in v1.19+"),
        r(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
        )
        .stored_as(Storage::CoreEvents)
        .with_fields(&[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "source",
            "type",
        ]),
        r(RBAC, "v1", "roles", "Role", true, &[], false),
        r(RBAC, "v1", "rolebindings", "RoleBinding", true, &[], false),
        r(RBAC, "v1", "clusterroles", "ClusterRole", false, &[], false),
        r(
            RBAC,
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
        ),
        r(
            AUTHN,
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            AUTHN,
            "v1",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            AUTHZ,
            "v1",
            "localsubjectaccessreviews",
            "LocalSubjectAccessReview",
            true,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            AUTHZ,
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            AUTHZ,
            "v1",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            AUTHZ,
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
            &[],
            false,
        )
        .with_verbs(CREATE),
        r(
            "certificates.k8s.io",
            "v1",
            "certificatesigningrequests",
            "CertificateSigningRequest",
            false,
            &["csr"],
            true,
        )
        .with_subresource("approval", None, OBJECT_VIEW_VERBS)
        .with_fields(&["spec.signerName"]),
        r(
            "apiregistration.k8s.io",
            "v1",
            "apiservices",
            "APIService",
            false,
            &[],
            true,
        )
        .in_categories(&["api-extensions"]),
        r("batch", "v1", "cronjobs", "CronJob", true, &["cj"], true)
            .with_generation()
            .in_category_all(),
        r(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
        )
        .with_generation(),
        r(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "Ingress",
            true,
            &["ing"],
            true,
        ),
        r(
            "networking.k8s.io",
            "v1",
            "ingressclasses",
            "IngressClass",
            false,
            &[],
            false,
        ),
        r(
            "scheduling.k8s.io",
            "v1",
            "priorityclasses",
            "PriorityClass",
            false,
            &["pc"],
            false,
        ),
    ]
}

/// The status the CRD controllers would write: names accepted, established.
pub(crate) fn accepted_crd_status(crd: &Value, def: &ResourceDef, now: &str) -> Value {
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": "True",
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        })
    };
    let mut accepted = json!({
        "plural": def.plural,
        "singular": def.singular,
        "kind": def.kind,
        "listKind": def.list_kind,
    });
    if !def.short_names.is_empty() {
        accepted["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        accepted["categories"] = json!(def.categories);
    }
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": accepted,
        "storedVersions": stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "selectableFields": [{"jsonPath": ".spec.color"}]},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_defines_served_versions_with_status_only_where_declared() {
        let def = ResourceDef::from_crd(&crd()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(def.versions[0].name, "v1");
        assert_eq!(def.versions.len(), 2);
        assert!(def.has_status("v1"));
        assert!(!def.has_status("v1alpha1"));
        assert_eq!(def.singular, "widget");
        assert_eq!(def.list_kind, "WidgetList");
        assert_eq!(
            def.version("v1").map(|v| v.selectable_fields.clone()),
            Some(vec!["spec.color".to_string()])
        );
    }

    #[test]
    fn crd_without_scope_is_rejected() {
        let mut c = crd();
        c["spec"]["scope"] = json!("Galaxy");
        assert!(ResourceDef::from_crd(&c).is_err());
    }

    #[test]
    fn version_priority_orders_like_kube() {
        let mut v: Vec<VersionDef> = ["v1alpha1", "v2beta1", "v1", "v2", "v1beta2", "foo"]
            .iter()
            .map(|n| VersionDef {
                name: (*n).to_string(),
                status: false,
                schema: None,
                printer_columns: vec![],
                selectable_fields: vec![],
            })
            .collect();
        sort_versions(&mut v);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }

    #[test]
    fn builtins_have_status_where_kube_does() {
        let all = builtins();
        let find = |p: &str| {
            all.iter()
                .find(|d| d.plural == p)
                .map(|d| d.has_status("v1"))
        };
        assert_eq!(find("deployments"), Some(true));
        assert_eq!(find("configmaps"), Some(false));
        assert_eq!(find("customresourcedefinitions"), Some(true));
    }
}
