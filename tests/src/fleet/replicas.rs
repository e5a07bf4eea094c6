//! Several `uplink-hub` processes as replicas of one hub (issue 20), for the
//! failover scenarios: kill the busiest, partition one from its Leases,
//! start one more.
//!
//! The replicas coordinate through `coordination.k8s.io/v1` Leases on an API
//! server of their own ([`LeaseServer`]: a test bed playing the cluster the
//! hub runs in), separate from KCP, so that a replica can be cut from its
//! Leases while its KCP writes still go through: each replica reaches the
//! Lease server through its own [`TcpProxy`], and
//! [`HubReplicas::partition`] switches it to [`LinkMode::Blackhole`]
//! (connections stay open, nothing passes: a partition as the replica sees
//! it, with no error to react to). Which replica holds which shard is read
//! from the Leases ([`LeaseServer::holders`]) and from each replica's
//! `uplink_hub_shards_held`; who wrote what in KCP, from the KCP test bed's
//! record ([`super::writers`]).
//!
//! Replicas are *slots* prepared up front (ports, proxy, kubeconfig,
//! command line), identities `hub-0`, `hub-1`, ...; some start at once, the
//! rest when the scenario says ([`HubReplicas::start_replica`]: a replica
//! joining). The agents are given every slot's URL from the start
//! ([`HubReplicas::hub_urls`], for `--hub-url`), as a static list of
//! replicas would be; a slot not yet started refuses connections, so its
//! agents keep retrying.
//!
//! A scenario (`tests/tests/fault_replicas.rs` plays three):
//!
//! ```ignore
//! let workspaces = workspaces_per_shard("root:org:ws", 16, 2);
//! let mut fleet = Fleet::builder()
//!     .clusters(["a", "b", "c"])
//!     .workspaces(workspaces.clone())
//!     .without_agents()
//!     .start()
//!     .await?;
//! let mut replicas = HubReplicas::start(&mut fleet, ReplicaOptions::default()).await?;
//! let agent = AgentProcess::start(&fleet, "a", &replicas.hub_urls()).await?;
//! replicas.wait_balanced(WITHIN).await?;
//! // ... changes in the clusters ...
//! let cut = replicas.leases().busiest().await?;
//! let from = std::time::Instant::now();
//! replicas.partition(&cut)?;
//! // ... more changes; wait until the others hold everything ...
//! let to = std::time::Instant::now();
//! replicas.heal(&cut)?;
//! let writers = assert_one_writer_per_shard(fleet.kcp_server(), from..to, 16)?;
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use uplink_e2e::apiserver::{ApiServer, ApiServerConfig};
use uplink_hub::replicas::lease::REPLICAS_LABEL;
use uplink_hub::replicas::shard::parse_shard_lease_name;
use uplink_hub::replicas::{LeaseRecord, ReplicaSettings};

use super::processes::HubProcess;
use super::proxy::{LinkMode, TcpProxy};
use super::{Fleet, eventually, http_get};
use crate::apiserver::{client_for, start_server};

/// The identity of replica `index`: `hub-<index>`.
pub fn replica_identity(index: usize) -> String {
    format!("hub-{index}")
}

/// `per_shard` workspace names `<prefix>-<n>` in each of `shards` shards
/// (as the hub hashes them), so a scenario's objects are spread over every
/// shard and so over every replica.
pub fn workspaces_per_shard(prefix: &str, shards: u16, per_shard: usize) -> Vec<String> {
    let shard_of = super::writers::hub_shard(shards);
    let mut counts = vec![0usize; usize::from(shards.max(1))];
    let mut names = Vec::new();
    let wanted = counts.len() * per_shard;
    for n in 0u64.. {
        if names.len() == wanted {
            break;
        }
        let name = format!("{prefix}-{n}");
        if let Some(count) = counts.get_mut(usize::from(shard_of(&name)))
            && *count < per_shard
        {
            *count += 1;
            names.push(name);
        }
    }
    names
}

