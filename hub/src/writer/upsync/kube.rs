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
            let body = serde_json::to_vec(object).map_err(|e| bad(key, e))?;
            let params = PostParams {
                dry_run,
                ..PostParams::default()
            };
            let request = Self::request(key)?
                .create(&params, body)
                .map_err(|e| bad(key, e))?;
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
            let body = serde_json::to_vec(object).map_err(|e| bad(key, e))?;
            let params = PostParams {
                dry_run,
                ..PostParams::default()
            };
            let request = Self::request(key)?
                .replace(&key.name, &params, body)
                .map_err(|e| bad(key, e))?;
            decode(&self.send(key, request).await?)
        })
    }

    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let params = DeleteParams {
                dry_run,
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let request = Self::request(key)?
                .delete(&key.name, &params)
                .map_err(|e| bad(key, e))?;
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
