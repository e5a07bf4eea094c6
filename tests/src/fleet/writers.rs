//! Who wrote each shard's statuses, and whether two writers ever overlapped
//! (issue 20's fencing: two hub replicas never write one shard at once).
//!
//! The input is the KCP test bed's record of status writes
//! ([`ApiServer::status_writes`]), each with its `User-Agent`; the hub sends
//! `uplink-hub/<version> (<identity>)`, so every write names its replica.
//! Writes are grouped by the shard of their workspace, ordered by the time
//! they were stored, and compressed into *runs*: consecutive writes of one
//! writer. A clean handover is one run per writer (`A..A B..B`); a writer
//! with two runs in the window (`A..A B..B A`) wrote the shard while another
//! did, which the fence must prevent: that is an overlap.
//!
//! A shard that legitimately returns to an earlier writer (A hands it to a
//! joining B, B is killed, A takes it back) also has two runs of A: choose
//! the window so that it covers one handover (e.g. from a partition's start
//! to its end), or look at [`ShardWriters::runs`] yourself.
//!
//! Writes without a hub's `User-Agent` (the test's own writes) are counted
//! as [`ShardWriters::foreign`] and otherwise ignored; so are writes of the
//! physical cluster (no workspace). Writers are told apart by identity
//! only: two processes of one identity (a replica restarted) are one
//! writer here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::ops::RangeBounds;
use std::time::{Instant, SystemTime};

use anyhow::{Result, bail};
use uplink_e2e::apiserver::{ApiServer, StatusWrite};

/// The product name the hub's `User-Agent` starts with.
const HUB_AGENT: &str = "uplink-hub/";

/// The replica identity in a hub's `User-Agent`
/// (`uplink-hub/<version> (<identity>)`); `None` for anyone else's.
pub fn hub_identity(user_agent: &str) -> Option<&str> {
    let rest = user_agent.strip_prefix(HUB_AGENT)?;
    let (_, comment) = rest.split_once(" (")?;
    let identity = comment.strip_suffix(')')?;
    (!identity.is_empty() && !identity.contains(['(', ')'])).then_some(identity)
}

/// The hub's shard function with `shards` shards, as the replicas hash
/// workspaces (for [`ShardWriters::from_writes`]).
pub fn hub_shard(shards: u16) -> impl Fn(&str) -> u16 {
    // The protocol's hash (agents route by it too), as the hub re-exports it.
    move |workspace| uplink_hub::replicas::shard_of(workspace, shards).0
}

/// Consecutive writes of one shard by one writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The replica identity.
    pub writer: String,
    /// When its first and last write were stored.
    pub first: Instant,
    pub last: Instant,
    /// The wall-clock time of its first write (to read logs beside it).
    pub first_wall: SystemTime,
    /// Their places in the test bed's record ([`StatusWrite::seq`]).
    pub first_seq: u64,
    pub last_seq: u64,
    /// How many writes.
    pub writes: usize,
    /// The workspaces written.
    pub workspaces: BTreeSet<String>,
}

/// Every shard's runs of writers within a time window.
#[derive(Debug, Clone, Default)]
pub struct ShardWriters {
    runs: BTreeMap<u16, Vec<Run>>,
    /// Times are shown relative to this (the window's start, or the first write).
    origin: Option<Instant>,
    foreign: usize,
}

/// One shard written by two writers at once: its runs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub shard: u16,
    /// The writer that wrote again after another had written.
    pub writer: String,
    pub runs: Vec<Run>,
}

impl ShardWriters {
    /// Groups the writes stored within `window` (by [`StatusWrite::at`]) by
    /// `shard(workspace)` and compresses each shard's into runs, in the
    /// order they were stored.
    pub fn from_writes(
        writes: &[StatusWrite],
        window: impl RangeBounds<Instant>,
        shard: impl Fn(&str) -> u16,
    ) -> Self {
        let mut in_window: Vec<&StatusWrite> =
            writes.iter().filter(|w| window.contains(&w.at)).collect();
        in_window.sort_by_key(|w| (w.at, w.seq));
        let origin = match window.start_bound() {
            std::ops::Bound::Included(t) | std::ops::Bound::Excluded(t) => Some(*t),
            std::ops::Bound::Unbounded => in_window.first().map(|w| w.at),
        };
        let mut runs: BTreeMap<u16, Vec<Run>> = BTreeMap::new();
        let mut foreign = 0;
        for write in in_window {
            let identity = hub_identity(&write.user_agent);
            let Some(identity) = identity.filter(|_| !write.workspace.is_empty()) else {
                foreign += 1;
                continue;
            };
            let shard_runs = runs.entry(shard(&write.workspace)).or_default();
            match shard_runs.last_mut() {
                Some(run) if run.writer == identity => {
                    run.last = write.at;
                    run.last_seq = write.seq;
                    run.writes += 1;
                    if !run.workspaces.contains(&write.workspace) {
                        run.workspaces.insert(write.workspace.clone());
                    }
                }
                _ => shard_runs.push(Run {
                    writer: identity.to_owned(),
                    first: write.at,
                    last: write.at,
                    first_wall: write.wall,
                    first_seq: write.seq,
                    last_seq: write.seq,
                    writes: 1,
                    workspaces: BTreeSet::from([write.workspace.clone()]),
                }),
            }
        }
        Self {
            runs,
            origin,
            foreign,
        }
    }