/// The Lease timings, as client-go's leader election names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// `--replicas-lease-duration`: whole seconds.
    pub duration: Duration,
    /// `--replicas-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--replicas-retry-period`.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    /// Short enough for a scenario: a dead replica's shards are free after
    /// 2 s; a replica cut from its Leases stops writing after 1.5 s.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(250),
        }
    }
}

/// How to run the replicas.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// How many replica slots (`hub-0` ... `hub-<replicas - 1>`).
    pub replicas: usize,
    /// How many of them [`HubReplicas::start`] starts (the first ones);
    /// the others start with [`HubReplicas::start_replica`].
    pub start: usize,
    /// `--replicas-lease-namespace` on the Lease server (created).
    pub namespace: String,
    /// `--replicas-lease-prefix`.
    pub prefix: String,
    /// `--shards`.
    pub shards: u16,
    pub timings: LeaseTimings,
    /// More flags for every replica (`--write-concurrency=4`).
    pub extra: Vec<String>,
}

impl Default for ReplicaOptions {
    /// Three replicas, all started, 16 shards, [`LeaseTimings::default`].
    fn default() -> Self {
        Self {
            replicas: 3,
            start: 3,
            namespace: "uplink-replicas".to_owned(),
            prefix: "uplink-hub".to_owned(),
            shards: 16,
            timings: LeaseTimings::default(),
            extra: Vec::new(),
        }
    }
}

/// A duration as a humantime flag value (`2s`, `1500ms`).
fn duration_flag(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

impl ReplicaOptions {
    /// What the engine of replica `identity` is configured with; the hub
    /// checks the same with [`ReplicaSettings::validate`].
    pub fn settings(&self, identity: &str) -> ReplicaSettings {
        ReplicaSettings {
            namespace: self.namespace.clone(),
            identity: identity.to_owned(),
            prefix: self.prefix.clone(),
            shards: self.shards,
            lease_duration: self.timings.duration,
            renew_deadline: self.timings.renew_deadline,
            retry_period: self.timings.retry_period,
        }
    }

    /// Fails if the hub would refuse these settings, or if the flags could
    /// not say them exactly (durations are given in whole milliseconds).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=self.replicas).contains(&self.start),
            "start {} of {} replicas: at least one and at most all",
            self.start,
            self.replicas
        );
        let timings = self.timings;
        for duration in [
            timings.duration,
            timings.renew_deadline,
            timings.retry_period,
        ] {
            ensure!(
                duration.subsec_nanos() % 1_000_000 == 0,
                "{duration:?} is not a whole number of milliseconds"
            );
        }
        for index in 0..self.replicas {
            self.settings(&replica_identity(index))
                .validate()
                .with_context(|| format!("replica {index}'s settings"))?;
        }
        Ok(())
    }

    /// The hub flags that make a process replica `identity`, holding its
    /// Leases on the server `kubeconfig` points at (`ha-spec.md`'s names).
    pub fn flags(&self, identity: &str, kubeconfig: &std::path::Path) -> Vec<String> {
        let mut flags = vec![
            format!("--replicas-lease-namespace={}", self.namespace),
            format!("--replicas-kubeconfig={}", kubeconfig.display()),
            format!("--replicas-identity={identity}"),
            format!("--replicas-lease-prefix={}", self.prefix),
            format!("--shards={}", self.shards),
            format!(
                "--replicas-lease-duration={}",
                duration_flag(self.timings.duration)
            ),
            format!(
                "--replicas-renew-deadline={}",
                duration_flag(self.timings.renew_deadline)
            ),
            format!(
                "--replicas-retry-period={}",
                duration_flag(self.timings.retry_period)
            ),
        ];
        flags.extend(self.extra.iter().cloned());
        flags
    }
}

/// The API server holding the replicas' Leases (the cluster the hub runs
/// in), with one [`TcpProxy`] per replica in front of it and a kubeconfig
/// per replica that goes through it: what `--replicas-kubeconfig` names.
/// Usable without hub processes (e.g. by the replicas engine in process).
#[derive(Debug)]
pub struct LeaseServer {
    server: ApiServer,
    namespace: String,
    prefix: String,
    shards: u16,
    /// Per identity: the link and the kubeconfig through it.
    links: BTreeMap<String, (TcpProxy, PathBuf)>,
}

