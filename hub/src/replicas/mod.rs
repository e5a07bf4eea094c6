//! Replicas: which shards of the fleet's workspaces this hub replica owns,
//! decided with Kubernetes' own coordination API (`coordination.k8s.io/v1`
//! Leases), as kube-controller-manager decides its leader. The hub asks
//! through [`Ownership`] (single hub or replica); every KCP write passes the
//! fence in [`crate::writer::fenced`].
//!
//! **Protocol.** Workspaces hash into a fixed number of shards
//! ([`shard::shard_of`]); each shard is one Lease `<prefix>-shard-<NN>`, and
//! each replica also holds a member Lease `<prefix>-member-<identity>`. A
//! process writes itself into a Lease as `<identity>_<uuid v4>` (new on every
//! start) and counts as its own only records carrying that exact string; while
//! another process holds its identity's member Lease it takes no shards, so
//! two processes given one identity never both hold a shard. Every
//! retry period (the round, in `engine.rs`) a replica renews what it holds, reads all the Leases with one
//! LIST, counts the live replicas (member Leases seen to change within their
//! lease duration), and [`balance`]s: acquire free or expired shards up to its
//! exact share, release excess after a settle time so shards do not flap. All
//! writes are conditional on the resourceVersion read, so of two candidates
//! one wins and the other gets 409. On shutdown it finishes the round in
//! flight, then re-reads and releases everything naming it (holder cleared),
//! so the others take over in their next retry period. A member Lease left
//! unrenewed for ten lease durations (a replica gone with its pod name) is
//! deleted by whichever live replica sees it first ([`members`]).
//!
//! **Why the timings are safe** (client-go's argument). A replica may take a
//! held Lease only after seeing its record unchanged for the lease duration on
//! its *own* clock, counted from an observation made after the holder's last
//! write was stored. The holder's [`Fence`] closes the renew deadline after
//! that write *started*, and renew deadline < lease duration; so the old
//! holder stops writing before a new holder can start, whatever the clocks'
//! offsets (their rates must agree within lease duration / renew deadline).
//! A replica whose renewals fail keeps nothing past the renew deadline.
//!
//! **Not yet.**
//! - A deleted Lease is free at once: whoever deletes a held shard's Lease
//!   lets another replica take it while the holder's fence is still open
//!   (client-go has the same gap). Only the replicas should touch them.
//! - Replicas do not check that they agree on the shard count; two counts
//!   hash one workspace into different shards.
//! - A round is serial: a slow member write delays the shard renewals behind
//!   it (each write is bounded by the renew deadline, so a slow API server can
//!   close the fence of shards whose renewals did not start in time).
//! - A write bounded by [`Fence::deadline`] is abandoned when the fence
//!   closes (a renewal of the same acquisition moves the bound on), but a
//!   request already sent may still reach the API server
//!   later: it has the margin lease_duration - renew_deadline before another
//!   replica may hold the shard (see [`fence`]).
//! - The fence's clock is monotonic and stops during system suspend, while
//!   the other replicas' clocks run on: a suspended and resumed holder may
//!   believe its fence open after its lease expired elsewhere.
pub mod balance;
mod engine;
pub mod fence;
pub mod lease;
pub mod members;
mod metrics;
pub mod ownership;
mod settings;
pub mod shard;

pub use balance::{Balancer, Plan, ShardState};
pub use engine::run;
pub use fence::{Claim, Fence};
pub use lease::{LeaseClient, LeaseError, LeaseRecord, Observed};
pub use metrics::ReplicaMetrics;
pub use ownership::{Ownership, Window};
pub use settings::{JITTER_FACTOR, ReplicaSettings, SettingsError};
pub use shard::{ShardId, member_lease_name, shard_lease_name, shard_of};
