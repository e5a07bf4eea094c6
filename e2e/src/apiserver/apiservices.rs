//! apiregistration.k8s.io/v1 APIServices: kube-apiserver's aggregator keeps
//! one "local" APIService per served group-version (`v1.` for the core
//! group, `v1.apps`, ... and one for each CRD group-version), each always
//! Available. Here they are stored objects, brought in step with what the
//! workspace serves before every APIService request and after every CRD
//! write; APIServices a client creates are left alone (nothing proxies to
//! them).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Shared;
use super::object::{self, meta_str};
use super::store::{Decision, Filter, NameChoice, Scope};

pub(crate) const GROUP: &str = "apiregistration.k8s.io";
pub(crate) const PLURAL: &str = "apiservices";

/// The label the aggregator puts on APIServices it manages: `onstart` for
/// the server's own groups, `true` for CRD groups.
const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

/// kube-apiserver's discovery priorities of its own groups (group minimum,
/// version priority); CRD groups get 1000 and 100.
fn priority(group: &str) -> (i64, i64) {
    let group_priority = match group {
        "" => return (18000, 1),
        "apiregistration.k8s.io" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "apiextensions.k8s.io" | "admissionregistration.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        _ => return (1000, 100),
    };
    (group_priority, 15)
}

/// The local APIService of one served group-version.
fn local_service(group: &str, version: &str, custom: bool) -> Value {
    let (group_priority, version_priority) = priority(group);
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "APIService",
        "metadata": {
            "name": format!("{version}.{group}"),
            "labels": { AUTOMANAGED: if custom { "true" } else { "onstart" } },
        },
        "spec": {
            "group": group,
            "version": version,
            "groupPriorityMinimum": group_priority,
            "versionPriority": version_priority,
        },
        "status": {
            "conditions": [{
                "type": "Available",
                "status": "True",
                "lastTransitionTime": object::now_rfc3339(),
                "reason": "Local",
                "message": "Local APIServices are always available",
            }],
        },
    })
}

/// Creates the APIServices of newly served group-versions and removes
/// managed ones whose group-version is gone.
pub(crate) fn sync(shared: &Shared, ws: &str) {
    let key = (GROUP.to_string(), PLURAL.to_string());
    let mut desired: BTreeMap<String, Value> = BTreeMap::new();
    for def in shared.store.resources(ws) {
        for version in &def.versions {
            let service = local_service(&def.group, &version.name, def.custom);
            let name = format!("{}.{}", version.name, def.group);
            desired.entry(name).or_insert(service);
        }
    }
    let stored = shared
        .store
        .list(
            &Scope::Workspace(ws.to_string()),
            &key,
            &Filter::default(),
            None,
            None,
            None,
        )
        .map(|page| page.items)
        .unwrap_or_default();
    for existing in &stored {
        let name = meta_str(existing, "name").unwrap_or_default().to_string();
        let managed = existing
            .pointer(&format!(
                "/metadata/labels/{}",
                AUTOMANAGED.replace('/', "~1")
            ))
            .is_some();
        if managed && !desired.contains_key(&name) {
            write(shared, ws, &key, name, None);
        }
    }
    for (name, service) in desired {
        if stored
            .iter()
            .all(|s| meta_str(s, "name") != Some(name.as_str()))
        {
            write(shared, ws, &key, name, Some(service));
        }
    }
}

/// Stores a new APIService (`Some`) or removes one (`None`).
fn write(shared: &Shared, ws: &str, key: &(String, String), name: String, service: Option<Value>) {
    let written = shared.store.write(
        ws,
        key,
        "",
        NameChoice::Exact(name),
        false,
        |_, _, current| {
            Ok(match (service, current) {
                (Some(_), Some(_)) | (None, None) => Decision::Keep,
                (None, Some(current)) => Decision::Remove((**current).clone()),
                (Some(mut service), None) => {
                    object::set_meta(
                        &mut service,
                        "uid",
                        Some(json!(uuid::Uuid::new_v4().to_string())),
                    );
                    object::set_meta(
                        &mut service,
                        "creationTimestamp",
                        Some(json!(object::now_rfc3339())),
                    );
                    Decision::Put(service)
                }
            })
        },
    );
    if let Err(error) = written {
        tracing::warn!(?error, "syncing an APIService failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_custom_groups_are_named_and_ranked_like_kube() {
        let core = local_service("", "v1", false);
        assert_eq!(core["metadata"]["name"], "v1.");
        assert_eq!(core["spec"]["groupPriorityMinimum"], 18000);
        let custom = local_service("example.com", "v1alpha1", true);
        assert_eq!(custom["metadata"]["name"], "v1alpha1.example.com");
        assert_eq!(custom["metadata"]["labels"][AUTOMANAGED], "true");
        assert_eq!(custom["spec"]["groupPriorityMinimum"], 1000);
        assert_eq!(custom["status"]["conditions"][0]["reason"], "Local");
    }
}