impl LeaseServer {
    /// Starts the server, creates `options.namespace` on it, and gives each
    /// of `identities` a link and a kubeconfig (`<dir>/<identity>.kubeconfig`).
    pub async fn start(
        dir: &Path,
        options: &ReplicaOptions,
        identities: &[String],
    ) -> Result<LeaseServer> {
        let server = start_server(ApiServerConfig::default())
            .await
            .context("starting the Lease server")?;
        create_namespace(&client_for(&server, None).await?, &options.namespace).await?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut links = BTreeMap::new();
        for identity in identities {
            let link = TcpProxy::start(server.addr()).await?;
            let kubeconfig = dir.join(format!("{identity}.kubeconfig"));
            std::fs::write(&kubeconfig, server.kubeconfig_yaml_via(link.addr()))
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            links.insert(identity.clone(), (link, kubeconfig));
        }
        Ok(LeaseServer {
            server,
            namespace: options.namespace.clone(),
            prefix: options.prefix.clone(),
            shards: options.shards,
            links,
        })
    }

    /// The API server itself.
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// The kubeconfig replica `identity` reaches the server with.
    pub fn kubeconfig(&self, identity: &str) -> Result<&Path> {
        self.links
            .get(identity)
            .map(|(_, path)| path.as_path())
            .ok_or_else(|| anyhow!("no Lease link for {identity:?}"))
    }

    /// The link between replica `identity` and the server.
    pub fn link(&self, identity: &str) -> Result<&TcpProxy> {
        self.links
            .get(identity)
            .map(|(link, _)| link)
            .ok_or_else(|| anyhow!("no Lease link for {identity:?}"))
    }

    /// Cuts replica `identity` from the server: its connections stay open
    /// and new ones are accepted, but nothing passes either way until
    /// [`LeaseServer::heal`] (a partition, as the replica sees it).
    pub fn partition(&self, identity: &str) -> Result<()> {
        self.link(identity)?.set_mode(LinkMode::Blackhole);
        Ok(())
    }

    /// Reconnects replica `identity` (what it sent meanwhile is delivered
    /// now, as TCP would after a partition heals).
    pub fn heal(&self, identity: &str) -> Result<()> {
        self.link(identity)?.set_mode(LinkMode::Forward);
        Ok(())
    }

    /// Each shard's holder as its Lease says: the identity part of
    /// `holderIdentity` (`<identity>_<uuid>`), or `None` when the Lease is
    /// absent, released, or not renewed within its `leaseDurationSeconds` by
    /// the wall clock (the replicas share this machine's clock).
    pub async fn holders(&self) -> Result<BTreeMap<u16, Option<String>>> {
        let client = client_for(&self.server, None).await?;
        let leases = list_leases(&client, &self.namespace, &self.prefix).await?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis();
        Ok(holders(&leases, &self.prefix, self.shards, now_ms))
    }

    /// The replica holding the most shards by the Leases (the first by
    /// identity among equals).
    pub async fn busiest(&self) -> Result<String> {
        let holders = self.holders().await?;
        count_by_holder(&holders)
            .iter()
            .max_by_key(|(identity, held)| (**held, std::cmp::Reverse(*identity)))
            .map(|(identity, _)| (*identity).to_owned())
            .ok_or_else(|| anyhow!("no shard is held"))
    }

