//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>`, the
//! per-version APIResourceLists, and aggregated discovery
//! (`apidiscovery.k8s.io/v2` APIGroupDiscoveryList) when the client asks for it.

use std::sync::Arc;

use serde_json::{Value, json};

use super::resources::{OBJECT_VIEW_VERBS, ResourceDef, SubresourceDef};

const STATUS_VERBS: &[&str] = OBJECT_VIEW_VERBS;

/// The group/version/kind a subresource takes, as discovery names it.
fn subresource_kind(def: &ResourceDef, version: &str, sub: &SubresourceDef) -> Value {
    match sub.kind {
        Some((group, version, kind)) => json!({ "group": group, "version": version, "kind": kind }),
        None => json!({ "group": def.group, "version": version, "kind": def.kind }),
    }
}

/// The aggregated-discovery version an `Accept` header asks for, if any.
pub(crate) fn aggregated_version(accept: &str) -> Option<&'static str> {
    // Clients list their preferences in order; take the first we support.
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

/// The content type of an aggregated discovery response.
pub(crate) fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-uplink",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`
pub(crate) fn legacy_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// Named groups in the order they first appear, with their versions.
fn groups(resources: &[Arc<ResourceDef>]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for def in resources.iter().filter(|d| !d.group.is_empty()) {
        let idx = match out.iter().position(|(g, _)| *g == def.group) {
            Some(i) => i,
            None => {
                out.push((def.group.clone(), Vec::new()));
                out.len() - 1
            }
        };
        for v in &def.versions {
            if !out[idx].1.contains(&v.name) {
                out[idx].1.push(v.name.clone());
            }
        }
    }
    out
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v }))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`
pub(crate) fn group_list(resources: &[Arc<ResourceDef>]) -> Value {
    let groups: Vec<Value> = groups(resources)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/apis/<group>`, if the group exists.
pub(crate) fn group(resources: &[Arc<ResourceDef>], group: &str) -> Option<Value> {
    groups(resources)
        .into_iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut v = group_json(&g, &vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
}

/// `/api/v1` or `/apis/<group>/<version>`, if anything is served there.
pub(crate) fn resource_list(
    resources: &[Arc<ResourceDef>],
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut list = Vec::new();
    for def in resources.iter().filter(|d| d.group == group) {
        let Some(v) = def.version(version) else {
            continue;
        };
        let mut entry = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs,
        });
        if !def.short_names.is_empty() {
            entry["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            entry["categories"] = json!(def.categories);
        }
        list.push(entry);
        if v.status {
            list.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": STATUS_VERBS,
            }));
        }
        if super::scale::has_scale(def) {
            list.push(json!({
                "name": format!("{}/scale", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": STATUS_VERBS,
            }));
        }
        for sub in &def.subresources {
            let kind = subresource_kind(def, version, sub);
            let mut entry = json!({
                "name": format!("{}/{}", def.plural, sub.name),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": kind["kind"],
                "verbs": sub.verbs,
            });
            if sub.kind.is_some() {
                entry["group"] = kind["group"].clone();
                entry["version"] = kind["version"].clone();
            }
            list.push(entry);
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

/// Aggregated discovery for `/api` (`legacy`) or `/apis`.
pub(crate) fn aggregated(resources: &[Arc<ResourceDef>], legacy: bool, api_version: &str) -> Value {
    let group_names: Vec<(String, Vec<String>)> = if legacy {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        groups(resources)
    };
    let items: Vec<Value> = group_names
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = resources
                        .iter()
                        .filter(|d| d.group == *group)
                        .filter_map(|d| d.version(version).map(|v| (d, v)))
                        .map(|(d, v)| {
                            let kind =
                                json!({ "group": d.group, "version": version, "kind": d.kind });
                            let mut r = json!({
                                "resource": d.plural,
                                "responseKind": kind,
                                "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": d.singular,
                                "verbs": d.verbs,
                            });
                            if !d.short_names.is_empty() {
                                r["shortNames"] = json!(d.short_names);
                            }
                            if !d.categories.is_empty() {
                                r["categories"] = json!(d.categories);
                            }
                            let mut subresources = Vec::new();
                            if v.status {
                                subresources.push(json!({
                                    "subresource": "status",
                                    "responseKind": kind,
                                    "verbs": STATUS_VERBS,
                                }));
                            }
                            if super::scale::has_scale(d) {
                                subresources.push(json!({
                                    "subresource": "scale",
                                    "responseKind": { "group": "autoscaling", "version": "v1", "kind": "Scale" },
                                    "verbs": STATUS_VERBS,
                                }));
                            }
                            for sub in &d.subresources {
                                subresources.push(json!({
                                    "subresource": sub.name,
                                    "responseKind": subresource_kind(d, version, sub),
                                    "verbs": sub.verbs,
                                }));
                            }
                            if !subresources.is_empty() {
                                r["subresources"] = json!(subresources);
                            }
                            r
                        })
                        .collect();
                    json!({ "version": version, "resources": resources, "freshness": "Current" })
                })
                .collect();
            let metadata = if group.is_empty() {
                json!({ "creationTimestamp": null })
            } else {
                json!({ "name": group, "creationTimestamp": null })
            };
            json!({ "metadata": metadata, "versions": versions })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{api_version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn accept_header_selects_aggregated_discovery() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(kubectl), Some("v2"));
        assert_eq!(aggregated_version("application/json"), None);
    }

    #[test]
    fn resource_list_has_status_entries_and_short_names() {
        let list = resource_list(&builtins(), "apps", "v1").unwrap_or_default();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"deployments"));
        assert!(names.contains(&"deployments/status"));
        let deploy = list["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "deployments"))
            .cloned();
        assert_eq!(
            deploy.map(|d| d["shortNames"].clone()),
            Some(json!(["deploy"]))
        );
        assert!(resource_list(&builtins(), "apps", "v2").is_none());
    }

    #[test]
    fn aggregated_lists_core_and_groups() {
        let core = aggregated(&builtins(), true, "v2");
        assert_eq!(core["items"][0]["versions"][0]["version"], "v1");
        let apis = aggregated(&builtins(), false, "v2");
        let names: Vec<&str> = apis["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"apiextensions.k8s.io"));
    }
}
