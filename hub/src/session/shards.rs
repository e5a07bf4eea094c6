//! The shards lane (protocol version 4, a replicated hub only): which
//! shards of the workspaces this replica holds, told in `Welcome.shards`
//! and in a `Shards` frame after every change, each time with the shards
//! the agent must send a snapshot of (`snapshot`: those acquired since the
//! session was last told, a new term counting as acquired); and the reports
//! of shards it does not hold, acknowledged and dropped (the holder's
//! snapshot covers them) and counted in
//! `uplink_hub_unheld_shard_items_total{kind}`.
//!
//! A replicated hub refuses agents below version 4: they would send every
//! replica everything, and each would drop what it does not hold.
//!
//! Every such telling also says how often the replica wants heartbeats
//! (`ShardsHeld.heartbeat_interval_ms`): the configured interval when it is
//! the cluster's health replica (it holds the shard of the cluster's
//! SyncTarget workspace, whose health it writes into KCP, or it knows no
//! SyncTarget of the cluster), [`KEEPALIVE_FACTOR`] times longer otherwise.
//! The session's dead-connection timeout, its pings and the cluster's
//! health record follow the interval last told.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use uplink_protocol::{
    ErrorCode, HubFrame, MAX_HEARTBEAT_INTERVAL_MS, REPLICAS_VERSION, SessionMode, ShardId,
    ShardsHeld,
};

use super::wire::Violation;
use super::{Connection, Transport};
use crate::metrics::handshake_reason;
use crate::replicas::ownership::Told;
use crate::replicas::{Claim, Ownership};

/// How many heartbeat intervals a replica that is not a cluster's health
/// replica asks for between the agent's heartbeats (a keepalive).
///
/// Only the health replica needs heartbeats at the full rate: it writes
/// the SyncTarget's heartbeat and health into KCP. The others only need to
/// know the session is alive, and a heartbeat costs a hub about 70 us of
/// CPU: with every agent keeping a session per replica, heartbeats at the
/// full rate to every replica multiplied that fixed cost by the number of
/// replicas. Six intervals (a minute with the default 10 s) cut the others'
/// share to a sixth while a dead connection is still noticed within three
/// keepalives (three minutes), well before TCP would notice.
pub const KEEPALIVE_FACTOR: u32 = 6;

/// What a session told its agent of the shards, and the changes to follow.
#[derive(Debug)]
pub(super) struct ShardsTold {
    /// Shards told held, with their generations.
    told: Told,
    changes: watch::Receiver<Vec<ShardId>>,
}

impl ShardsTold {
    /// Waits for the held shards to change; `false` once they never will.
    pub(super) async fn changed(&mut self) -> bool {
        self.changes.changed().await.is_ok()
    }
}

/// The kinds of `uplink_hub_unheld_shard_items_total`.
pub(super) mod unheld_kind {
    pub const DELTA: &str = "delta";
    pub const UPSYNC: &str = "upsync";
    pub const SNAPSHOT: &str = "snapshot";
    pub const EVENT: &str = "event";
}

impl<S: Transport> Connection<S> {
    /// A replicated hub's refusal of an agent that cannot be routed by
    /// shard (below version 4).
    pub(super) fn refuse_unsharded(&self, version: u16) -> Option<Violation> {
        (self.shared.ownership.is_replicated() && version < REPLICAS_VERSION).then(|| {
            Violation::new(
                handshake_reason::UNSUPPORTED_VERSION,
                ErrorCode::UnsupportedVersion,
                format!(
                    "this hub is one of several replicas (each holds some shards of the workspaces): agents must speak protocol version {REPLICAS_VERSION} or later to be routed by shard; this one negotiated {version}"
                ),
            )
        })
    }

    /// `Welcome.shards` and the session's mode: `None` from a single hub;
    /// from a replica, the shards held now and those to snapshot: with
    /// `mode` Snapshot all of them, resuming those whose entries the store
    /// does not have from an earlier snapshot of the cluster (acquired
    /// since, or asked for and never sent; a cluster not remembered
    /// snapshots everything). The session follows the changes from here on.
    pub(super) fn welcome_shards(
        &mut self,
        version: u16,
        mode: SessionMode,
    ) -> (Option<ShardsHeld>, SessionMode) {
        let ownership = &self.shared.ownership;
        if version < REPLICAS_VERSION {
            return (None, mode);
        }
        // Subscribed before the claims are read: a change in between is
        // told again rather than missed.
        let Some(mut changes) = ownership.watch() else {
            return (None, mode);
        };
        changes.borrow_and_update();
        let claims = ownership.claims().unwrap_or_default();
        let last = ownership.known(&self.cluster);
        let (mode, snapshot) = match (mode, last) {
            (SessionMode::Resume { acked }, Some(last)) => {
                (SessionMode::Resume { acked }, newly_held(&last, &claims))
            }
            _ => (
                SessionMode::Snapshot,
                claims.iter().map(|claim| claim.shard).collect(),
            ),
        };
        for shard in &snapshot {
            ownership.expect(*shard, &self.cluster);
        }
        let told = generations(&claims);
        self.shards = Some(ShardsTold { told, changes });
        let count = ownership.count();
        let interval = self.interval_for(&claims);
        self.tell_interval(interval);
        let held = ShardsHeld {
            count,
            held: Ownership::told(&claims),
            snapshot,
            heartbeat_interval_ms: Some(interval_ms(interval)),
        };
        (Some(held), mode)
    }

