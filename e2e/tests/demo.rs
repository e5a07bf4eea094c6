//! `uplink-e2e demo` end to end at a small scale, with the real hub and
//! agent binaries: every step of the loop (create in KCP, scale, rollout,
//! unplace, place again) must be seen in the cluster and, merged, in KCP's
//! status within the step timeout, and everything must have caught up at
//! the end; the demo fails otherwise.

use std::time::Duration;

use uplink_e2e::demo::{self, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_full_loop() -> anyhow::Result<()> {
    demo::run(DemoArgs {
        clusters: 2,
        // With short pauses every object goes through its whole story (six
        // steps after the create) more than once.
        duration: Duration::from_secs(8),
        step_pause: Duration::from_millis(100),
        ..DemoArgs::default()
    })
    .await
}
