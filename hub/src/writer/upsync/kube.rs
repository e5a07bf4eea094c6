//! [`UpsyncUpstream`] through the kube client: the object's own path in its
//! workspace (get, create, replace, delete with a uid precondition), and a
//! paginated list of a type across all workspaces (kcp's `/clusters/*`,
//! as the placement watch lists).

use futures::future::BoxFuture;
use kube::api::{DeleteParams, GetParams, ListParams, PostParams, Preconditions};
use serde_json::Value;
use uplink_protocol::resource::ResourceSpec;

use super::{Listed, UpsyncUpstream};
use crate::config::UpstreamMode;
use crate::placement::key::CLUSTER_ANNOTATION;
use crate::placement::source::collection_path;
use crate::store::ObjectKey;
use crate::writer::{KubeUpstream, UpstreamError};

/// Objects per page of a list.
const PAGE: u32 = 500;

fn bad(key: &ObjectKey, error: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::BadObject {
        key: key.to_string(),
        reason: error.to_string(),
    }
}

/// The `POST` that creates `object` where `key` names it.
fn create_request(
    key: &ObjectKey,
    object: &Value,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>, UpstreamError> {
    let body = serde_json::to_vec(object).map_err(|e| bad(key, e))?;
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    KubeUpstream::request(key)?
        .create(&params, body)
        .map_err(|e| bad(key, e))
}

/// The `PUT` that replaces the object with `object`.
fn replace_request(
    key: &ObjectKey,
    object: &Value,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>, UpstreamError> {
    let body = serde_json::to_vec(object).map_err(|e| bad(key, e))?;
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    KubeUpstream::request(key)?
        .replace(&key.name, &params, body)
        .map_err(|e| bad(key, e))
}

/// The `DELETE` of the object whose uid is `uid`, unchanged since
/// `resource_version` (empty: any version).
fn delete_request(
    key: &ObjectKey,
    uid: &str,
    resource_version: &str,
    dry_run: bool,
) -> Result<http::Request<Vec<u8>>, UpstreamError> {
    let params = DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: (!resource_version.is_empty()).then(|| resource_version.to_owned()),
        }),
        ..DeleteParams::default()
    };
    KubeUpstream::request(key)?
        .delete(&key.name, &params)
        .map_err(|e| bad(key, e))
}

fn decode(body: &[u8]) -> Result<Value, UpstreamError> {
    serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("decoding the object: {e}")))
}

impl UpsyncUpstream for KubeUpstream {
    fn get_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            let request = Self::request(key)?
                .get(&key.name, &GetParams::default())
                .map_err(|e| bad(key, e))?;
            decode(&self.send(key, request).await?)
        })
    }

    fn create_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            let request = create_request(key, object, dry_run)?;
            decode(&self.send(key, request).await?)
        })
    }

    fn update_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(async move {
            let request = replace_request(key, object, dry_run)?;
            decode(&self.send(key, request).await?)
        })
    }

    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        resource_version: &'a str,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let request = delete_request(key, uid, resource_version, dry_run)?;
            self.send(key, request).await.map(drop)
        })
    }

    fn list_upsynced<'a>(
        &'a self,
        resource: &'a ResourceSpec,
    ) -> BoxFuture<'a, Result<Vec<Listed>, UpstreamError>> {
        Box::pin(async move {
            let wildcard = match self.mode() {
                UpstreamMode::Kcp => "*",
                UpstreamMode::Kubernetes => "",
            };
            let failed = |e: kube::Error| UpstreamError::BadObject {
                key: resource.to_string(),
                reason: e.to_string(),
            };
            let client = self.workspace_client(wildcard).map_err(failed)?;
            let path = collection_path(resource);
            let mut listed = Vec::new();
            let mut continue_token = None;
            loop {
                let params = ListParams {
                    limit: Some(PAGE),
                    continue_token: continue_token.take(),
                    ..ListParams::default()
                };
                let request = kube::core::Request::new(&path)
                    .list(&params)
                    .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
                let page = decode(&Self::send_with(client.clone(), request).await?)?;
                let kind = page
                    .get("kind")
                    .and_then(Value::as_str)
                    .and_then(|k| k.strip_suffix("List"))
                    .unwrap_or_default()
                    .to_owned();
                for mut object in page
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    let workspace = match self.mode() {
                        UpstreamMode::Kcp => object
                            .pointer(&format!(
                                "/metadata/annotations/{}",
                                CLUSTER_ANNOTATION.replace('/', "~1")
                            ))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        UpstreamMode::Kubernetes => String::new(),
                    };
                    if let Some(fields) = object.as_object_mut() {
                        fields
                            .entry("kind")
                            .or_insert_with(|| Value::String(kind.clone()));
                    }
                    listed.push(Listed { workspace, object });
                }
                match page.pointer("/metadata/continue").and_then(Value::as_str) {
                    Some(token) if !token.is_empty() => continue_token = Some(token.to_owned()),
                    _ => return Ok(listed),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::KeyParts;

    fn key(namespace: Option<&str>) -> ObjectKey {
        ObjectKey::new(KeyParts {
            workspace: "root".into(),
            group: String::new(),
            version: "v1".into(),
            resource: if namespace.is_some() {
                "persistentvolumeclaims".into()
            } else {
                "persistentvolumes".into()
            },
            kind: "PersistentVolume".into(),
            namespace: namespace.map(str::to_owned),
            name: "data".into(),
        })
    }

    #[test]
    fn writes_go_to_the_objects_own_path() {
        let object = json!({"metadata": {"name": "data"}});
        let create = create_request(&key(None), &object, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(create.method(), http::Method::POST);
        assert_eq!(create.uri().to_string(), "/api/v1/persistentvolumes?");
        assert_eq!(
            serde_json::from_slice::<Value>(create.body()).ok(),
            Some(object.clone())
        );

        let replace =
            replace_request(&key(Some("shop")), &object, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replace.method(), http::Method::PUT);
        assert_eq!(
            replace.uri().to_string(),
            "/api/v1/namespaces/shop/persistentvolumeclaims/data?&dryRun=All"
        );
    }

    #[test]
    fn a_delete_holds_to_the_uid_and_the_version_read() {
        let delete =
            delete_request(&key(None), "up-1", "7", false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(delete.method(), http::Method::DELETE);
        assert_eq!(delete.uri().to_string(), "/api/v1/persistentvolumes/data?");
        let body: Value = serde_json::from_slice(delete.body()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["preconditions"]["uid"], "up-1");
        assert_eq!(body["preconditions"]["resourceVersion"], "7");
        let bad_name = ObjectKey::new(KeyParts {
            name: "a/b".into(),
            ..key(None).parts().clone()
        });
        assert!(delete_request(&bad_name, "up-1", "7", false).is_err());
    }
}
