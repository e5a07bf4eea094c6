//! Looks at everything the table shows: for each object, its copy in its
//! cluster (the truth), its copy in KCP and what the driver asked of it;
//! for each cluster, how long ago the hub heard its heartbeat (from the
//! hub's `/metrics`, `uplink_hub_last_heartbeat_timestamp_seconds`) and the
//! state the hub gives it (`GET /api/v1/clusters`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use uplink_hub::writer::finalizer::finalizer_name;

use super::driver::{ObjectProgress, Progress};
use super::script::{self, ObjectState, Sighting};
use super::status::StatusSummary;
use super::topology::DemoObject;

/// How long one look at a server may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One table row: an object seen from every side.
#[derive(Debug, Clone)]
pub struct ObjectView {
    pub object: DemoObject,
    /// Where the agent puts the object in its cluster.
    pub downstream_namespace: String,
    pub progress: ObjectProgress,
    /// The copy in the object's cluster (`None`: there is none), or why it
    /// could not be read.
    pub truth: Result<Option<ObjectState>, String>,
    /// The object in KCP (`None`: there is none), or why it could not be read.
    pub kcp: Result<Option<ObjectState>, String>,
}

impl ObjectView {
    /// Both copies, if both could be read.
    pub fn sighting(&self) -> Option<Sighting> {
        match (&self.kcp, &self.truth) {
            (Ok(kcp), Ok(downstream)) => Some(Sighting {
                kcp: kcp.clone(),
                downstream: downstream.clone(),
            }),
            _ => None,
        }
    }

    /// The object shows what the driver last asked in KCP (see
    /// [`script::settled`]); an object not created yet is settled.
    pub fn settled(&self) -> bool {
        match self.progress.step {
            None => true,
            Some((_, intent)) => self
                .sighting()
                .is_some_and(|sighting| script::settled(&intent, &sighting)),
        }
    }
}

/// What the hub says about one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub name: String,
    /// Demo objects the cluster holds a copy of.
    pub objects: usize,
    /// Time since the hub's last heartbeat from the cluster; `None` if none yet.
    pub heartbeat_age: Option<Duration>,
    /// Status deltas the hub received from the cluster.
    pub deltas_received: Option<f64>,
    /// The hub's verdict (`Ready`, `Stale`, `Offline`) and whether an agent
    /// session is up; `None` if the hub does not list the cluster.
    pub state: Option<HubClusterState>,
}

/// One cluster as `GET /api/v1/clusters` lists it (only what the table shows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HubClusterState {
    pub name: String,
    pub connected: bool,
    pub state: String,
}

/// Everything the table shows at one moment.
#[derive(Debug, Clone)]
pub struct Observation {
    pub objects: Vec<ObjectView>,
    pub clusters: Vec<ClusterView>,
    /// Agents with a session, per the hub; `None` if the hub did not answer.
    pub agents_connected: Option<f64>,
    /// Why the hub's metrics could not be read, if they could not.
    pub hub_error: Option<String>,
}

impl Observation {
    /// Every object settled (see [`ObjectView::settled`]).
    pub fn settled(&self) -> bool {
        self.objects.iter().all(ObjectView::settled)
    }
}

/// One object's two copies.
#[derive(Debug, Clone)]
pub struct WatchedObject {
    pub object: DemoObject,
    pub downstream_namespace: String,
    pub upstream: Api<Deployment>,
    pub downstream: Api<Deployment>,
}

/// Reads KCP, the clusters and the hub.
#[derive(Debug)]
pub struct Observer {
    objects: Vec<WatchedObject>,
    clusters: Vec<String>,
    progress: Progress,
    /// The hub's HTTP address.
    hub: Option<SocketAddr>,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
}

