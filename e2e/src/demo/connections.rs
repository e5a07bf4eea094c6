//! The demo's own clients: one per KCP workspace and one per cluster, built
//! from the same kubeconfigs the hub and the agents get.

use std::collections::BTreeMap;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// What failed while building a client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the kubeconfig of {server}: {source}")]
    Kubeconfig {
        server: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

/// Clients by KCP workspace and by cluster name.
#[derive(Clone, Default)]
pub struct Connections {
    workspaces: BTreeMap<String, Client>,
    clusters: BTreeMap<String, Client>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("workspaces", &self.workspaces.keys().collect::<Vec<_>>())
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Connections {
    /// Adds a client for KCP workspace `workspace` from its kubeconfig.
    pub async fn add_workspace(
        &mut self,
        workspace: &str,
        kubeconfig_yaml: &str,
    ) -> Result<(), ConnectError> {
        let client = client(workspace, kubeconfig_yaml).await?;
        self.workspaces.insert(workspace.to_owned(), client);
        Ok(())
    }

    /// Adds a client for cluster `cluster` from its kubeconfig.
    pub async fn add_cluster(
        &mut self,
        cluster: &str,
        kubeconfig_yaml: &str,
    ) -> Result<(), ConnectError> {
        let client = client(cluster, kubeconfig_yaml).await?;
        self.clusters.insert(cluster.to_owned(), client);
        Ok(())
    }

    pub fn workspace(&self, workspace: &str) -> Option<Client> {
        self.workspaces.get(workspace).cloned()
    }

    pub fn cluster(&self, cluster: &str) -> Option<Client> {
        self.clusters.get(cluster).cloned()
    }
}

/// A client for the API server that `kubeconfig_yaml` describes; `server`
/// names it in errors.
pub async fn client(server: &str, kubeconfig_yaml: &str) -> Result<Client, ConnectError> {
    // kube builds its TLS configuration from the process-wide rustls provider.
    // Ring is the workspace's only one; installing it fails harmlessly when a
    // provider (the binary's, also ring) is already there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig =
        Kubeconfig::from_yaml(kubeconfig_yaml).map_err(|source| ConnectError::Kubeconfig {
            server: server.to_owned(),
            source,
        })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ConnectError::Kubeconfig {
            server: server.to_owned(),
            source,
        })?;
    Client::try_from(config).map_err(|source| ConnectError::Client {
        server: server.to_owned(),
        source,
    })
}