    /// Waits until every shard is held by one of `replicas` and each holds
    /// its share (`shards / n` rounded down or up); returns their shards.
    pub async fn wait_balanced(
        &self,
        replicas: &[&str],
        within: Duration,
    ) -> Result<BTreeMap<String, Vec<u16>>> {
        let what = format!("the shards to be spread over {replicas:?}");
        eventually(within, &what, async || {
            balanced(&self.holders().await?, replicas)
        })
        .await
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// One replica slot: its identity and process.
#[derive(Debug)]
pub struct HubReplica {
    /// `hub-<index>`.
    pub identity: String,
    /// The process (not running until started).
    pub hub: HubProcess,
}

impl HubReplica {
    /// `wss://<tunnel>`.
    pub fn url(&self) -> String {
        self.hub.url()
    }

    /// How many shards it says it holds (`uplink_hub_shards_held`).
    pub async fn shards_held(&self) -> Result<u16> {
        let held = self
            .hub
            .process
            .metrics()
            .await?
            .require("uplink_hub_shards_held")?;
        // A gauge of whole shards, at most 1024.
        ensure!(
            (0.0..=1024.0).contains(&held) && held.fract() == 0.0,
            "{}: uplink_hub_shards_held is {held}",
            self.identity
        );
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(held as u16)
    }

    /// Its `/readyz` body (which will list the shards it holds; the format
    /// is not settled yet, so it is returned as served).
    pub async fn readyz(&self) -> Result<String> {
        http_get(self.hub.process.http_addr, "/readyz").await
    }
}

/// The Lease server and every replica slot; see the module documentation.
#[derive(Debug)]
pub struct HubReplicas {
    options: ReplicaOptions,
    leases: LeaseServer,
    replicas: Vec<HubReplica>,
}

impl HubReplicas {
    /// Starts the Lease server, prepares `options.replicas` slots and
    /// starts the first `options.start` together, waiting until each
    /// answers `/readyz`. The fleet's own in-process hub is stopped first:
    /// it would be one more writer (identity `single`). Build the fleet
    /// `.without_agents()` and start agent processes with
    /// [`HubReplicas::hub_urls`].
    pub async fn start(fleet: &mut Fleet, options: ReplicaOptions) -> Result<HubReplicas> {
        options.validate()?;
        fleet
            .stop_hub()
            .await
            .context("stopping the fleet's in-process hub")?;
        let identities: Vec<String> = (0..options.replicas).map(replica_identity).collect();
        let leases =
            LeaseServer::start(&fleet.dir().join("replicas"), &options, &identities).await?;
        let mut replicas = Vec::new();
        for identity in identities {
            let flags = options.flags(&identity, leases.kubeconfig(&identity)?);
            let hub = HubProcess::prepare(fleet, &identity, &flags).await?;
            replicas.push(HubReplica { identity, hub });
        }
        let mut set = HubReplicas {
            options,
            leases,
            replicas,
        };
        for replica in set.replicas.iter_mut().take(set.options.start) {
            replica.hub.process.spawn()?;
        }
        for replica in set.replicas.iter_mut().take(set.options.start) {
            replica.hub.wait_ready().await?;
        }
        Ok(set)
    }

    /// The options they run with.
    pub fn options(&self) -> &ReplicaOptions {
        &self.options
    }

    /// The Lease server and the replicas' links to it.
    pub fn leases(&self) -> &LeaseServer {
        &self.leases
    }

    /// Every slot, in index order.
    pub fn replicas(&self) -> &[HubReplica] {
        &self.replicas
    }

    /// Replica `identity`.
    pub fn replica(&self, identity: &str) -> Result<&HubReplica> {
        self.replicas
            .iter()
            .find(|r| r.identity == identity)
            .ok_or_else(|| anyhow!("no replica {identity:?}"))
    }

    /// Replica `identity`, to kill or restart it.
    pub fn replica_mut(&mut self, identity: &str) -> Result<&mut HubReplica> {
        self.replicas
            .iter_mut()
            .find(|r| r.identity == identity)
            .ok_or_else(|| anyhow!("no replica {identity:?}"))
    }

    /// Every slot's URL, comma-separated: the agents' `--hub-url`.
    pub fn hub_urls(&self) -> String {
        join_urls(self.replicas.iter().map(HubReplica::url))
    }

    /// Starts slot `identity` (a replica joining, or one killed before
    /// coming back) and waits until it answers `/readyz`.
    pub async fn start_replica(&mut self, identity: &str) -> Result<()> {
        let replica = self.replica_mut(identity)?;
        replica.hub.process.spawn()?;
        replica.hub.wait_ready().await
    }

    /// SIGKILLs replica `identity`.
    pub async fn kill(&mut self, identity: &str) -> Result<()> {
        self.replica_mut(identity)?.hub.process.kill().await
    }

    /// Cuts replica `identity` from the Lease server ([`LeaseServer::partition`]).
    pub fn partition(&self, identity: &str) -> Result<()> {
        self.leases.partition(identity)
    }

    /// Reconnects replica `identity` to the Lease server.
    pub fn heal(&self, identity: &str) -> Result<()> {
        self.leases.heal(identity)
    }

    /// The identities of the replicas started and not killed since.
    pub fn started(&self) -> Vec<&str> {
        self.replicas
            .iter()
            .filter(|r| r.hub.process.is_started())
            .map(|r| r.identity.as_str())
            .collect()
    }

    /// How many shards each started replica says it holds (its metrics).
    pub async fn shards_held(&self) -> Result<BTreeMap<String, u16>> {
        let mut held = BTreeMap::new();
        for replica in self.replicas.iter().filter(|r| r.hub.process.is_started()) {
            held.insert(replica.identity.clone(), replica.shards_held().await?);
        }
        Ok(held)
    }

    /// Waits until every shard is held by a started replica, each started
    /// replica holds its share (`shards / n` rounded down or up), and each
    /// says so in its metrics. Returns the shards of each replica.
    pub async fn wait_balanced(&self, within: Duration) -> Result<BTreeMap<String, Vec<u16>>> {
        eventually(
            within,
            "the shards to be spread over the replicas",
            async || {
                let by_replica = balanced(&self.leases.holders().await?, &self.started())?;
                let metrics = self.shards_held().await?;
                for (identity, shards) in &by_replica {
                    let said = metrics.get(identity).copied().unwrap_or_default();
                    ensure!(
                        usize::from(said) == shards.len(),
                        "{identity} holds {} shards by the Leases but says {said}",
                        shards.len()
                    );
                }
                Ok(by_replica)
            },
        )
        .await
    }

    /// Stops every started replica with SIGTERM (they release their
    /// Leases), then the Lease server.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for replica in &mut self.replicas {
            if replica.hub.process.is_started()
                && let Err(error) = replica.hub.process.terminate(Duration::from_secs(10)).await
            {
                failures.push(format!("{}: {error:#}", replica.identity));
            }
        }
        self.leases.shutdown().await;
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("stopping the replicas: {}", failures.join("; "))
        }
    }
}

