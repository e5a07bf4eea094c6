//! Downstream Events on their way up (issue 18): read from the cluster
//! ([`read`]), folded into series the way client-go's events recorder folds
//! them, rate-limited per object and per cluster, and held in a lane of
//! their own with a bound ([`lane`]), so that a burst of events can neither
//! delay status nor grow without limit.
//!
//! An [`Observed`] event is one downstream `events.k8s.io/v1` Event as the
//! agent read it, its `regarding` and `related` objects already in upstream
//! coordinates. Events with the same [`SeriesKey`] (client-go's
//! "isomorphic" key: regarding, related, type, reason, action, reporting
//! controller and instance; not the note) are one series upstream, whose
//! count is the number of occurrences of every downstream Event in it: a
//! downstream Event that is itself a series (`series.count`, or
//! `deprecatedCount`) adds its count, and a later version of it adds only
//! what its count grew by.
//!
//! What goes up is a [`SeriesReport`]: the series' whole state (count,
//! first and last observation, latest note), so the hub writes it as it is
//! and a report that was coalesced or rate-limited loses nothing but
//! intermediate counts.
//!
//! Bounds, each counted ([`Dropped`]): at most [`EventSettings::max_series`]
//! series are tracked (a new one past it is dropped), at most
//! [`EventSettings::max_pending`] series wait to be sent (the oldest waiting
//! report is dropped for a new one), and at most
//! [`EventSettings::max_tracked_events`] downstream Events are remembered
//! for their counts (the oldest forgotten first). Series not observed for
//! [`EventSettings::series_ttl`] are forgotten, as client-go forgets a
//! series after six minutes.
//!
//! Not wired yet: the watch of `events.k8s.io/v1`, the frame that carries
//! reports and the hub's writes come next.

pub mod lane;
pub mod read;

pub use lane::{Dropped, EventLane, EventSettings, Observed, SeriesKey, SeriesReport};
pub use read::{EventError, Regarding, read};
