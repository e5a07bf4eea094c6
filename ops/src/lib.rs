//! What Uplink's agent and hub both run besides the wire protocol (that is
//! `uplink-protocol`'s): one implementation each, so the two binaries cannot
//! drift apart.
//!
//! - [`backoff`]: how long to wait before trying again (reconnects, KCP
//!   writes, watches), exponential and jittered.
//! - [`serve`]: the HTTP accept loop (connection cap, header timeout,
//!   graceful shutdown) that serves `/metrics` and the health probes.
//! - [`metrics`]: the Prometheus text answer to `/metrics`.
//! - [`pem`]: the PEM files of a TLS configuration, errors naming flag and
//!   file.
//! - [`rate`]: a token bucket, waited on or asked.
//! - [`rotation`]: TLS material that follows its files on disk.

pub mod backoff;
pub mod metrics;
pub mod pem;
pub mod rate;
pub mod rotation;
pub mod serve;
