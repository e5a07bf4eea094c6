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
}

/// The key of a resource's storage: group and plural (independent of version).
pub(crate) type ResourceKey = (String, String);

pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

impl ResourceDef {
    pub fn key(&self) -> ResourceKey {
        (self.group.clone(), self.plural.clone())
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
    fn builtin(
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
        }
    }

    fn with_generation(mut self) -> Self {
        self.tracks_generation = true;
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
    list.into_iter().map(Arc::new).collect()
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