/// `urls` comma-separated, as `--hub-url` takes a list.
fn join_urls(urls: impl Iterator<Item = String>) -> String {
    urls.collect::<Vec<_>>().join(",")
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating namespace {name}")),
    }
}

/// The replicas' Leases in `namespace`, found by their label as the
/// replicas find them.
async fn list_leases(client: &Client, namespace: &str, prefix: &str) -> Result<Vec<Lease>> {
    let params = ListParams::default().labels(&format!("{REPLICAS_LABEL}={prefix}"));
    let list = Api::<Lease>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
        .with_context(|| format!("listing the Leases in {namespace}"))?;
    Ok(list.items)
}

/// Every shard's current holder (see [`HubReplicas::lease_holders`]) at
/// `now_ms` (milliseconds since the epoch).
fn holders(
    leases: &[Lease],
    prefix: &str,
    shards: u16,
    now_ms: u128,
) -> BTreeMap<u16, Option<String>> {
    let mut holders: BTreeMap<u16, Option<String>> = (0..shards).map(|s| (s, None)).collect();
    for lease in leases {
        let Some(name) = lease.metadata.name.as_deref() else {
            continue;
        };
        let Some(shard) = parse_shard_lease_name(prefix, shards, name) else {
            continue;
        };
        let record = LeaseRecord::of(lease);
        let Some(renewed) = record.renew_time.or(record.acquire_time) else {
            continue;
        };
        let lasts_ms = i64::from(record.lease_duration_seconds).saturating_mul(1000);
        let until = renewed.as_millisecond().saturating_add(lasts_ms);
        let current = u128::try_from(until).is_ok_and(|until| until > now_ms);
        if record.holder.is_empty() || !current {
            continue;
        }
        let identity = record
            .holder
            .rsplit_once('_')
            .map_or(record.holder.as_str(), |(identity, _)| identity);
        holders.insert(shard.0, Some(identity.to_owned()));
    }
    holders
}

