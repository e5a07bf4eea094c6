//! Uplink's test bed: a Kubernetes-compatible API server with KCP-style
//! workspaces, a development PKI, the demo and the benchmarks.
//!
//! Everything here exists so that Uplink can be tested and shown on a machine
//! without Kubernetes. Nothing here is shipped to operators.

pub mod apiserver;
pub mod bench;
pub mod binaries;
pub mod demo;
pub mod pki;
