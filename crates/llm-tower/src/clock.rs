//! Injectable time.
//!
//! Layers read time through a [`Clock`]. The default, [`TokioClock`],
//! follows tokio's clock, so tests pause it (`tokio::time::pause`) and move
//! it (`tokio::time::advance`) instead of sleeping. Its wall clock moves
//! with it: a budget with a UTC-day window can be driven across midnight in
//! a test that takes microseconds.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use llm_tower::clock::{Clock, TokioClock, utc_day};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // 2026-11-22T23:30:00Z
//! let clock = TokioClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_390_200));
//! let today = utc_day(clock.wall());
//! tokio::time::advance(Duration::from_secs(45 * 60)).await;
//! assert_eq!(utc_day(clock.wall()), today + 1);
//! # }
//! ```

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A source of time: a monotonic instant for intervals and deadlines, and
/// a wall clock for calendar windows.
pub trait Clock: Clone + Send + Sync + 'static {
    /// The current monotonic instant.
    fn now(&self) -> Instant;

    /// The current wall-clock time.
    fn wall(&self) -> SystemTime;
}

/// The clock of the tokio runtime: paused and advanced with it in tests.
///
/// The wall clock is the wall time at construction plus the tokio time
/// elapsed since, so it moves exactly as tokio's clock does.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Instant,
    wall_origin: SystemTime,
}

impl TokioClock {
    /// A clock whose wall time starts at the system's.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose wall time starts at `wall` (for tests).
    pub fn starting_at(wall: SystemTime) -> Self {
        TokioClock {
            origin: Instant::now(),
            wall_origin: wall,
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        self.wall_origin + self.origin.elapsed()
    }
}

const DAY: u64 = 24 * 3600;

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The UTC day of `t`: days since 1970-01-01 (zero before it).
pub fn utc_day(t: SystemTime) -> u64 {
    since_epoch(t).as_secs() / DAY
}

/// The UTC hour of `t`: hours since 1970-01-01T00:00Z (zero before it).
pub fn utc_hour(t: SystemTime) -> u64 {
    since_epoch(t).as_secs() / 3600
}

/// Time from `t` until the next UTC midnight.
pub fn until_next_utc_day(t: SystemTime) -> Duration {
    until_next(t, DAY)
}

/// Time from `t` until the next full UTC hour.
pub fn until_next_utc_hour(t: SystemTime) -> Duration {
    until_next(t, 3600)
}

fn until_next(t: SystemTime, period_secs: u64) -> Duration {
    let since = since_epoch(t);
    let into = Duration::new(since.as_secs() % period_secs, since.subsec_nanos());
    Duration::from_secs(period_secs) - into
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = TokioClock::starting_at(at("2026-11-22T23:30:00Z"));
        let (t0, w0) = (clock.now(), clock.wall());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        assert_eq!(
            clock.wall().duration_since(w0).unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crosses_day_boundaries() {
        let clock = TokioClock::starting_at(at("2026-11-22T23:30:00Z"));
        let day = utc_day(clock.wall());
        assert_eq!(
            until_next_utc_day(clock.wall()),
            Duration::from_secs(30 * 60)
        );
        tokio::time::advance(Duration::from_secs(25 * 3600)).await;
        // 2026-11-24T00:30Z: two midnights later.
        assert_eq!(utc_day(clock.wall()), day + 2);
        assert_eq!(
            until_next_utc_hour(clock.wall()),
            Duration::from_secs(30 * 60)
        );
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(utc_day(at("1970-01-02T00:00:00Z")), 1);
        assert_eq!(utc_day(at("2026-11-22T12:00:00Z")), 20_779);
        assert_eq!(utc_hour(at("1970-01-01T05:59:59Z")), 5);
        assert_eq!(
            until_next_utc_day(at("2026-11-22T00:00:00Z")),
            Duration::from_secs(DAY)
        );
        assert_eq!(
            until_next_utc_hour(at("2026-11-22T10:59:59.250Z")),
            Duration::from_millis(750)
        );
        assert_eq!(utc_day(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