    /// The heartbeat interval this replica wants from the cluster's agent
    /// while it holds `claims`: the configured one when it is the health
    /// replica (it holds the shard of the cluster's SyncTarget workspace,
    /// or it knows no SyncTarget of the cluster: the conservative choice),
    /// [`KEEPALIVE_FACTOR`] times longer otherwise. Whole milliseconds
    /// within the protocol's bounds, as the agent is told.
    fn interval_for(&self, claims: &[Claim]) -> Duration {
        let full = self.shared.heartbeat_interval;
        let workspace = self
            .shared
            .placements
            .read()
            .synctarget(&self.cluster)
            .map(|target| target.workspace.clone());
        let health_replica = workspace.is_none_or(|workspace| {
            let shard = self.shared.ownership.shard_of(&workspace);
            claims.iter().any(|claim| claim.shard == shard)
        });
        let wanted = if health_replica {
            full
        } else {
            full.saturating_mul(KEEPALIVE_FACTOR)
        };
        Duration::from_millis(interval_ms(wanted))
    }

    /// Records `interval` as told to the agent: the session's timing and
    /// the cluster's health record follow it from now on. When it shrinks,
    /// the three intervals without a frame count from now (the agent needs
    /// the time to hear it).
    fn tell_interval(&mut self, interval: Duration) {
        let previous = std::mem::replace(&mut self.interval, interval);
        if previous == interval {
            return;
        }
        let now = tokio::time::Instant::now();
        if interval < previous {
            self.interval_told_at = now;
        }
        if let Some(connection) = self.connection {
            self.shared.health.interval_told(
                &self.cluster,
                connection,
                interval,
                SystemTime::now(),
            );
        }
        tracing::debug!(
            cluster = %self.cluster,
            replica = %self.shared.ownership.identity(),
            previous_ms = interval_ms(previous),
            interval_ms = interval_ms(interval),
            "the session's heartbeat interval changed"
        );
    }

    /// Tells the agent the shards held now, with those acquired since it
    /// was last told to snapshot.
    pub(super) async fn send_shards(&mut self, told: &mut ShardsTold) -> Result<(), Violation> {
        told.changes.borrow_and_update();
        let Some(claims) = self.shared.ownership.claims() else {
            return Ok(());
        };
        let snapshot = newly_held(&told.told, &claims);
        let interval = self.interval_for(&claims);
        if told.told.len() == claims.len() && snapshot.is_empty() && interval == self.interval {
            return Ok(()); // nothing this agent was not told already
        }
        for shard in &snapshot {
            self.shared.ownership.expect(*shard, &self.cluster);
        }
        told.told = generations(&claims);
        tracing::info!(cluster = %self.cluster, held = claims.len(), snapshot = ?snapshot, outcome = "told", "shards held told to the agent");
        let frame = HubFrame::Shards(ShardsHeld {
            count: self.shared.ownership.count(),
            held: Ownership::told(&claims),
            snapshot,
            heartbeat_interval_ms: Some(interval_ms(interval)),
        });
        self.send_or_end(&frame).await?;
        // Only once sent: the agent cannot follow an interval it was not told.
        self.tell_interval(interval);
        Ok(())
    }

    /// Whether this replica holds `workspace`'s shard; a report of one it
    /// does not hold is counted as `kind` (and dropped by the caller).
    pub(super) fn shard_held(&self, workspace: &str, kind: &'static str) -> bool {
        let held = self.shared.ownership.holds_workspace(workspace);
        if !held {
            self.shared.unheld.with_label_values(&[kind]).inc();
        }
        held
    }
}

/// `interval` in whole milliseconds, within what the protocol accepts
/// (`1..=MAX_HEARTBEAT_INTERVAL_MS`).
fn interval_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_HEARTBEAT_INTERVAL_MS)
}

/// Shards in `claims` that `told` did not have, or had from an earlier
/// acquisition.
fn newly_held(told: &Told, claims: &[Claim]) -> Vec<ShardId> {
    claims
        .iter()
        .filter(|claim| told.get(&claim.shard) != Some(&claim.generation))
        .map(|claim| claim.shard)
        .collect()
}

fn generations(claims: &[Claim]) -> Told {
    claims.iter().map(|c| (c.shard, c.generation)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_new_when_not_told_or_told_from_another_acquisition() {
        let told = Told::from([(ShardId(1), 3), (ShardId(2), 5)]);
        let claim = |shard, generation| Claim {
            shard: ShardId(shard),
            term: 0,
            generation,
        };
        let claims = [claim(1, 3), claim(2, 6), claim(4, 7)];
        assert_eq!(newly_held(&told, &claims), vec![ShardId(2), ShardId(4)]);
    }
}