impl Observer {
    /// `objects` in topology order (matching `progress`); `hub_http` is the
    /// hub's HTTP address, if it runs.
    pub fn new(
        objects: Vec<WatchedObject>,
        clusters: Vec<String>,
        progress: Progress,
        hub_http: Option<SocketAddr>,
    ) -> Observer {
        Observer {
            objects,
            clusters,
            progress,
            hub: hub_http,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The hub's HTTP address, if it runs.
    pub fn hub_http(&self) -> Option<SocketAddr> {
        self.hub
    }

    /// Reads everything once; failures show up in the result, they are not errors.
    pub async fn observe(&self) -> Observation {
        let objects = futures::future::join_all(self.objects.iter().enumerate().map(
            |(index, watched)| async move {
                let (truth, kcp) = tokio::join!(
                    read(&watched.downstream, &watched.object.name),
                    read(&watched.upstream, &watched.object.name)
                );
                ObjectView {
                    object: watched.object.clone(),
                    downstream_namespace: watched.downstream_namespace.clone(),
                    progress: self.progress.get(index),
                    truth,
                    kcp,
                }
            },
        ));
        let (objects, metrics, hub_clusters) =
            tokio::join!(objects, self.hub_get("/metrics"), self.hub_clusters());
        let hub_clusters = hub_clusters.unwrap_or_default();
        let now = jiff::Timestamp::now().as_duration().as_secs_f64();
        let (samples, hub_error) = match metrics {
            Ok(text) => (parse_metrics(&text), None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let clusters = self
            .clusters
            .iter()
            .map(|name| {
                let of_cluster = |metric: &str| {
                    samples
                        .iter()
                        .find(|s| s.name == metric && s.label("cluster") == Some(name))
                        .map(|s| s.value)
                };
                ClusterView {
                    name: name.clone(),
                    objects: objects
                        .iter()
                        .filter(|o| {
                            o.object.cluster == *name && o.truth.as_ref().is_ok_and(Option::is_some)
                        })
                        .count(),
                    heartbeat_age: of_cluster("uplink_hub_last_heartbeat_timestamp_seconds")
                        .filter(|at| *at > 0.0)
                        .map(|at| Duration::from_secs_f64((now - at).max(0.0))),
                    deltas_received: of_cluster("uplink_hub_deltas_received_total"),
                    state: hub_clusters.iter().find(|c| c.name == *name).cloned(),
                }
            })
            .collect();
        let agents_connected = samples
            .iter()
            .find(|s| s.name == "uplink_hub_agents_connected")
            .map(|s| s.value);
        Observation {
            objects,
            clusters,
            agents_connected,
            hub_error,
        }
    }

    /// Every cluster the hub lists, page after page (`GET /api/v1/clusters`,
    /// following `metadata.continue`).
    async fn hub_clusters(&self) -> Result<Vec<HubClusterState>, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<HubClusterState>,
            #[serde(default)]
            metadata: PageMetadata,
        }
        #[derive(Default, serde::Deserialize)]
        struct PageMetadata {
            #[serde(rename = "continue")]
            next: Option<String>,
        }
        let mut clusters = Vec::new();
        let mut path = "/api/v1/clusters".to_owned();
        // A fleet of a few clusters is one page; the bound only stops a
        // hub that would page forever.
        for _ in 0..1000 {
            let body = self.hub_get(&path).await?;
            let page: Page = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
            clusters.extend(page.items);
            match page.metadata.next {
                // Continue tokens are base64url: nothing to escape.
                Some(token) => path = format!("/api/v1/clusters?continue={token}"),
                None => return Ok(clusters),
            }
        }
        Err("GET /api/v1/clusters: more than 1000 pages".to_owned())
    }

    /// The body of `GET <path>` on the hub's HTTP address.
    async fn hub_get(&self, path: &str) -> Result<String, String> {
        let Some(addr) = self.hub else {
            return Err("the hub is not running".to_owned());
        };
        let uri: hyper::Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("{path}: {e}"))?;
        let fetch = async {
            let response = self.http.get(uri).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("GET {path} answered {}", response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            String::from_utf8(body.to_bytes().to_vec()).map_err(|e| e.to_string())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| Err(format!("GET {path} timed out")))
    }
}

/// Both copies of the object `name`, read at the same time.
pub async fn sight(
    upstream: &Api<Deployment>,
    downstream: &Api<Deployment>,
    name: &str,
) -> Result<Sighting, String> {
    let (kcp, downstream) = tokio::join!(read(upstream, name), read(downstream, name));
    Ok(Sighting {
        kcp: kcp?,
        downstream: downstream?,
    })
}

/// The object `name`, `None` if there is none.
async fn read(api: &Api<Deployment>, name: &str) -> Result<Option<ObjectState>, String> {
    let deployment = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| match e {
            kube::Error::Api(status) => format!("{} {}", status.code, status.reason),
            other => other.to_string(),
        })?;
    Ok(deployment.map(|deployment| state(&deployment)))
}

/// What the demo compares of a Deployment.
pub fn state(deployment: &Deployment) -> ObjectState {
    let hub_finalizer = finalizer_name("");
    ObjectState {
        generation: deployment.metadata.generation,
        desired: deployment.spec.as_ref().and_then(|s| s.replicas),
        image: deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone()),
        status: StatusSummary::of(deployment.status.as_ref()),
        held_by_hub: deployment
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f.starts_with(&hub_finalizer)),
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format, skipping comments and any
/// line it does not understand (label values with escaped quotes included).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.find('}')?;
            let labels = line.get(open + 1..close)?;
            (&line[..open], parse_labels(labels)?, &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    if text.contains('\\') {
        return None;
    }
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((key.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labelled_and_plain_samples() {
        let text = "# HELP x y\n# TYPE x gauge\n\
            uplink_hub_last_heartbeat_timestamp_seconds{cluster=\"cluster-1\"} 1700000000.5\n\
            uplink_hub_agents_connected 3\n\
            uplink_hub_frames_rejected_total{cluster=\"c\",reason=\"too_big\"} 2\n\
            garbage{ 1\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("cluster"), Some("cluster-1"));
        assert_eq!(samples[0].value, 1_700_000_000.5);
        assert_eq!(samples[1].name, "uplink_hub_agents_connected");
        assert_eq!(samples[1].value, 3.0);
        assert_eq!(samples[2].label("reason"), Some("too_big"));
    }
}
