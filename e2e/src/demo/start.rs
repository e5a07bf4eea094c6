//! Brings the demo's world up, in order: certificates, the embedded KCP and
//! clusters (with the stand-in Deployment controller), the SyncTargets and
//! namespaces in KCP and the clusters' nodes, then the hub and one agent per
//! cluster with the downward lane on. Everything started is recorded on the
//! [`Demo`] so its teardown stops it, whatever fails half-way.

use std::net::SocketAddr;

use anyhow::Context as _;
use kube::Api;
use uplink_agent::config::DEFAULT_DOWNWARD_RESOURCES;

use super::browser;
use super::connections::Connections;
use super::driver::{DrivenObject, Driver};
use super::launch::{self, Files};
use super::observe::WatchedObject;
use super::seed::{self, SyncTargets};
use super::setup::{self, Kubeconfigs};
use super::topology::{Topology, WORKSPACES};
use super::{Demo, capacity};
use crate::apiserver::{ApiServer, ApiServerConfig};
use crate::pki::DevPki;

/// What [`Demo::start`] brought up, for the live phase.
pub(super) struct Started {
    pub(super) topology: Topology,
    pub(super) connections: Connections,
    /// Each object's two copies, in topology order.
    pub(super) watched: Vec<WatchedObject>,
    pub(super) driver: Driver,
    pub(super) hub_http: SocketAddr,
    pub(super) notes: Vec<String>,
}

impl Demo {
    /// Starts everything; see the module documentation.
    pub(super) async fn start(&mut self) -> anyhow::Result<Started> {
        let topology = Topology::new(usize::from(self.args.clusters));
        let dir = self.dir.path.clone();
        let files = Files {
            pki: dir.join("pki"),
            kcp_kubeconfig: dir.join("kcp.kubeconfig"),
            logs: dir.join("logs"),
        };
        DevPki::new("uplink-demo-ca")
            .and_then(|pki| pki.write_all(&files.pki, &topology.clusters, &[]))
            .context("writing the demo's certificates")?;

        let mut connections = Connections::default();
        let kubeconfigs = self
            .start_servers(&topology, &files, &mut connections)
            .await?;
        let sync_targets = seed::prepare_kcp(&topology, &connections)
            .await
            .context("registering the clusters and creating namespaces in KCP")?;
        capacity::seed_nodes(&topology, &connections)
            .await
            .context("creating the demo's nodes")?;
        println!(
            "registered {} clusters in KCP (SyncTargets in {}); no Deployments yet: \
             the driver creates them in KCP once the agents are connected",
            topology.clusters.len(),
            seed::SYNCTARGET_WORKSPACE
        );

        let hub_http = self.start_uplink(&topology, &files, &kubeconfigs).await?;
        let watched = watched(&topology, &connections, &sync_targets)?;
        let driver = Driver::new(
            watched
                .iter()
                .map(|w| DrivenObject {
                    object: w.object.clone(),
                    upstream: w.upstream.clone(),
                    downstream: w.downstream.clone(),
                })
                .collect(),
            self.args.step_pause,
        );
        let notes = setup::notes(&files, &kubeconfigs, &topology);
        Ok(Started {
            topology,
            connections,
            watched,
            driver,
            hub_http,
            notes,
        })
    }

    /// KCP with the demo's workspaces, and one API server per cluster
    /// running the stand-in Deployment controller; writes their kubeconfigs.
    async fn start_servers(
        &mut self,
        topology: &Topology,
        files: &Files,
        connections: &mut Connections,
    ) -> anyhow::Result<Kubeconfigs> {
        let dir = self.dir.path.clone();
        let mut kubeconfigs = Kubeconfigs::default();
        let kcp = ApiServer::start(ApiServerConfig {
            workspaces: WORKSPACES.iter().map(|w| (*w).to_owned()).collect(),
            ..ApiServerConfig::default()
        })
        .await
        .context("starting the embedded KCP")?;
        println!("KCP (embedded)        {}", kcp.url());
        kcp.write_kubeconfig(&files.kcp_kubeconfig, None)
            .context("writing the KCP kubeconfig")?;
        for workspace in WORKSPACES {
            let path = dir.join(format!("kcp-{workspace}.kubeconfig"));
            kcp.write_kubeconfig(&path, Some(workspace))
                .with_context(|| format!("writing the kubeconfig of {workspace}"))?;
            connections
                .add_workspace(workspace, &kcp.kubeconfig_yaml(Some(workspace)))
                .await?;
            kubeconfigs.workspaces.push((workspace.to_owned(), path));
        }
        // Where the clusters are registered (their SyncTargets).
        let root = dir.join(format!("kcp-{}.kubeconfig", seed::SYNCTARGET_WORKSPACE));
        kcp.write_kubeconfig(&root, Some(seed::SYNCTARGET_WORKSPACE))
            .context("writing the kubeconfig of the SyncTargets' workspace")?;
        kubeconfigs.synctargets = root;
        connections
            .add_workspace(
                seed::SYNCTARGET_WORKSPACE,
                &kcp.kubeconfig_yaml(Some(seed::SYNCTARGET_WORKSPACE)),
            )
            .await?;
        self.servers.push(kcp);

        for cluster in &topology.clusters {
            // No kubelet runs: the stand-in controller makes a Deployment's
            // status follow its spec, as a cluster that runs it would.
            let server = ApiServer::start(ApiServerConfig {
                deployment_controller: true,
                ..ApiServerConfig::default()
            })
            .await
            .with_context(|| format!("starting the API server of {cluster}"))?;
            println!(
                "{cluster:<21} {}  (stand-in Deployment controller)",
                server.url()
            );
            let path = dir.join(format!("{cluster}.kubeconfig"));
            server
                .write_kubeconfig(&path, None)
                .with_context(|| format!("writing the kubeconfig of {cluster}"))?;
            connections
                .add_cluster(cluster, &server.kubeconfig_yaml(None))
                .await?;
            kubeconfigs.clusters.push((cluster.clone(), path));
            self.servers.push(server);
        }
        Ok(kubeconfigs)
    }