/// How many shards each holder holds.
fn count_by_holder(holders: &BTreeMap<u16, Option<String>>) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for holder in holders.values().flatten() {
        *counts.entry(holder.as_str()).or_default() += 1;
    }
    counts
}

/// Each of `replicas`' shards, if every shard is held by one of them and
/// each holds its share; else what is wrong.
fn balanced(
    holders: &BTreeMap<u16, Option<String>>,
    replicas: &[&str],
) -> Result<BTreeMap<String, Vec<u16>>> {
    ensure!(!replicas.is_empty(), "no replica is running");
    let mut by_replica: BTreeMap<String, Vec<u16>> = replicas
        .iter()
        .map(|r| ((*r).to_owned(), Vec::new()))
        .collect();
    let mut unheld = Vec::new();
    for (shard, holder) in holders {
        match holder {
            None => unheld.push(*shard),
            Some(holder) => match by_replica.get_mut(holder) {
                Some(shards) => shards.push(*shard),
                None => bail!("shard {shard:02} is held by {holder}, which is not running"),
            },
        }
    }
    ensure!(unheld.is_empty(), "shards not held: {unheld:?}");
    let low = holders.len() / replicas.len();
    let high = holders.len().div_ceil(replicas.len());
    for (replica, shards) in &by_replica {
        ensure!(
            (low..=high).contains(&shards.len()),
            "{replica} holds {} shards ({shards:?}), not {low}..={high}: {by_replica:?}",
            shards.len()
        );
    }
    Ok(by_replica)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;
    use crate::fleet::processes::hub_args;

    #[test]
    fn the_default_timings_are_valid_hub_settings() -> Result<()> {
        ReplicaOptions::default().validate()
    }

    #[test]
    fn settings_the_hub_would_refuse_are_refused() {
        let bad = |f: fn(&mut ReplicaOptions)| {
            let mut options = ReplicaOptions::default();
            f(&mut options);
            options.validate().is_err()
        };
        assert!(bad(|o| o.timings.duration = Duration::from_millis(2500)));
        assert!(bad(|o| o.timings.renew_deadline = Duration::from_secs(2)));
        assert!(bad(|o| o.timings.retry_period = Duration::from_millis(1300)));
        assert!(bad(
            |o| o.timings.retry_period = Duration::from_micros(250_500)
        ));
        assert!(bad(|o| o.shards = 0));
        assert!(bad(|o| o.namespace = "Not_A_Label".into()));
        assert!(bad(|o| o.start = 0));
        assert!(bad(|o| o.start = 4));
    }

    #[test]
    fn a_replica_command_line_names_every_flag_once() {
        let options = ReplicaOptions {
            extra: vec!["--write-concurrency=4".into()],
            ..ReplicaOptions::default()
        };
        let flags = options.flags("hub-1", Path::new("/f/replicas/hub-1.kubeconfig"));
        assert_eq!(
            flags,
            [
                "--replicas-lease-namespace=uplink-replicas",
                "--replicas-kubeconfig=/f/replicas/hub-1.kubeconfig",
                "--replicas-identity=hub-1",
                "--replicas-lease-prefix=uplink-hub",
                "--shards=16",
                "--replicas-lease-duration=2s",
                "--replicas-renew-deadline=1500ms",
                "--replicas-retry-period=250ms",
                "--write-concurrency=4",
            ]
        );
        let tunnel = "127.0.0.1:7001".parse().unwrap_or_else(|e| panic!("{e}"));
        let http = "127.0.0.1:7002".parse().unwrap_or_else(|e| panic!("{e}"));
        let args = hub_args(
            Path::new("/f"),
            tunnel,
            http,
            Duration::from_millis(500),
            &flags,
        );
        let mut names: Vec<&str> = args
            .iter()
            .map(|a| a.split('=').next().unwrap_or_default())
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a flag given twice: {args:?}");
        assert!(args.contains(&"--listen=127.0.0.1:7001".to_owned()));
        assert!(args.contains(&"--kcp-kubeconfig=/f/kcp.kubeconfig".to_owned()));
        assert!(args.contains(&"--replicas-identity=hub-1".to_owned()));
        assert!(args.contains(&"--write-qps=0".to_owned()));
    }

    #[test]
    fn workspaces_cover_every_shard_evenly() {
        let names = workspaces_per_shard("root:org:ws", 16, 2);
        assert_eq!(names.len(), 32);
        let shard_of = crate::fleet::writers::hub_shard(16);
        let mut counts = BTreeMap::new();
        for name in &names {
            *counts.entry(shard_of(name)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 16);
        assert!(counts.values().all(|c| *c == 2), "{counts:?}");
    }

    #[test]
    fn agents_get_every_replica_comma_separated() {
        let urls = ["wss://127.0.0.1:1", "wss://127.0.0.1:2"].map(str::to_owned);
        assert_eq!(
            join_urls(urls.into_iter()),
            "wss://127.0.0.1:1,wss://127.0.0.1:2"
        );
    }

    fn lease(name: &str, holder: &str, renewed_ms: i64, seconds: i32) -> Result<Lease> {
        let renewed = k8s_openapi::jiff::Timestamp::from_millisecond(renewed_ms)?;
        Ok(Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        })
    }

    #[test]
    fn lease_holders_are_current_named_holders() -> Result<()> {
        let now: i64 = 1_000_000;
        let leases = [
            lease("uplink-hub-shard-00", "hub-0_1b4e28ba", now - 500, 2)?,
            // Not renewed within its duration.
            lease("uplink-hub-shard-01", "hub-1_9f1c", now - 2500, 2)?,
            // Released.
            lease("uplink-hub-shard-02", "", now - 100, 1)?,
            lease("uplink-hub-member-hub-0", "hub-0_1b4e28ba", now, 2)?,
            lease("uplink-hub-shard-09", "hub-2_77", now, 2)?,
        ];
        let now = u128::try_from(now)?;
        let holders = holders(&leases, "uplink-hub", 4, now);
        assert_eq!(
            holders,
            BTreeMap::from([
                (0, Some("hub-0".to_owned())),
                (1, None),
                (2, None),
                (3, None),
            ])
        );
        Ok(())
    }

    #[test]
    fn balance_means_every_shard_held_and_shares_within_one() {
        let held = |owners: &[&str]| -> BTreeMap<u16, Option<String>> {
            owners
                .iter()
                .zip(0u16..)
                .map(|(o, s)| (s, (!o.is_empty()).then(|| (*o).to_owned())))
                .collect()
        };
        let replicas = ["hub-0", "hub-1", "hub-2"];
        let even = held(&["hub-0", "hub-1", "hub-2", "hub-0", "hub-1"]);
        assert!(balanced(&even, &replicas).is_ok());
        let uneven = held(&["hub-0", "hub-0", "hub-0", "hub-1", "hub-2"]);
        assert!(balanced(&uneven, &replicas).is_err());
        let unheld = held(&["hub-0", "", "hub-2", "hub-0", "hub-1"]);
        assert!(balanced(&unheld, &replicas).is_err());
        let stranger = held(&["hub-9", "hub-1", "hub-2", "hub-0", "hub-1"]);
        assert!(balanced(&stranger, &replicas).is_err());
        assert_eq!(count_by_holder(&even).get("hub-0"), Some(&2));
    }
}
