//! After a downward snapshot: objects the agent owns (they carry this
//! cluster's placement label) that the snapshot did not name were unplaced
//! while the agent was away, so they are deleted. Objects without the label
//! (made by someone else, or placed on another cluster) are left alone.
//!
//! A snapshot of some shards only (protocol version 4, from one replica of a
//! replicated hub) names only the objects of those shards' workspaces: the
//! sweep then deletes only owned objects whose namespace's locator
//! (`kcp.io/namespace-locator`) names a workspace in those shards. An
//! object whose namespace names no workspace is not the sweep's to judge,
//! and stays.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, core::PartialObjectMeta};

use super::{Applier, ApplyResult, Outcome, Transient, classify};
use crate::mapping::{Locator, NAMESPACE_LOCATOR};
use crate::routes::ShardSet;
use crate::transform::{DownstreamKey, Target};

/// Objects listed per request.
const PAGE: u32 = 500;

/// What a sweep found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects carrying the placement label.
    pub owned: usize,
    /// Of those, deleted because the snapshot did not name them.
    pub deleted: usize,
}

impl Applier {
    /// Deletes every object of the downward types that carries `target`'s
    /// placement label, is in `shards` (its namespace's upstream workspace
    /// is) and is not in `named`. A transient failure stops the sweep (it
    /// is idempotent: the caller runs it again); a refusal (RBAC) is logged
    /// and counted, and the sweep goes on.
    pub async fn sweep(
        &self,
        target: &Target,
        named: &HashSet<DownstreamKey>,
        shards: &ShardSet,
    ) -> Result<SweepReport, Transient> {
        let label = target.placement_label();
        let mut report = SweepReport::default();
        let in_shards = match shards {
            ShardSet::Everything => None,
            ShardSet::Shards { .. } => Some(self.namespaces_in(shards).await?),
        };
        // One type served in several versions is one set of objects.
        let mut seen = HashSet::new();
        for spec in self.types() {
            if !seen.insert((spec.group.clone(), spec.resource.clone())) {
                continue;
            }
            let resolved = match self.resolve(spec).await? {
                Ok(resolved) if resolved.namespaced => resolved,
                // Not served or cluster-scoped: nothing of it was applied.
                Ok(_) | Err(_) => continue,
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resolved.api);
            let mut params = ListParams::default().labels(&label).limit(PAGE);
            loop {
                let page = match api.list_metadata(&params).await.map_err(classify) {
                    Ok(page) => page,
                    Err(Outcome::Transient(e)) => return Err(e),
                    Err(Outcome::NotFound(_)) => break,
                    Err(Outcome::Failed(result)) => {
                        self.refused(spec, "listing", &result);
                        break;
                    }
                };
                for item in &page.items {
                    report.owned += 1;
                    let Some(key) = key_of(spec, item) else {
                        continue;
                    };
                    if named.contains(&key) {
                        continue;
                    }
                    if in_shards
                        .as_ref()
                        .is_some_and(|within| !within.contains(&key.namespace))
                    {
                        continue;
                    }
                    match self
                        .delete_object(&resolved.api, &key.namespace, &key.name)
                        .await
                    {
                        Ok(()) | Err(Outcome::NotFound(_)) => {
                            self.remember(&key, None);
                            report.deleted += 1;
                            self.metrics().applies.with_label_values(&["deleted"]).inc();
                            tracing::info!(resource = %spec, namespace = %key.namespace, name = %key.name, "swept: no longer placed on this cluster");
                        }
                        Err(Outcome::Transient(e)) => return Err(e),
                        Err(Outcome::Failed(result)) => self.refused(spec, "deleting", &result),
                    }
                }
                match page.metadata.continue_.as_deref() {
                    Some(token) if !token.is_empty() => {
                        params = params.continue_token(token);
                    }
                    _ => break,
                }
            }
        }
        Ok(report)
    }

    /// The downstream namespaces whose locator names a workspace in
    /// `shards`.
    async fn namespaces_in(&self, shards: &ShardSet) -> Result<HashSet<String>, Transient> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut params = ListParams::default().limit(PAGE);
        let mut workspaces: HashMap<String, String> = HashMap::new();
        loop {
            let page = match api.list_metadata(&params).await.map_err(classify) {
                Ok(page) => page,
                Err(Outcome::Transient(e)) => return Err(e),
                // Unreadable namespaces: none is known to be in the shards,
                // so nothing is swept (left alone rather than deleted).
                Err(Outcome::NotFound(_) | Outcome::Failed(_)) => break,
            };
            for item in &page.items {
                let (Some(name), Some(annotation)) = (
                    item.metadata.name.as_ref(),
                    item.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(NAMESPACE_LOCATOR)),
                ) else {
                    continue;
                };
                if let Ok(locator) = Locator::parse(annotation) {
                    workspaces.insert(name.clone(), locator.workspace);
                }
            }
            match page.metadata.continue_.as_deref() {
                Some(token) if !token.is_empty() => params = params.continue_token(token),
                _ => break,
            }
        }
        Ok(workspaces
            .into_iter()
            .filter(|(_, workspace)| shards.contains(workspace))
            .map(|(name, _)| name)
            .collect())
    }

    fn refused(&self, spec: &crate::config::ResourceSpec, doing: &str, result: &ApplyResult) {
        self.metrics()
            .applies
            .with_label_values(&[result.label()])
            .inc();
        tracing::warn!(resource = %spec, doing, ?result, "sweep refused by the cluster");
    }
}

/// The key of a listed object of type `spec`.
fn key_of(
    spec: &crate::config::ResourceSpec,
    item: &PartialObjectMeta<DynamicObject>,
) -> Option<DownstreamKey> {
    Some(DownstreamKey {
        group: spec.group.clone(),
        resource: spec.resource.clone(),
        namespace: item.metadata.namespace.clone()?,
        name: item.metadata.name.clone()?,
    })
}