    /// Every shard written in the window, with its runs in order.
    pub fn runs(&self) -> &BTreeMap<u16, Vec<Run>> {
        &self.runs
    }

    /// The writers of `shard` in the order they took it (a writer appears
    /// again if it wrote again after another).
    pub fn writers(&self, shard: u16) -> Vec<&str> {
        self.runs
            .get(&shard)
            .map(|runs| runs.iter().map(|r| r.writer.as_str()).collect())
            .unwrap_or_default()
    }

    /// Writes in the window not attributed to a hub replica (no hub
    /// `User-Agent`, or no workspace).
    pub fn foreign(&self) -> usize {
        self.foreign
    }

    /// Every shard where a writer has two runs.
    pub fn overlaps(&self) -> Vec<Overlap> {
        self.runs
            .iter()
            .filter_map(|(shard, runs)| {
                let mut seen = BTreeSet::new();
                let again = runs.iter().find(|r| !seen.insert(r.writer.as_str()))?;
                Some(Overlap {
                    shard: *shard,
                    writer: again.writer.clone(),
                    runs: runs.clone(),
                })
            })
            .collect()
    }

    /// Fails, listing each shard's writers and times, if any shard had two
    /// writers at once.
    pub fn check(&self) -> Result<()> {
        let overlaps = self.overlaps();
        if overlaps.is_empty() {
            return Ok(());
        }
        let mut message = format!(
            "{} shard(s) written by two replicas at once (times from the window's start):",
            overlaps.len()
        );
        for overlap in &overlaps {
            let _ = write!(
                message,
                "\n  shard {:02}: {} wrote again after another had written:",
                overlap.shard, overlap.writer
            );
            for run in &overlap.runs {
                let _ = write!(message, "\n    {}", self.show(run));
            }
        }
        bail!(message)
    }

    fn show<'a>(&'a self, run: &'a Run) -> ShownRun<'a> {
        ShownRun {
            run,
            origin: self.origin,
        }
    }
}

impl fmt::Display for ShardWriters {
    /// One line per shard: its runs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shard, runs) in &self.runs {
            write!(f, "shard {shard:02}:")?;
            for run in runs {
                write!(f, " [{}]", self.show(run))?;
            }
            writeln!(f)?;
        }
        if self.foreign > 0 {
            writeln!(f, "({} writes by others)", self.foreign)?;
        }
        Ok(())
    }
}

/// A run with its times relative to an origin.
struct ShownRun<'a> {
    run: &'a Run,
    origin: Option<Instant>,
}

impl fmt::Display for ShownRun<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = self.run;
        let at = |t: Instant| {
            let origin = self.origin.unwrap_or(run.first);
            if t >= origin {
                format!("+{:.3}s", t.duration_since(origin).as_secs_f64())
            } else {
                format!("-{:.3}s", origin.duration_since(t).as_secs_f64())
            }
        };
        let workspaces: Vec<&str> = run.workspaces.iter().map(String::as_str).collect();
        write!(
            f,
            "{} ×{} at {}..{} (record #{}..#{}; {})",
            run.writer,
            run.writes,
            at(run.first),
            at(run.last),
            run.first_seq,
            run.last_seq,
            workspaces.join(", ")
        )?;
        if let Ok(wall) = k8s_openapi::jiff::Timestamp::try_from(run.first_wall) {
            write!(f, " from {wall:.3}")?;
        }
        Ok(())
    }
}

