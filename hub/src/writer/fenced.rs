//! The fence at the one door to KCP: every write the hub sends upstream
//! (object status, SyncTarget status, finalizers and placement labels,
//! upsynced objects, events) passes through [`Fenced`], which sends it only
//! while this replica holds the shard of the object's workspace
//! ([`Ownership::window`]) and abandons it when that shard's fence closes.
//! Reads pass through unfenced. A single hub's writes pass through as
//! before.
//!
//! A write refused here is [`UpstreamError::NotHeld`]: each writer drops it
//! (the shard's holder writes it) or, for finalizers, waits to see whether
//! the shard comes back. What remains after a request is abandoned (it may
//! still reach the API server) is in [`crate::replicas::fence`].

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use uplink_protocol::resource::ResourceSpec;

use super::events::EventUpstream;
use super::finalizer::FinalizerUpstream;
use super::upstream::{ApplyOptions, StatusUpstream, UpstreamError, UpstreamStatus};
use super::upsync::{Listed, UpsyncUpstream};
use crate::replicas::{Ownership, Window};
use crate::store::ObjectKey;

/// KCP's writers behind this replica's fence.
#[derive(Debug)]
pub struct Fenced<T: ?Sized> {
    inner: Arc<T>,
    ownership: Ownership,
    refused: prometheus::IntCounterVec,
}

impl<T: ?Sized> Fenced<T> {
    /// `inner` behind `ownership`'s fence; refusals and abandoned writes
    /// counted in `refused` (`uplink_hub_fenced_writes_total{outcome}`).
    pub fn new(inner: Arc<T>, ownership: Ownership, refused: prometheus::IntCounterVec) -> Self {
        Self {
            inner,
            ownership,
            refused,
        }
    }

    /// Runs `write` for `workspace` if its shard is held, abandoning it when
    /// the shard's fence closes.
    async fn write<R>(
        &self,
        workspace: &str,
        what: &(dyn std::fmt::Display + Sync),
        write: impl Future<Output = Result<R, UpstreamError>>,
    ) -> Result<R, UpstreamError> {
        let shard = self.ownership.shard_of(workspace);
        match self.ownership.window(shard) {
            Window::Unbounded => write.await,
            Window::Closed => {
                self.refused.with_label_values(&["not_held"]).inc();
                tracing::debug!(object = %what, %workspace, %shard, outcome = "not held", "write not sent: this replica does not hold the shard");
                Err(UpstreamError::NotHeld { shard: shard.0 })
            }
            Window::Until {
                mut close,
                generation,
            } => {
                let mut write = std::pin::pin!(write);
                loop {
                    if let Ok(result) = tokio::time::timeout_at(close, &mut write).await {
                        return result;
                    }
                    // Renewed meanwhile, by the same acquisition: the fence
                    // stayed open and closes later now, so the write may
                    // go on (a slow request under load is no reason to drop
                    // a write no one else will make).
                    match self.ownership.window(shard) {
                        Window::Until {
                            close: later,
                            generation: now,
                        } if now == generation && later > close => close = later,
                        _ => {
                            self.refused.with_label_values(&["abandoned"]).inc();
                            tracing::warn!(object = %what, %workspace, %shard, outcome = "abandoned", "write abandoned: the shard's fence closed while it was in flight");
                            return Err(UpstreamError::NotHeld { shard: shard.0 });
                        }
                    }
                }
            }
        }
    }
}

impl<T: StatusUpstream + ?Sized> StatusUpstream for Fenced<T> {
    fn patch_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.write(
            &key.workspace,
            key,
            self.inner.patch_status(key, patch, dry_run),
        ))
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        configuration: &'a Value,
        options: ApplyOptions<'a>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.write(
            &key.workspace,
            key,
            self.inner.apply_status(key, configuration, options),
        ))
    }

    fn get_status<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
        self.inner.get_status(key)
    }
}

impl<T: EventUpstream + ?Sized> EventUpstream for Fenced<T> {
    fn create_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        event: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let write = self
                .inner
                .create_event(workspace, namespace, event, dry_run);
            self.write(workspace, &namespace, write).await
        })
    }

    fn patch_event<'a>(
        &'a self,
        workspace: &'a str,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(async move {
            let write = self
                .inner
                .patch_event(workspace, namespace, name, patch, dry_run);
            self.write(workspace, &name, write).await
        })
    }
}

impl<T: UpsyncUpstream + ?Sized> UpsyncUpstream for Fenced<T> {
    fn get_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        self.inner.get_upsynced(key)
    }

    fn create_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(self.write(
            &key.workspace,
            key,
            self.inner.create_upsynced(key, object, dry_run),
        ))
    }

    fn update_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        object: &'a Value,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<Value, UpstreamError>> {
        Box::pin(self.write(
            &key.workspace,
            key,
            self.inner.update_upsynced(key, object, dry_run),
        ))
    }

    fn delete_upsynced<'a>(
        &'a self,
        key: &'a ObjectKey,
        uid: &'a str,
        resource_version: &'a str,
        dry_run: bool,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(
            self.write(
                &key.workspace,
                key,
                self.inner
                    .delete_upsynced(key, uid, resource_version, dry_run),
            ),
        )
    }

    fn list_upsynced<'a>(
        &'a self,
        resource: &'a ResourceSpec,
    ) -> BoxFuture<'a, Result<Vec<Listed>, UpstreamError>> {
        self.inner.list_upsynced(resource)
    }
}

