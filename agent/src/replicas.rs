//! Finding the hub's replicas and keeping one session with each
//! (`--hub-url`, `--hub-discovery`).
//!
//! - `static`: every URL of `--hub-url` is one replica: one reconnect loop
//!   ([`crate::reconnect`]) each, for as long as the agent runs.
//! - `dns`: `--hub-url` is one URL whose host is a headless Service name;
//!   its addresses are resolved now and every `--hub-resolve-interval`: a
//!   new address gets a reconnect loop, one that disappeared has its
//!   session ended (it says `Bye`) and its replica forgotten by the outbox
//!   (what was in flight to it goes to its shards' holders). A failed
//!   resolution keeps the sessions as they are. The TLS server name and the
//!   request stay the URL's host.
//!
//! Every loop runs in this module's [`JoinSet`] under a child of the one
//! stop signal: stopping the agent ends them all, each saying `Bye`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{HubDiscovery, ReconnectSettings};
use crate::routes::ReplicaId;
use crate::session::{HubEndpoint, HubUrlError, SessionContext};

/// Resolves the hub's name to its replicas' addresses
/// (`--hub-discovery=dns`).
pub trait NameResolver: fmt::Debug + Send + Sync {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (tokio's `lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        })
    }
}

/// Where the replicas are, as configured.
#[derive(Debug, Clone)]
pub enum Replicas {
    /// Each endpoint one replica.
    Static(Vec<HubEndpoint>),
    /// The addresses of one name, resolved every `interval`.
    Dns {
        endpoint: HubEndpoint,
        interval: Duration,
        resolver: Arc<dyn NameResolver>,
    },
}

impl Replicas {
    /// `--hub-url` read as `--hub-discovery` says.
    pub fn parse(
        urls: &str,
        discovery: HubDiscovery,
        interval: Duration,
        resolver: Option<Arc<dyn NameResolver>>,
    ) -> Result<Self, HubUrlError> {
        let mut endpoints = HubEndpoint::parse_list(urls)?;
        match discovery {
            HubDiscovery::Static => Ok(Replicas::Static(endpoints)),
            HubDiscovery::Dns => {
                let fail = |reason: &str| HubUrlError {
                    url: urls.to_owned(),
                    reason: reason.into(),
                };
                if endpoints.len() != 1 {
                    return Err(fail(
                        "--hub-discovery=dns takes exactly one URL (its host a Service name)",
                    ));
                }
                if interval.is_zero() {
                    return Err(fail("--hub-resolve-interval must be greater than zero"));
                }
                let endpoint = endpoints.pop().ok_or_else(|| fail("names no hub"))?;
                Ok(Replicas::Dns {
                    endpoint,
                    interval,
                    resolver: resolver.unwrap_or_else(|| Arc::new(SystemResolver)),
                })
            }
        }
    }

    /// The URLs, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Replicas::Static(endpoints) => endpoints
                .iter()
                .map(|e| e.url.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Replicas::Dns { endpoint, .. } => format!("{} (dns)", endpoint.url),
        }
    }
}

/// Runs one reconnect loop per replica until `stop` is cancelled; returns
/// once every loop said goodbye.
pub async fn run(
    ctx: SessionContext,
    replicas: Replicas,
    settings: ReconnectSettings,
    stop: CancellationToken,
) {
    match replicas {
        Replicas::Static(endpoints) => {
            let mut loops = JoinSet::new();
            for (index, endpoint) in (0u32..).zip(endpoints) {
                let name: Arc<str> = endpoint.url.to_string().into();
                let replica = session_for(&ctx, endpoint, ReplicaId(index), name);
                loops.spawn(crate::reconnect::run(replica, settings, stop.clone()));
            }
            while let Some(ended) = loops.join_next().await {
                if let Err(e) = ended {
                    tracing::error!(error = %e, "hub session loop failed");
                }
            }
        }
        Replicas::Dns {
            endpoint,
            interval,
            resolver,
        } => {
            Resolver::new(ctx, endpoint, settings, resolver)
                .run(interval, stop)
                .await;
        }
    }
}

/// `ctx` for the session with one replica.
fn session_for(
    ctx: &SessionContext,
    endpoint: HubEndpoint,
    replica: ReplicaId,
    name: Arc<str>,
) -> SessionContext {
    SessionContext {
        hub: endpoint,
        replica,
        replica_name: name,
        ..ctx.clone()
    }
}

/// One session loop per resolved address.
struct Resolver {
    ctx: SessionContext,
    endpoint: HubEndpoint,
    settings: ReconnectSettings,
    resolver: Arc<dyn NameResolver>,
    /// The live loops, by address: their replica and their own stop.
    live: BTreeMap<SocketAddr, (ReplicaId, CancellationToken)>,
    loops: JoinSet<(ReplicaId, Arc<str>)>,
    next_replica: u32,
}

