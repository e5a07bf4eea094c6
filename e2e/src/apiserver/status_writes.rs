//! The record of writes to `/status` subresources: who wrote which object's
//! status, and when, so a test can check that two writers never acted on
//! the same objects at the same time (issue 20: two hub replicas must never
//! both write one shard's workspaces).
//!
//! A real kube-apiserver (and kcp) keeps this in its audit log: an event per
//! request with `requestReceivedTimestamp` / `stageTimestamp`, `userAgent`,
//! `objectRef` (`apiGroup`, `resource`, `namespace`, `name`,
//! `subresource: status`) and, in kcp, the logical cluster in an
//! annotation. The test bed writes no audit log; it keeps this record in
//! memory instead, readable in process through
//! [`super::ApiServer::status_writes`]. Nothing here changes what a client
//! sees: the product never learns whether it talks to the test bed.
//!
//! What is recorded: every `PUT` or `PATCH` (any patch type, server-side
//! apply included) of a `/status` subresource, of any resource, in any
//! logical cluster, that succeeded and was not a dry run, no-op writes (the
//! object was already so) included, since they are still a writer acting. A
//! refused write (409 Conflict, 404, 403, a fault injected by
//! [`super::Faults`]) changes nothing and is not recorded. Writes the server
//! makes itself (the stand-in Deployment controller) are not requests and
//! are not recorded.
//!
//! When: right after the store committed the write, before the answer is
//! sent, so a write's time lies between its request's arrival and its
//! answer. The time is taken under the record's lock, so the record's order
//! ([`StatusWrite::seq`]) is also the order of the times.
//!
//! Bounded: a ring of [`super::ApiServerConfig::status_write_capacity`]
//! entries; when full, the oldest entry is dropped and counted
//! ([`super::ApiServer::status_writes_dropped`]), so a checker can tell a
//! complete record from a truncated one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime};

/// One write of a `/status` subresource, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWrite {
    /// Its place in the record: 0 for the server's first status write, and
    /// so on. Dropped entries keep their numbers, so a gap shows a drop.
    pub seq: u64,
    /// When it was stored, on this process's monotonic clock.
    pub at: Instant,
    /// When it was stored, on the wall clock (for reading logs beside it).
    pub wall: SystemTime,
    /// The logical cluster: a KCP workspace (`root:org:team-a`), or "" for
    /// the physical cluster (paths without `/clusters/`).
    pub workspace: String,
    /// The object's namespace; "" for a cluster-scoped object.
    pub namespace: String,
    /// The API group ("" for the core group).
    pub group: String,
    /// The resource (`deployments`), without the subresource.
    pub resource: String,
    /// The object's name.
    pub name: String,
    /// kube's verb: `update` (PUT) or `patch` (PATCH).
    pub verb: String,
    /// The request's `User-Agent` header ("" when absent or not text). The
    /// hub sends `uplink-hub/<version> (<identity>)`.
    pub user_agent: String,
    /// The object's `metadata.resourceVersion` after the write (unchanged by
    /// a no-op write).
    pub resource_version: String,
}

/// A status write as the handler knows it, before it gets its time.
#[derive(Debug)]
pub(crate) struct Written {
    pub workspace: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub name: String,
    pub verb: &'static str,
    pub user_agent: String,
    pub resource_version: String,
}

/// The ring of recorded status writes.
#[derive(Debug)]
pub(crate) struct StatusWriteLog {
    capacity: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<StatusWrite>,
    next_seq: u64,
    dropped: u64,
}

impl StatusWriteLog {
    /// A record keeping the last `capacity` writes (0 keeps none, counting
    /// every write as dropped).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(Ring::default()),
        }
    }

    /// Records `write` as stored now.
    pub fn record(&self, write: Written) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let entry = StatusWrite {
            seq,
            at: Instant::now(),
            wall: SystemTime::now(),
            workspace: write.workspace,
            namespace: write.namespace,
            group: write.group,
            resource: write.resource,
            name: write.name,
            verb: write.verb.to_owned(),
            user_agent: write.user_agent,
            resource_version: write.resource_version,
        };
        if self.capacity == 0 {
            ring.dropped += 1;
            return;
        }
        if ring.entries.len() >= self.capacity {
            ring.entries.pop_front();
            ring.dropped += 1;
        }
        ring.entries.push_back(entry);
    }

    /// Every kept write, oldest first.
    pub fn snapshot(&self) -> Vec<StatusWrite> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.entries.iter().cloned().collect()
    }

    /// How many writes were dropped to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str) -> Written {
        Written {
            workspace: "root:a".into(),
            namespace: "ns".into(),
            group: "apps".into(),
            resource: "deployments".into(),
            name: name.into(),
            verb: "patch",
            user_agent: "uplink-hub/0.1.0 (hub-0)".into(),
            resource_version: "7".into(),
        }
    }

    #[test]
    fn keeps_the_newest_writes_in_order_and_counts_the_dropped() {
        let log = StatusWriteLog::new(2);
        for name in ["a", "b", "c"] {
            log.record(write(name));
        }
        let kept = log.snapshot();
        let names: Vec<&str> = kept.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(kept.iter().map(|w| w.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(kept[0].at <= kept[1].at);
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing() {
        let log = StatusWriteLog::new(0);
        log.record(write("a"));
        assert!(log.snapshot().is_empty());
        assert_eq!(log.dropped(), 1);
    }
}
