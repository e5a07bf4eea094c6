//! Settle times learned per object from how fast it has been changing.
//!
//! An object that changed once (or after a quiet spell) is written after the
//! base settle time. An object that keeps changing every few tens of
//! milliseconds (a rollout, a scaling burst) is *busy*: its settle window
//! stays open while changes keep arriving at its usual pace (a few of its
//! recent gaps), so the burst becomes one write of its latest status instead
//! of one per base settle time. The window never stays open beyond the cap,
//! counted from the first change it holds, so the delay stays bounded.
//!
//! An object is busy while the gaps between its changes (a running
//! harmonic average: the average of its change rate) stay under
//! [`BUSY_GAPS`] base settle times. A pause halves its rate, so an object
//! that paused briefly between two bursts is still busy when the next one
//! starts and the burst's first change waits too, while one that settled
//! into changing slowly becomes an ordinary object within a few changes.
//! After [`MEMORY_GAPS`] base settle times without a change its history is
//! forgotten (a sweep): what is kept is at most one entry per object that
//! changed recently.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::ObjectKey;

/// An object whose changes come less than this many base settle times
/// apart is busy.
const BUSY_GAPS: u32 = 5;
/// A busy object's window stays open until it has been quiet for this many
/// of its recent gaps.
const QUIET_GAPS: u32 = 4;
/// An object that has not changed for this many base settle times is
/// forgotten: its next change is an isolated one.
const MEMORY_GAPS: u32 = 50;

/// How long an object that changed waits before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleTimes {
    /// An isolated change waits this long.
    pub base: Duration,
    /// A busy object's window never stays open longer than this (at least
    /// `base`; equal to it: every change waits `base`, nothing is learned).
    pub max: Duration,
}

impl SettleTimes {
    /// Every change waits `settle`, however often the object changes.
    pub fn fixed(settle: Duration) -> Self {
        Self {
            base: settle,
            max: settle,
        }
    }

    fn learns(&self) -> bool {
        !self.base.is_zero() && self.max > self.base
    }

    /// An average gap up to this long makes an object busy.
    fn busy_gap(&self) -> Duration {
        self.base * BUSY_GAPS
    }

    /// How long an object is remembered after its last change.
    fn memory(&self) -> Duration {
        self.base * MEMORY_GAPS
    }
}

/// The recent change rate of each object that changed lately.
#[derive(Debug)]
pub(super) struct Paces {
    times: SettleTimes,
    recent: HashMap<ObjectKey, Pace>,
    /// When objects that stopped changing were last forgotten.
    swept: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Pace {
    last: Instant,
    /// Running harmonic average of the gaps between its recent changes;
    /// none after its first change.
    gap: Option<Duration>,
}

impl Paces {
    pub(super) fn new(times: SettleTimes) -> Self {
        Self {
            times,
            recent: HashMap::new(),
            swept: None,
        }
    }

    pub(super) fn times(&self) -> SettleTimes {
        self.times
    }

    /// Objects whose pace is remembered (at most those that changed within
    /// the memory, plus those since the last sweep).
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.recent.len()
    }

    /// Records a change of `key` at `now`.
    pub(super) fn changed(&mut self, key: &ObjectKey, now: Instant) {
        if !self.times.learns() {
            return;
        }
        self.sweep(now);
        let memory = self.times.memory();
        match self.recent.get_mut(key) {
            Some(pace) => {
                let gap = now.saturating_duration_since(pace.last);
                pace.gap = if gap > memory {
                    None
                } else {
                    Some(pace.gap.map_or(gap, |average| harmonic_mean(average, gap)))
                };
                pace.last = now;
            }
            None => {
                self.recent.insert(
                    key.clone(),
                    Pace {
                        last: now,
                        gap: None,
                    },
                );
            }
        }
    }

    /// How long `key`'s window stays open after its latest change: the base
    /// settle time, or for a busy object a few of its recent gaps (capped).
    pub(super) fn quiet(&self, key: &ObjectKey, now: Instant) -> Duration {
        let base = self.times.base;
        let Some(pace) = self.recent.get(key) else {
            return base;
        };
        match pace.gap {
            Some(gap)
                if gap <= self.times.busy_gap()
                    && now.saturating_duration_since(pace.last) <= self.times.memory() =>
            {
                (gap * QUIET_GAPS).clamp(base, self.times.max.max(base))
            }
            _ => base,
        }
    }

    /// Forgets the objects that have not changed within the memory: their
    /// next change is an isolated one. At most once per busy gap, so the
    /// cost is spread over the changes.
    fn sweep(&mut self, now: Instant) {
        let memory = self.times.memory();
        let Some(swept) = self.swept else {
            self.swept = Some(now);
            return;
        };
        if now.saturating_duration_since(swept) < self.times.busy_gap() {
            return;
        }
        self.recent
            .retain(|_, pace| now.saturating_duration_since(pace.last) <= memory);
        self.swept = Some(now);
    }
}