impl<T: FinalizerUpstream + ?Sized> FinalizerUpstream for Fenced<T> {
    fn finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<(String, Vec<String>), UpstreamError>> {
        self.inner.finalizers(key)
    }

    fn set_finalizers<'a>(
        &'a self,
        key: &'a ObjectKey,
        resource_version: &'a str,
        finalizers: &'a [String],
        leaving: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(
            self.write(
                &key.workspace,
                key,
                self.inner
                    .set_finalizers(key, resource_version, finalizers, leaving),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::replicas::Fence;

    #[derive(Debug, Default)]
    struct Slow {
        sent: Mutex<Vec<String>>,
    }

    impl StatusUpstream for Slow {
        fn patch_status<'a>(
            &'a self,
            key: &'a ObjectKey,
            _patch: &'a Value,
            _dry_run: bool,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            Box::pin(async move {
                self.sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(key.to_string());
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            })
        }
        fn apply_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
            _configuration: &'a Value,
            _options: ApplyOptions<'a>,
        ) -> BoxFuture<'a, Result<(), UpstreamError>> {
            Box::pin(async { Ok(()) })
        }
        fn get_status<'a>(
            &'a self,
            _key: &'a ObjectKey,
        ) -> BoxFuture<'a, Result<UpstreamStatus, UpstreamError>> {
            Box::pin(async { Ok(UpstreamStatus::default()) })
        }
    }

    fn counter() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["outcome"])
            .unwrap_or_else(|_| unreachable!("a valid name and one label"))
    }

    #[tokio::test(start_paused = true)]
    async fn writes_only_while_held_and_abandons_them_when_the_fence_closes() {
        let fence = Fence::new(Duration::from_secs(10));
        let ownership = Ownership::replicated("hub-0", 4, fence.clone(), Duration::ZERO);
        let inner = Arc::new(Slow::default());
        let refused = counter();
        let fenced = Fenced::new(inner.clone(), ownership.clone(), refused.clone());
        let key = ObjectKey::deployment("a"); // in root:a
        let patch = serde_json::json!({"status": {}});

        let result = fenced.patch_status(&key, &patch, false).await;
        assert!(matches!(result, Err(UpstreamError::NotHeld { .. })));
        assert!(inner.sent.lock().map(|s| s.is_empty()).unwrap_or(false));
        assert_eq!(refused.with_label_values(&["not_held"]).get(), 1);

        let started = Instant::now();
        fence.renewed(ownership.shard_of("root:a"), started, 1);
        let result = fenced.patch_status(&key, &patch, false).await;
        assert!(matches!(result, Err(UpstreamError::NotHeld { .. })));
        assert_eq!(
            Instant::now(),
            started + Duration::from_secs(10),
            "abandoned when the fence closed, not when the request ended"
        );
        assert_eq!(inner.sent.lock().map(|s| s.len()).unwrap_or(0), 1);
        assert_eq!(refused.with_label_values(&["abandoned"]).get(), 1);
    }

    /// A write slower than what was left of the fence when it was sent,
    /// while renewals keep the shard (a slow API server under load): it
    /// goes on; it is abandoned only once the fence closes, and a fence
    /// that closed and opened again (another acquisition) does not extend it.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_of_the_same_acquisition_keeps_a_slow_write_in_flight() {
        let fence = Fence::new(Duration::from_secs(10));
        let ownership = Ownership::replicated("hub-0", 4, fence.clone(), Duration::ZERO);
        let inner = Arc::new(Slow::default());
        let refused = counter();
        let fenced = Fenced::new(inner, ownership.clone(), refused.clone());
        let key = ObjectKey::deployment("a");
        let shard = ownership.shard_of("root:a");
        let started = Instant::now();
        fence.renewed(shard, started, 1);
        // Renewed every 2 s for the whole minute the write takes.
        let renewals = {
            let fence = fence.clone();
            tokio::spawn(async move {
                for tick in 1..=35u32 {
                    tokio::time::sleep_until(started + Duration::from_secs(2) * tick).await;
                    fence.renewed(shard, Instant::now(), 1);
                }
            })
        };
        let result = fenced
            .patch_status(&key, &serde_json::json!({}), false)
            .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(Instant::now(), started + Duration::from_secs(60));
        assert_eq!(refused.with_label_values(&["abandoned"]).get(), 0);
        renewals.abort();

        // The fence closes (no renewal for 10 s) and opens again under a
        // new acquisition before the write's deadline is looked at again:
        // abandoned all the same.
        let sent = Instant::now();
        fence.renewed(shard, sent, 1);
        let reopen = {
            let fence = fence.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(sent + Duration::from_secs(11)).await;
                fence.renewed(shard, Instant::now(), 2);
            })
        };
        let result = fenced
            .patch_status(&key, &serde_json::json!({}), false)
            .await;
        assert!(matches!(result, Err(UpstreamError::NotHeld { .. })));
        assert_eq!(Instant::now(), sent + Duration::from_secs(10));
        assert_eq!(refused.with_label_values(&["abandoned"]).get(), 1);
        reopen.await.ok();
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_hub_writes_unbounded() {
        let inner = Arc::new(Slow::default());
        let fenced = Fenced::new(inner, Ownership::single(4), counter());
        let key = ObjectKey::deployment("a");
        let started = Instant::now();
        let result = fenced
            .patch_status(&key, &serde_json::json!({}), false)
            .await;
        assert!(result.is_ok());
        assert_eq!(Instant::now(), started + Duration::from_secs(60));
    }
}
