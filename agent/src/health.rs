//! What the agent knows about its own health: the state of each watch and
//! whether a hub session is up. Feeds `/readyz` and the heartbeat's
//! [`ClusterSummary`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use uplink_protocol::{ClusterSummary, WatchHealth};

use crate::capacity::{SharedCollector, collector};
use crate::config::ResourceSpec;
use crate::watch::WatchId;

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AgentHealth {
    watches: Arc<Mutex<BTreeMap<WatchId, WatchHealth>>>,
    /// Sessions with hub replicas established now.
    hub_sessions: Arc<AtomicUsize>,
    /// The capacity collector, once attached: the summary's capacity part.
    capacity: Arc<OnceLock<SharedCollector>>,
}

impl AgentHealth {
    /// Health for the namespace watch and one watch per resource, none ready.
    pub fn new(resources: &[ResourceSpec]) -> Self {
        let health = Self::default();
        {
            let mut watches = health.lock();
            let ids = std::iter::once(WatchId::Namespaces)
                .chain(resources.iter().cloned().map(WatchId::Resource));
            for id in ids {
                let entry = WatchHealth {
                    resource: id.to_string(),
                    ..WatchHealth::default()
                };
                watches.insert(id, entry);
            }
        }
        health
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<WatchId, WatchHealth>> {
        // Entries are plain values written in one statement; poisoning cannot
        // leave them half-updated.
        self.watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `update` to the entry of `watch` (creating it if unknown).
    pub fn update(&self, watch: &WatchId, update: impl FnOnce(&mut WatchHealth)) {
        let mut watches = self.lock();
        let entry = watches.entry(watch.clone()).or_insert_with(|| WatchHealth {
            resource: watch.to_string(),
            ..WatchHealth::default()
        });
        update(entry);
    }

    /// A session with a hub replica was established (`true`) or ended.
    pub fn set_hub_connected(&self, connected: bool) {
        if connected {
            self.hub_sessions.fetch_add(1, Ordering::Relaxed);
        } else {
            // Every `false` follows its `true` (one guard per session).
            let _ = self
                .hub_sessions
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Whether a session with at least one hub replica is established.
    pub fn hub_connected(&self) -> bool {
        self.hub_sessions.load(Ordering::Relaxed) > 0
    }

    /// The watches that have not completed their initial list yet.
    pub fn watches_not_ready(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|w| !w.ready)
            .map(|w| w.resource.clone())
            .collect()
    }

    /// Why the agent is not ready, or `None` when it is: ready means every
    /// watch (namespaces included) completed its initial list and a session
    /// with the hub is established.
    pub fn not_ready_reason(&self) -> Option<String> {
        let pending = self.watches_not_ready();
        let mut reasons = Vec::new();
        if !pending.is_empty() {
            reasons.push(format!("initial list pending: {}", pending.join(", ")));
        }
        if !self.hub_connected() {
            reasons.push("not connected to the hub".to_owned());
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Makes `collector` the source of the summary's capacity part (nodes,
    /// resources, pods, the node and pod watches). Only the first one counts.
    pub fn attach_capacity(&self, collector: SharedCollector) {
        let _ = self.capacity.set(collector);
    }

    /// The heartbeat summary: one entry per configured resource type, and
    /// the capacity part when a collector is attached.
    pub fn summary(&self) -> ClusterSummary {
        let mut summary = ClusterSummary {
            watches: self
                .lock()
                .iter()
                .filter(|(id, _)| matches!(id, WatchId::Resource(_)))
                .map(|(_, w)| w.clone())
                .collect(),
            ..ClusterSummary::default()
        };
        if let Some(collector) = self.capacity.get() {
            collector::lock(collector).fill(&mut summary);
        }
        summary
    }
}
