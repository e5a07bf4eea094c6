//! Reports the hub refused: counted in
//! `uplink_hub_rejected_deltas_total{cluster,reason}`, logged once per
//! cluster and object (at most [`LINES_PER_MINUTE`] lines per cluster and
//! minute at `warn`, the rest at `debug`), and kept for the cluster's agent,
//! which learns them in its next `Ack` ([`Rejections::take`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use uplink_protocol::Rejected;

use crate::metrics::Metrics;
use crate::store::{ClusterName, ObjectKey, RefusedHeld};

/// Most refusals logged at `warn` per cluster and minute.
pub const LINES_PER_MINUTE: u32 = 20;
/// Objects remembered as logged per cluster; the memory starts over when full.
const LOGGED_OBJECTS: usize = 4096;

/// Refusals, per cluster.
#[derive(Debug)]
pub struct Rejections {
    metrics: Arc<Metrics>,
    clusters: Mutex<HashMap<ClusterName, ClusterRejections>>,
}

#[derive(Debug)]
struct ClusterRejections {
    /// Not yet told to the agent; at most [`Rejected::MAX_PER_ACK`].
    pending: Vec<Rejected>,
    /// Objects already logged.
    logged: HashSet<ObjectKey>,
    /// The current minute of logging and the lines logged in it.
    window: Instant,
    lines: u32,
}

impl Rejections {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            clusters: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClusterName, ClusterRejections>> {
        // Never held across a call that can panic midway.
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `cluster`'s report `seq` about `key` was refused for
    /// `reason`; `detail` says more, for the log.
    pub fn reject(
        &self,
        cluster: &str,
        key: &ObjectKey,
        seq: u64,
        reason: &'static str,
        detail: &str,
    ) {
        let counter = self
            .metrics
            .rejected_deltas
            .with_label_values(&[cluster, reason]);
        counter.inc();
        let mut clusters = self.lock();
        let state = clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| ClusterRejections {
                pending: Vec::new(),
                logged: HashSet::new(),
                window: Instant::now(),
                lines: 0,
            });
        if state.pending.len() < Rejected::MAX_PER_ACK {
            state.pending.push(Rejected {
                seq,
                reason: reason.to_owned(),
            });
        }
        let first_for_object = if state.logged.contains(key) {
            false
        } else {
            if state.logged.len() >= LOGGED_OBJECTS {
                state.logged.clear();
            }
            state.logged.insert(key.clone());
            true
        };
        if state.window.elapsed() >= Duration::from_secs(60) {
            state.window = Instant::now();
            state.lines = 0;
        }
        let total = counter.get();
        if first_for_object && state.lines < LINES_PER_MINUTE {
            state.lines += 1;
            tracing::warn!(%cluster, object = %key, seq, reason, rejected = total, %detail, "refusing a report");
        } else {
            tracing::debug!(%cluster, object = %key, seq, reason, rejected = total, %detail, "refusing a report");
        }
    }

    /// Records held reports of `cluster` that were refused.
    pub fn rejected_held(&self, cluster: &str, refused: Vec<RefusedHeld>) {
        for (key, seq, reason) in refused {
            self.reject(cluster, &key, seq, reason, "held, then refused");
        }
    }

    /// The refusals `cluster`'s agent was not told yet, oldest first.
    pub fn take(&self, cluster: &str) -> Vec<Rejected> {
        self.lock()
            .get_mut(cluster)
            .map(|state| std::mem::take(&mut state.pending))
            .unwrap_or_default()
    }
}