impl Resolver {
    fn new(
        ctx: SessionContext,
        endpoint: HubEndpoint,
        settings: ReconnectSettings,
        resolver: Arc<dyn NameResolver>,
    ) -> Self {
        Self {
            ctx,
            endpoint,
            settings,
            resolver,
            live: BTreeMap::new(),
            loops: JoinSet::new(),
            next_replica: 0,
        }
    }

    async fn run(mut self, interval: Duration, stop: CancellationToken) {
        loop {
            self.resolve(&stop).await;
            let next = tokio::time::sleep(interval);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        // Every loop's stop is a child of `stop`.
                        self.drain().await;
                        return;
                    }
                    () = &mut next => break,
                    Some(ended) = self.loops.join_next() => self.ended(ended),
                }
            }
        }
    }

    /// Resolves the name once; starts and ends loops to match.
    async fn resolve(&mut self, stop: &CancellationToken) {
        let host = self.endpoint.host.clone();
        let port = self.endpoint.port;
        let resolved = tokio::select! {
            () = stop.cancelled() => return,
            resolved = self.resolver.resolve(&host, port) => resolved,
        };
        let addresses: std::collections::BTreeSet<SocketAddr> = match resolved {
            Ok(addresses) => addresses.into_iter().collect(),
            Err(e) => {
                tracing::warn!(cluster = %self.ctx.cluster, host = %host, error = %e, sessions = self.live.len(), "resolving the hub's name failed; keeping the sessions");
                return;
            }
        };
        if addresses.is_empty() {
            tracing::warn!(cluster = %self.ctx.cluster, host = %host, sessions = self.live.len(), "the hub's name resolves to no address; keeping the sessions");
            return;
        }
        let gone: Vec<SocketAddr> = self
            .live
            .keys()
            .filter(|address| !addresses.contains(address))
            .copied()
            .collect();
        for address in gone {
            if let Some((replica, own_stop)) = self.live.remove(&address) {
                tracing::info!(cluster = %self.ctx.cluster, %address, %replica, "hub replica address gone; ending its session");
                own_stop.cancel();
            }
        }
        for address in addresses {
            if self.live.contains_key(&address) {
                continue;
            }
            let replica = ReplicaId(self.next_replica);
            self.next_replica = self.next_replica.wrapping_add(1);
            let name: Arc<str> = format!("{} ({address})", self.endpoint.url).into();
            tracing::info!(cluster = %self.ctx.cluster, %address, %replica, "hub replica address found; starting its session");
            let ctx = session_for(
                &self.ctx,
                self.endpoint.at(address),
                replica,
                Arc::clone(&name),
            );
            let own_stop = stop.child_token();
            let settings = self.settings;
            let loop_stop = own_stop.clone();
            self.loops.spawn(async move {
                crate::reconnect::run(ctx, settings, loop_stop).await;
                (replica, name)
            });
            self.live.insert(address, (replica, own_stop));
        }
    }

    /// A loop ended: its replica is forgotten (unless the address is live
    /// again under another replica id: a loop only ends when stopped).
    fn ended(&mut self, ended: Result<(ReplicaId, Arc<str>), tokio::task::JoinError>) {
        match ended {
            Ok((replica, name)) => {
                self.ctx.outbox.lock().forget(replica);
                self.ctx.outbox.notify();
                let _ = self.ctx.metrics.routed_shards.remove_label_values(&[&name]);
                let _ = self.ctx.metrics.hub_sessions.remove_label_values(&[&name]);
            }
            Err(e) => tracing::error!(error = %e, "hub session loop failed"),
        }
    }

    async fn drain(&mut self) {
        while let Some(ended) = self.loops.join_next().await {
            self.ended(ended);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_as_replicas() {
        let interval = Duration::from_secs(30);
        let Replicas::Static(endpoints) = Replicas::parse(
            "wss://hub-0:8443, wss://hub-1:8443,",
            HubDiscovery::Static,
            interval,
            None,
        )
        .unwrap() else {
            panic!("expected static replicas")
        };
        let hosts: Vec<&str> = endpoints.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(hosts, ["hub-0", "hub-1"]);

        let dns = Replicas::parse(
            "wss://uplink-hub.uplink.svc:8443",
            HubDiscovery::Dns,
            interval,
            None,
        )
        .unwrap();
        assert!(matches!(dns, Replicas::Dns { ref endpoint, .. } if endpoint.port == 8443));

        for (urls, discovery) in [
            ("wss://a:1,wss://b:1", HubDiscovery::Dns),
            ("", HubDiscovery::Static),
            ("wss://a:1,ws://b:1", HubDiscovery::Static),
        ] {
            let err = Replicas::parse(urls, discovery, interval, None).unwrap_err();
            assert!(err.to_string().contains("--hub-url"), "{err}");
        }
    }
}
