//! The hub's finalizers on placed objects in KCP: while a cluster's agent
//! applies an object, the upstream object carries
//! `workload.kcp.io/syncer-<syncTargetKey>` (kcp's syncer's name for it), so
//! deleting it in KCP waits until the cluster confirmed the downstream
//! delete. Then, or when the object is unplaced from the cluster (nothing
//! to hold: the upstream object stays), the hub takes its finalizer off.
//! When kcp took the object off the cluster with its deletion annotation
//! ([`crate::placement::key::DELETION_ANNOTATION_PREFIX`]), the same write
//! removes the placement label and that annotation, as kcp's syncer does:
//! the object then leaves the cluster's placement.
//!
//! Level-triggered like the status writer: [`Finalizers::want`] records
//! whether a finalizer should be on an object, with the object's latest
//! state from the placement watch; a task writes what differs, one merge
//! patch of `metadata.finalizers` with the resource version it was computed
//! from (optimistic concurrency, so nobody else's finalizer is lost). A 409
//! means the object changed meanwhile: the hub reads it again and retries;
//! a 404, that it is gone (nothing to do); other failures back off. A
//! finalizer already as wanted costs no write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{KubeUpstream, UpstreamError};
use crate::metrics::{Metrics, write_result};
use crate::placement::key::{DELETION_ANNOTATION_PREFIX, STATE_LABEL_PREFIX};
use crate::store::ObjectKey;

/// First retry delay after a failed write; doubles per failure.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a finalizer whose shard another replica holds waits before it is
/// tried again (the holder writes it meanwhile; the write is idempotent).
const NOT_HELD_RETRY: Duration = Duration::from_secs(10);

/// What precedes the SyncTarget key in the hub's finalizer name.
const FINALIZER_PREFIX: &str = "workload.kcp.io/syncer-";

/// The finalizer name of the cluster whose SyncTarget key is `key`.
pub fn finalizer_name(key: &str) -> String {
    format!("{FINALIZER_PREFIX}{key}")
}

/// Reads and writes objects' finalizers upstream.
pub trait FinalizerUpstream: Send + Sync + std::fmt::Debug + 'static {
    /// The object's resource version and finalizers.
    fn finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), UpstreamError>>;

    /// Sets the object's finalizers, if its resource version is still
    /// `resource_version` (else [`UpstreamError::Conflict`]). With
    /// `leaving`, a SyncTarget key, also removes that SyncTarget's placement
    /// label and deletion annotation.
    fn set_finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
        resource_version: &'a str,
        finalizers: &'a [String],
        leaving: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

impl FinalizerUpstream for KubeUpstream {
    fn finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), UpstreamError>> {
        Box::pin(async move {
            let object = self.get_object(key).await?;
            let metadata = &object["metadata"];
            let version = metadata["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let finalizers = metadata["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            Ok((version, finalizers))
        })
    }

    fn set_finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
        resource_version: &'a str,
        finalizers: &'a [String],
        leaving: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let mut patch = json!({"metadata": {
                "resourceVersion": resource_version,
                "finalizers": finalizers,
            }});
            if let Some(synctarget) = leaving {
                // JSON merge patch: null removes the key.
                patch["metadata"]["labels"] =
                    json!({ format!("{STATE_LABEL_PREFIX}{synctarget}"): null });
                patch["metadata"]["annotations"] =
                    json!({ format!("{DELETION_ANNOTATION_PREFIX}{synctarget}"): null });
            }
            self.patch_object(key, &patch).await
        })
    }
}