/// The gap that averages the two change rates: `2ab / (a + b)` (zero if
/// either is zero).
fn harmonic_mean(a: Duration, b: Duration) -> Duration {
    let (a, b) = (a.as_secs_f64(), b.as_secs_f64());
    if a + b <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(2.0 * a * b / (a + b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn paces() -> Paces {
        Paces::new(SettleTimes {
            base: 20 * MS,
            max: 500 * MS,
        })
    }

    #[test]
    fn a_first_change_and_a_slow_object_wait_the_base_time() {
        let mut paces = paces();
        let start = Instant::now();
        paces.changed(&ObjectKey::deployment("a"), start);
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), start), 20 * MS);
        // Every 200 ms (the latency scenario at 1,000 changes/s): not busy.
        for i in 1..10 {
            paces.changed(&ObjectKey::deployment("a"), start + 200 * MS * i);
            assert_eq!(
                paces.quiet(&ObjectKey::deployment("a"), start + 200 * MS * i),
                20 * MS
            );
        }
    }

    #[test]
    fn a_busy_object_waits_a_few_of_its_gaps_up_to_the_cap() {
        let mut paces = paces();
        let mut now = Instant::now();
        for _ in 0..5 {
            paces.changed(&ObjectKey::deployment("a"), now);
            now += 40 * MS;
        }
        now -= 40 * MS;
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), now), 160 * MS);
        // Faster still: the average follows, the quiet time shrinks with it
        // but never below the base.
        for _ in 0..8 {
            now += MS;
            paces.changed(&ObjectKey::deployment("a"), now);
        }
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), now), 20 * MS);
        // Slower (but still busy): capped.
        let mut paces = Paces::new(SettleTimes {
            base: 20 * MS,
            max: 100 * MS,
        });
        for i in 0..5 {
            paces.changed(&ObjectKey::deployment("b"), now + 90 * MS * i);
        }
        assert_eq!(
            paces.quiet(&ObjectKey::deployment("b"), now + 360 * MS),
            100 * MS
        );
    }

    #[test]
    fn a_pause_between_bursts_keeps_it_busy_a_quiet_spell_forgets_it() {
        let mut paces = paces();
        let start = Instant::now();
        for i in 0..5 {
            paces.changed(&ObjectKey::deployment("a"), start + 30 * MS * i);
        }
        let last = start + 120 * MS;
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), last), 120 * MS);
        // A pause of 300 ms halves its rate (a gap of ~55 ms): the first
        // change of the next burst waits for more.
        paces.changed(&ObjectKey::deployment("a"), last + 300 * MS);
        let quiet = paces.quiet(&ObjectKey::deployment("a"), last + 300 * MS);
        assert!(quiet > 200 * MS && quiet < 250 * MS, "{quiet:?}");
        // Settling into a slow pace (every 300 ms) makes it ordinary again.
        for i in 2..5 {
            paces.changed(&ObjectKey::deployment("a"), last + 300 * MS * i);
        }
        assert_eq!(
            paces.quiet(&ObjectKey::deployment("a"), last + 1200 * MS),
            20 * MS
        );
        // Quiet for longer than the memory (50 base times): forgotten.
        let mut paces = paces_busy_at(start);
        let later = start + 120 * MS + 1001 * MS;
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), later), 20 * MS);
        paces.changed(&ObjectKey::deployment("a"), later);
        assert_eq!(paces.quiet(&ObjectKey::deployment("a"), later), 20 * MS);
        // And the objects that stopped changing are swept away.
        for i in 0..100 {
            paces.changed(&ObjectKey::deployment(&format!("o{i}")), later);
        }
        assert_eq!(paces.remembered(), 101);
        paces.changed(&ObjectKey::deployment("a"), later + 1001 * MS);
        assert_eq!(paces.remembered(), 1);
    }

    /// Changes 30 ms apart from `start` to 120 ms.
    fn paces_busy_at(start: Instant) -> Paces {
        let mut paces = paces();
        for i in 0..5 {
            paces.changed(&ObjectKey::deployment("a"), start + 30 * MS * i);
        }
        paces
    }

    #[test]
    fn nothing_is_learned_without_room_to_wait_longer() {
        for times in [
            SettleTimes::fixed(20 * MS),
            SettleTimes::fixed(Duration::ZERO),
        ] {
            let mut paces = Paces::new(times);
            let start = Instant::now();
            for i in 0..10 {
                paces.changed(&ObjectKey::deployment("a"), start + MS * i);
            }
            assert_eq!(
                paces.quiet(&ObjectKey::deployment("a"), start + 9 * MS),
                times.base
            );
            assert_eq!(paces.remembered(), 0);
        }
    }
}
