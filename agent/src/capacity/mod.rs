//! The cluster's health and capacity as the Kubernetes scheduler sees it,
//! for the heartbeat's [`uplink_protocol::ClusterSummary`].
//!
//! - [`quantity`]: exact Kubernetes quantities (no floats anywhere);
//! - [`amounts`]: resource lists as exact sums, then in scheduler units;
//! - [`node`] / [`pod`]: what one node offers and one pod requests
//!   (init containers, sidecars, overhead, as `PodRequests` computes it);
//! - [`collector`]: running totals, updated per watch event;
//! - [`watch`]: the node, pod and namespace watches and the
//!   `metrics.k8s.io` usage poller that feed it.
//!
//! The wire carries integers in base units (millicores, bytes, counts), so
//! only the agent parses quantities.

pub mod amounts;
pub mod collector;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod watch;

pub use collector::{CapacityWatch, Collector, SharedCollector};
pub use quantity::{Quantity, QuantityError};