/// Checks `server`'s record of status writes stored within `window`: no
/// shard (of `shards`, hashed as the hub does) written by two replicas at
/// once. Fails too if the record dropped writes the window needs. Returns
/// the shards' writers for further assertions (who took over what).
pub fn assert_one_writer_per_shard(
    server: &ApiServer,
    window: impl RangeBounds<Instant>,
    shards: u16,
) -> Result<ShardWriters> {
    let writes = server.status_writes();
    let dropped = server.status_writes_dropped();
    if dropped > 0 {
        let oldest = writes.first().map(|w| w.at);
        let needed = match window.start_bound() {
            std::ops::Bound::Included(t) | std::ops::Bound::Excluded(t) => {
                oldest.is_none_or(|oldest| oldest > *t)
            }
            std::ops::Bound::Unbounded => true,
        };
        if needed {
            bail!(
                "the test bed dropped {dropped} status writes, some of them within the window: \
                 raise ApiServerConfig::status_write_capacity"
            );
        }
    }
    let writers = ShardWriters::from_writes(&writes, window, hub_shard(shards));
    writers.check()?;
    Ok(writers)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Writes at `start + i ms` by the given (workspace, identity) pairs.
    fn writes(start: Instant, by: &[(&str, &str)]) -> Vec<StatusWrite> {
        by.iter()
            .zip(0u64..)
            .map(|((workspace, identity), i)| StatusWrite {
                seq: i,
                at: start + Duration::from_millis(i),
                wall: SystemTime::now(),
                workspace: (*workspace).to_owned(),
                namespace: "ns".into(),
                group: "apps".into(),
                resource: "deployments".into(),
                name: format!("app-{i}"),
                verb: "patch".into(),
                user_agent: if identity.is_empty() {
                    "kubectl/v1.31".into()
                } else {
                    format!("uplink-hub/0.1.0 ({identity})")
                },
                resource_version: i.to_string(),
            })
            .collect()
    }

    /// Workspaces `s<N>:...` are in shard N.
    fn by_prefix(workspace: &str) -> u16 {
        workspace
            .split(':')
            .next()
            .and_then(|s| s.strip_prefix('s'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(u16::MAX)
    }

    #[test]
    fn reads_the_identity_from_the_hub_user_agent() {
        assert_eq!(hub_identity("uplink-hub/0.4.0 (hub-1)"), Some("hub-1"));
        assert_eq!(hub_identity("uplink-hub/0.4.0 (single)"), Some("single"));
        assert_eq!(hub_identity("uplink-hub/0.4.0"), None);
        assert_eq!(hub_identity("uplink-hub/0.4.0 ()"), None);
        assert_eq!(hub_identity("kubectl/v1.31 (hub-1)"), None);
        assert_eq!(hub_identity(""), None);
    }

    #[test]
    fn a_clean_handover_passes() -> Result<()> {
        let start = Instant::now();
        let record = writes(
            start,
            &[
                ("s1:a", "hub-0"),
                ("s2:a", "hub-1"),
                ("s1:b", "hub-0"),
                ("s1:a", "hub-2"),
                ("s2:b", "hub-1"),
                ("s1:b", "hub-2"),
                ("s1:a", ""),
            ],
        );
        let writers = ShardWriters::from_writes(&record, .., by_prefix);
        writers.check()?;
        assert_eq!(writers.writers(1), ["hub-0", "hub-2"]);
        assert_eq!(writers.writers(2), ["hub-1"]);
        assert_eq!(writers.foreign(), 1);
        let runs = &writers.runs()[&1];
        assert_eq!(runs[0].writes, 2);
        assert_eq!((runs[0].first_seq, runs[0].last_seq), (0, 2));
        assert_eq!(
            runs[1].workspaces,
            BTreeSet::from(["s1:a".to_owned(), "s1:b".to_owned()])
        );
        Ok(())
    }

    #[test]
    fn a_writer_that_writes_again_after_another_is_an_overlap() {
        let start = Instant::now();
        let record = writes(
            start,
            &[
                ("s3:a", "hub-0"),
                ("s3:b", "hub-1"),
                ("s4:a", "hub-1"),
                ("s3:a", "hub-0"),
            ],
        );
        let writers = ShardWriters::from_writes(&record, .., by_prefix);
        let overlaps = writers.overlaps();
        assert_eq!(overlaps.len(), 1);
        assert_eq!(overlaps[0].shard, 3);
        assert_eq!(overlaps[0].writer, "hub-0");
        let message = match writers.check() {
            Ok(()) => panic!("an overlap passed the check:\n{writers}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(message.contains("shard 03: hub-0 wrote again"), "{message}");
        assert!(
            message.contains("hub-1 ×1 at +0.001s..+0.001s (record #1..#1; s3:b)"),
            "{message}"
        );
        assert!(!message.contains("shard 04"), "{message}");
        // Wall times, to read the processes' logs beside it.
        assert!(
            message.contains("Z\n") || message.ends_with('Z'),
            "{message}"
        );
    }

    #[test]
    fn only_the_window_counts() -> Result<()> {
        let start = Instant::now();
        let record = writes(
            start,
            &[("s1:a", "hub-0"), ("s1:a", "hub-1"), ("s1:a", "hub-0")],
        );
        // The shard returned to hub-0 after the window.
        let window = start..start + Duration::from_millis(2);
        let writers = ShardWriters::from_writes(&record, window, by_prefix);
        writers.check()?;
        assert_eq!(writers.writers(1), ["hub-0", "hub-1"]);
        assert!(
            ShardWriters::from_writes(&record, start.., by_prefix)
                .check()
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn orders_by_time_not_by_record_order() -> Result<()> {
        let start = Instant::now();
        let mut record = writes(
            start,
            &[("s1:a", "hub-0"), ("s1:a", "hub-0"), ("s1:a", "hub-1")],
        );
        record.reverse();
        let writers = ShardWriters::from_writes(&record, .., by_prefix);
        writers.check()?;
        assert_eq!(writers.writers(1), ["hub-0", "hub-1"]);
        Ok(())
    }

    #[test]
    fn the_hub_shard_function_is_the_replicas_hash() {
        // Pinned in hub/src/replicas/shard.rs.
        assert_eq!(hub_shard(16)("root:demo:a"), 7);
        assert_eq!(hub_shard(16)("root"), 5);
    }
}
