//! The session's start: `Hello` checked (protocol version, the cluster its
//! certificate proves), the cluster's placement waited for, and `Welcome`
//! telling the agent whether it resumes where the hub's store stands or
//! sends a snapshot.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uplink_protocol::{
    AgentFrame, DOWNWARD_VERSION, ErrorCode, Hello, HubFrame, SessionMode, SyncTargetLocator,
    Welcome, negotiate_version,
};

use super::wire::{ReadError, Violation};
use super::{Connection, HelloWait, Transport};
use crate::metrics::handshake_reason;

/// Longest a connecting agent waits for its cluster's placement to be listed
/// before its `Welcome`.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);

impl<S: Transport> Connection<S> {
    /// Waits for `Hello`, checks it and answers `Welcome`. `None` when the
    /// agent was refused or went away (already counted and logged).
    pub(super) async fn handshake(
        &mut self,
        wait: HelloWait,
        shutdown: &CancellationToken,
    ) -> Option<(Hello, SessionMode)> {
        let read = tokio::select! {
            () = shutdown.cancelled() => return None,
            // A newer connection took its place (counted and logged there).
            () = wait.slot.displaced() => {
                self.refuse(Violation::new(
                    "displaced_awaiting_hello",
                    ErrorCode::LimitExceeded,
                    "too many connections waiting for Hello; a newer one took this one's place",
                ))
                .await;
                return None;
            }
            read = tokio::time::timeout_at(wait.deadline, self.read_frame()) => read,
        };
        // No longer waiting for Hello, whatever came.
        drop(wait);
        let hello = match read {
            Err(_) => {
                self.handshake_failed(handshake_reason::HELLO_TIMEOUT, "no Hello in time");
                self.refuse(Violation::new(
                    handshake_reason::HELLO_TIMEOUT,
                    ErrorCode::LimitExceeded,
                    "no Hello within the handshake deadline",
                ))
                .await;
                return None;
            }
            Ok(Err(ReadError::Closed)) => {
                self.handshake_failed(handshake_reason::CLOSED, "closed before Hello");
                return None;
            }
            Ok(Err(ReadError::Transport(error))) => {
                self.handshake_failed(handshake_reason::WEBSOCKET, &error.to_string());
                return None;
            }
            Ok(Err(ReadError::Violation(violation))) => {
                let reason = if violation.code == ErrorCode::Malformed {
                    handshake_reason::MALFORMED
                } else {
                    violation.reason
                };
                self.handshake_failed(reason, &violation.message);
                self.refuse(violation).await;
                return None;
            }
            Ok(Ok(AgentFrame::Hello(hello))) => hello,
            Ok(Ok(_)) => {
                let violation = Violation::unexpected("a frame other than Hello before Welcome");
                self.handshake_failed(handshake_reason::UNEXPECTED_FRAME, &violation.message);
                self.refuse(violation).await;
                return None;
            }
        };

        let Some(version) = negotiate_version(&hello.protocol_versions) else {
            let violation = Violation::new(
                handshake_reason::UNSUPPORTED_VERSION,
                ErrorCode::UnsupportedVersion,
                format!(
                    "no common protocol version: the agent speaks {:?}, the hub {:?}",
                    hello.protocol_versions,
                    uplink_protocol::SUPPORTED_VERSIONS
                ),
            );
            self.handshake_failed(violation.reason, &violation.message);
            self.refuse(violation).await;
            return None;
        };

        if let Some(violation) = self.refuse_unsharded(version) {
            self.handshake_failed(violation.reason, &violation.message);
            self.refuse(violation).await;
            return None;
        }

        if hello.cluster != self.cluster {
            let message = format!(
                "the client certificate proves cluster {:?} but Hello claims {:?}",
                self.cluster, hello.cluster
            );
            self.shared
                .metrics
                .handshake_failures
                .with_label_values(&[handshake_reason::IDENTITY_MISMATCH])
                .inc();
            tracing::warn!(
                peer = %self.peer,
                certificate_cluster = %self.cluster,
                hello_cluster = %hello.cluster,
                "refusing agent: Hello claims another cluster than its certificate"
            );
            self.refuse(Violation::new(
                handshake_reason::IDENTITY_MISMATCH,
                ErrorCode::IdentityMismatch,
                message,
            ))
            .await;
            return None;
        }

        // Placement first, so the agent's first reports are judged at once
        // (bounded: the agent waits three heartbeat intervals for Welcome).
        self.shared.placements.want(&self.cluster);
        let wait = self.shared.heartbeat_interval.min(PLACEMENT_WAIT);
        if !self.shared.placements.wait_ready(&self.cluster, wait).await {
            tracing::info!(cluster = %self.cluster, ?wait, "the cluster's placement is not listed yet; its reports are held until it is");
        }

        let mode = match self.shared.store.position(&self.cluster) {
            Some(position)
                if hello.last_hub_epoch == Some(self.shared.hub_epoch)
                    && *position.session == *hello.session_id =>
            {
                SessionMode::Resume {
                    acked: position.seq,
                }
            }
            _ => SessionMode::Snapshot,
        };
        let sync_target = (version >= DOWNWARD_VERSION)
            .then(|| {
                self.shared
                    .placements
                    .read()
                    .synctarget(&self.cluster)
                    .cloned()
            })
            .flatten()
            .map(|target| SyncTargetLocator {
                workspace: target.workspace,
                name: target.name,
                uid: target.uid,
                key: target.key,
            });
        let (shards, mode) = self.welcome_shards(version, mode);
        let welcome = HubFrame::Welcome(Welcome {
            protocol_version: version,
            hub_epoch: self.shared.hub_epoch,
            mode,
            heartbeat_interval_ms: u64::try_from(self.shared.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            limits: self.shared.limits,
            sync_target,
            shards,
        });
        if let Err(error) = self.send(&welcome).await {
            self.handshake_failed(handshake_reason::WEBSOCKET, &error);
            // No snapshot of a shard it was asked for will come.
            self.shared.ownership.gathered(&self.cluster, None);
            return None;
        }
        self.version = version;
        self.upsync = self.upsync_types(&hello);
        Some((hello, mode))
    }

    fn handshake_failed(&self, reason: &'static str, detail: &str) {
        self.shared
            .metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(cluster = %self.cluster, peer = %self.peer, reason, %detail, "agent handshake failed");
    }
}