    /// The hub, then one agent per cluster applying what the hub sends down
    /// (`--downward-resources`) and upsyncing PersistentVolumes
    /// (`--upsync-resources`); returns the hub's HTTP address.
    async fn start_uplink(
        &mut self,
        topology: &Topology,
        files: &Files,
        kubeconfigs: &Kubeconfigs,
    ) -> anyhow::Result<SocketAddr> {
        let heartbeat = self.args.heartbeat_interval;
        // PersistentVolumes born in the clusters (labelled Upsync) are kept
        // in KCP too.
        let upsync = ["--upsync-resources".to_owned(), UPSYNC_RESOURCES.to_owned()];
        let (hub, hub_addrs) =
            launch::start_hub_with(&self.binaries.hub, files, heartbeat, &upsync).await?;
        println!(
            "uplink-hub            tunnel wss://{}  http http://{}  (log {})",
            hub_addrs.tunnel,
            hub_addrs.http,
            hub.log_path().display()
        );
        let page = browser::page_url(hub_addrs.http);
        println!("operator page         {page}");
        if self.args.open {
            match browser::open(&page).await {
                Ok(how) => println!("                      opened with {how}"),
                Err(why) => println!("                      not opened: {why}; open it yourself"),
            }
        }
        self.children.push(hub);
        // The downward lane is off in the agent by default; the demo is about it.
        let downward = [
            "--downward-resources".to_owned(),
            DEFAULT_DOWNWARD_RESOURCES.to_owned(),
            "--upsync-resources".to_owned(),
            UPSYNC_RESOURCES.to_owned(),
        ];
        for (cluster, (_, kubeconfig)) in topology.clusters.iter().zip(&kubeconfigs.clusters) {
            let agent = launch::start_agent_with(
                &self.binaries.agent,
                files,
                cluster,
                kubeconfig,
                hub_addrs.tunnel,
                heartbeat,
                &downward,
            )?;
            println!(
                "uplink-agent {cluster:<8} downward lane on (log {})",
                agent.log_path().display()
            );
            self.children.push(agent);
        }
        Ok(hub_addrs.http)
    }
}

/// What the demo's clusters upsync.
const UPSYNC_RESOURCES: &str = "persistentvolumes.v1";

/// Each object's two copies through the demo's own clients: in its KCP
/// workspace, and where its cluster's agent puts it.
fn watched(
    topology: &Topology,
    connections: &Connections,
    sync_targets: &SyncTargets,
) -> anyhow::Result<Vec<WatchedObject>> {
    topology
        .objects
        .iter()
        .map(|object| {
            let upstream = connections
                .workspace(&object.workspace)
                .with_context(|| format!("no client for {}", object.workspace))?;
            let downstream = connections
                .cluster(&object.cluster)
                .with_context(|| format!("no client for {}", object.cluster))?;
            let sync_target = sync_targets
                .get(&object.cluster)
                .with_context(|| format!("no SyncTarget for {}", object.cluster))?;
            let namespace = seed::downstream_namespace(object, sync_target);
            Ok(WatchedObject {
                object: object.clone(),
                upstream: Api::namespaced(upstream, &object.namespace),
                downstream: Api::namespaced(downstream, &namespace),
                downstream_namespace: namespace,
            })
        })
        .collect()
}
