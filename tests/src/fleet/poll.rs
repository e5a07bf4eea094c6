//! Waiting for the system to reach a state: poll with a deadline, never
//! sleep a fixed time, and when the deadline passes, say what was seen last.

use std::{future::Future, time::Duration};

use anyhow::{Result, anyhow};

/// Pause between two checks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `check` until it succeeds and returns its value. An `Err` means "not
/// yet": its message should say what was observed (`readyReplicas is 0`), so
/// that when `within` has passed the failure reads "gave up after 10s waiting
/// for <what>; last observed: <message>".
pub async fn eventually<T, F>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: AsyncFnMut() -> Result<T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let error = match check().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "gave up after {within:?} waiting for {what}; last observed: {error:#}"
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `body`, failing if it takes longer than `limit`: every scenario is
/// bounded, so a hang fails the test instead of the CI job.
pub async fn bounded<T>(limit: Duration, body: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, body)
        .await
        .map_err(|_| anyhow!("the scenario did not finish within {limit:?}"))?
}

/// Waits until a change driver's `round` counter reached `at_least`.
pub async fn round_reached(
    round: &std::sync::atomic::AtomicU32,
    at_least: u32,
    within: Duration,
) -> Result<()> {
    eventually(
        within,
        &format!("round {at_least} of status changes"),
        async || {
            let now = round.load(std::sync::atomic::Ordering::SeqCst);
            if now >= at_least {
                Ok(())
            } else {
                Err(anyhow!("round {now}"))
            }
        },
    )
    .await
}
