//! How long the hub waits before it tries a failed KCP request again:
//! exponential growth from a base, capped, with up to 20 % jitter so that
//! many objects or watches that failed together do not retry together.
//! The one place the hub's retry delays come from (writes, SyncTarget
//! writes, placement watches).

use std::time::Duration;

/// The delay before attempt `failures + 1`, after `failures` (≥ 1) failures
/// in a row: `base · 2^(failures - 1)`, at most `max`, plus up to 20 %.
pub fn delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << exp).min(max);
    delay.mul_f64(1.0 + rand::random_range(0.0..0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (failures, nominal) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let got = delay(failures, base, max);
            let nominal = Duration::from_millis(nominal);
            assert!(
                got >= nominal && got <= nominal.mul_f64(1.2),
                "{failures}: {got:?}"
            );
        }
    }
}