/// What one finalizer on one object should be.
#[derive(Debug)]
struct Want {
    present: bool,
    /// Letting go of an object kcp takes off the cluster: the placement
    /// label and deletion annotation go with the finalizer, even when the
    /// finalizer is already off.
    leaving: bool,
    /// The object's state the write is computed from.
    resource_version: String,
    finalizers: Vec<String>,
    /// Known stale (a conflict): read it again before writing.
    stale: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The finalizers to write; see the module documentation.
#[derive(Debug)]
pub struct Finalizers {
    pending: Mutex<HashMap<(ObjectKey, String), Want>>,
    wake: Notify,
    upstream: Arc<dyn FinalizerUpstream>,
    metrics: Arc<Metrics>,
}

impl Finalizers {
    pub fn new(upstream: Arc<dyn FinalizerUpstream>, metrics: Arc<Metrics>) -> Self {
        Self {
            pending: Mutex::default(),
            wake: Notify::new(),
            upstream,
            metrics,
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<(ObjectKey, String), Want>> {
        // Never held across an await or a call that can panic midway.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finalizer `finalizer` should (`present`) or should not be on `key`,
    /// whose latest known state is `resource_version` and `finalizers`;
    /// `leaving` (with `present` false): kcp takes the object off the
    /// cluster, see the module documentation.
    pub fn want(
        &self,
        key: &ObjectKey,
        finalizer: &str,
        present: bool,
        leaving: bool,
        resource_version: &str,
        finalizers: &[String],
    ) {
        let leaving = leaving && !present;
        let already = !leaving && finalizers.iter().any(|f| f == finalizer) == present;
        let mut pending = self.pending();
        let id = (key.clone(), finalizer.to_owned());
        if already {
            pending.remove(&id);
            return;
        }
        pending.insert(
            id,
            Want {
                present,
                leaving,
                resource_version: resource_version.to_owned(),
                finalizers: finalizers.to_vec(),
                stale: false,
                failures: 0,
                retry_at: None,
            },
        );
        drop(pending);
        self.wake.notify_one();
    }

    /// The placement watch saw `key` in this state: pending writes use it,
    /// and the ones it satisfies are done.
    pub fn observe(&self, key: &ObjectKey, resource_version: &str, finalizers: &[String]) {
        let mut pending = self.pending();
        pending.retain(|(k, finalizer), want| {
            if k != key {
                return true;
            }
            if !want.leaving && finalizers.iter().any(|f| f == finalizer) == want.present {
                return false;
            }
            want.resource_version = resource_version.to_owned();
            want.finalizers = finalizers.to_vec();
            want.stale = false;
            true
        });
    }

    /// Finalizer writes waiting.
    pub fn len(&self) -> usize {
        self.pending().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is due until `stop`, one object at a time.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = self.next_due();
            match due {
                Ok((key, finalizer)) => self.write(&key, &finalizer).await,
                Err(wait) => {
                    let sleep = async {
                        match wait {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = sleep => {}
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// The next write that is due, or when the next one will be.
    fn next_due(&self) -> Result<(ObjectKey, String), Option<Instant>> {
        let now = Instant::now();
        let pending = self.pending();
        let mut next: Option<Instant> = None;
        for (id, want) in pending.iter() {
            match want.retry_at {
                Some(at) if at > now => next = Some(next.map_or(at, |n| n.min(at))),
                _ => return Ok(id.clone()),
            }
        }
        Err(next)
    }

    async fn write(&self, key: &ObjectKey, finalizer: &str) {
        let id = (key.clone(), finalizer.to_owned());
        let Some((present, leaving, stale, mut version, mut finalizers)) =
            self.pending().get(&id).map(|w| {
                (
                    w.present,
                    w.leaving,
                    w.stale,
                    w.resource_version.clone(),
                    w.finalizers.clone(),
                )
            })
        else {
            return;
        };
        if stale {
            match self.upstream.finalizers(key).await {
                Ok((v, f)) => (version, finalizers) = (v, f),
                Err(error) => return self.failed(&id, error),
            }
        }
        let mut wanted: Vec<String> = finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        if present {
            wanted.push(finalizer.to_owned());
        }
        if wanted == finalizers && !leaving {
            self.pending().remove(&id);
            return;
        }
        let leaving = leaving
            .then(|| finalizer.strip_prefix(FINALIZER_PREFIX))
            .flatten();
        match self
            .upstream
            .set_finalizers(key, &version, &wanted, leaving)
            .await
        {
            Ok(()) => {
                self.count(write_result::SUCCESS);
                tracing::debug!(object = %key, %finalizer, present, leaving = leaving.is_some(), "finalizer written");
                let mut pending = self.pending();
                // Done, unless something newer was wanted meanwhile.
                if pending.get(&id).is_some_and(|w| w.present == present) {
                    pending.remove(&id);
                }
            }
            Err(UpstreamError::NotFound) => {
                self.count(write_result::NOT_FOUND);
                self.pending().remove(&id);
            }
            Err(error) => self.failed(&id, error),
        }
    }

    fn failed(&self, id: &(ObjectKey, String), error: UpstreamError) {
        if let UpstreamError::NotHeld { .. } = error {
            // Another replica holds the shard and writes it; kept, and
            // tried again later in case this replica takes the shard over.
            self.count(write_result::NOT_HELD);
            if let Some(want) = self.pending().get_mut(id) {
                want.retry_at = Some(Instant::now() + NOT_HELD_RETRY);
            }
            return;
        }
        let conflict = matches!(error, UpstreamError::Conflict(_));
        self.count(if conflict {
            write_result::CONFLICT
        } else {
            write_result::ERROR
        });
        let mut pending = self.pending();
        let Some(want) = pending.get_mut(id) else {
            return;
        };
        want.failures = want.failures.saturating_add(1);
        want.stale = conflict || matches!(error, UpstreamError::NotFound);
        // A first conflict retries at once (with the object read again);
        // an object that keeps changing under the hub backs off.
        let delay = if conflict && want.failures == 1 {
            Duration::ZERO
        } else {
            uplink_ops::backoff::Policy::retries(RETRY_BASE, RETRY_MAX).delay_after(want.failures)
        };
        want.retry_at = Some(Instant::now() + delay);
        if want.failures == 1 || !conflict {
            tracing::warn!(object = %id.0, finalizer = %id.1, %error, retry_in = ?delay, "writing a finalizer failed");
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .finalizer_writes
            .with_label_values(&[result])
            .inc();
    }
}
