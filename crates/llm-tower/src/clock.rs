//! Injectable time.
//!
//! Every layer that measures time reads it through a [`Clock`], never through
//! `std::time` directly, so tests drive it deterministically:
//!
//! - [`Clock::now`] is a monotonic [`tokio::time::Instant`]. Under tokio's
//!   paused time (`#[tokio::test(start_paused = true)]`,
//!   [`tokio::time::advance`][advance]) it moves only when the test moves it.
//! - [`Clock::wall`] is the wall clock, used for calendar windows such as a
//!   budget per UTC day. [`TokioClock`] derives it from the monotonic clock
//!   (a wall-clock origin plus the tokio time elapsed since construction), so
//!   advancing paused time advances the wall clock as well, and
//!   [`TokioClock::starting_at`] pins the origin to any date.
//!
//! The calendar helpers ([`utc_day`], [`utc_hour`], [`until_next_utc_day`],
//! [`until_next_utc_hour`]) turn a wall-clock time into window numbers, to
//! build keys such as `tenant-a:day:20414`, and into the time left in the
//! window, to expire the state kept for it.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use llm_tower::clock::{Clock, TokioClock, utc_day, until_next_utc_day};
//!
//! // 2025-11-21T23:30:00Z
//! let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_767_800);
//! assert_eq!(utc_day(t), 20_413);
//! assert_eq!(until_next_utc_day(t), Duration::from_secs(30 * 60));
//!
//! // A budget key for today, expiring at midnight.
//! let clock = TokioClock::starting_at(t);
//! let now = clock.wall();
//! let key = format!("tenant-a:day:{}", utc_day(now));
//! let ttl = until_next_utc_day(now);
//! # assert!(ttl <= Duration::from_secs(30 * 60));
//! ```
//!
//! [advance]: https://docs.rs/tokio/latest/tokio/time/fn.advance.html

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

const NANOS_PER_HOUR: u128 = 3_600 * 1_000_000_000;
const NANOS_PER_DAY: u128 = 24 * NANOS_PER_HOUR;

/// A source of monotonic and wall-clock time.
///
/// Implementations must be cheap to clone; clones report the same time.
pub trait Clock: Clone + Send + Sync + 'static {
    /// The current monotonic instant.
    fn now(&self) -> Instant;

    /// The current wall-clock time, for calendar windows.
    fn wall(&self) -> SystemTime;
}

/// The default [`Clock`]: tokio's clock, which tests can pause and advance.
///
/// [`wall`](Clock::wall) is the wall-clock time captured at construction plus
/// the tokio time elapsed since then, so it follows paused time. Over a long
/// run it does not track adjustments of the system clock (NTP steps, leap
/// smearing): windows stay consistent with the monotonic clock that measures
/// everything else.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    instant_origin: Instant,
    wall_origin: SystemTime,
}

impl TokioClock {
    /// A clock whose wall time starts at the system's current time.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose wall time is `wall` now, and advances with tokio's clock.
    ///
    /// Meant for tests of calendar windows.
    pub fn starting_at(wall: SystemTime) -> Self {
        Self {
            instant_origin: Instant::now(),
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
        self.wall_origin + Instant::now().saturating_duration_since(self.instant_origin)
    }
}

/// Nanoseconds since the Unix epoch; times before the epoch count as the epoch.
fn epoch_nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The UTC day of `t`: whole days since the Unix epoch (1970-01-01 is day 0).
///
/// Times before the epoch map to day 0.
pub fn utc_day(t: SystemTime) -> u64 {
    (epoch_nanos(t) / NANOS_PER_DAY) as u64
}

/// The UTC hour of `t`: whole hours since the Unix epoch.
///
/// Times before the epoch map to hour 0.
pub fn utc_hour(t: SystemTime) -> u64 {
    (epoch_nanos(t) / NANOS_PER_HOUR) as u64
}

/// The time from `t` to the next UTC midnight (a full day at midnight exactly).
pub fn until_next_utc_day(t: SystemTime) -> Duration {
    until_next(t, NANOS_PER_DAY)
}

/// The time from `t` to the next full UTC hour (a full hour on the hour exactly).
pub fn until_next_utc_hour(t: SystemTime) -> Duration {
    until_next(t, NANOS_PER_HOUR)
}

fn until_next(t: SystemTime, period: u128) -> Duration {
    let left = period - epoch_nanos(t) % period;
    // `left` is at most a day in nanoseconds, far below `u64::MAX`.
    Duration::from_nanos(left as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3_600);

    /// 2025-11-21T00:00:00Z, day 20413.
    fn midnight() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(20_413 * 86_400)
    }

    #[test]
    fn calendar_helpers() {
        let t = midnight();
        assert_eq!(utc_day(t), 20_413);
        assert_eq!(utc_hour(t), 20_413 * 24);
        assert_eq!(until_next_utc_day(t), 24 * HOUR);
        assert_eq!(until_next_utc_hour(t), HOUR);

        let t = midnight() + 23 * HOUR + Duration::from_secs(30 * 60);
        assert_eq!(utc_day(t), 20_413);
        assert_eq!(utc_hour(t), 20_413 * 24 + 23);
        assert_eq!(until_next_utc_day(t), Duration::from_secs(30 * 60));
        assert_eq!(until_next_utc_hour(t), Duration::from_secs(30 * 60));

        let just_before = midnight() - Duration::from_nanos(1);
        assert_eq!(utc_day(just_before), 20_412);
        assert_eq!(until_next_utc_day(just_before), Duration::from_nanos(1));

        let before_epoch = SystemTime::UNIX_EPOCH - HOUR;
        assert_eq!(utc_day(before_epoch), 0);
        assert_eq!(utc_hour(before_epoch), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wall_follows_paused_time() {
        let start = midnight() + 23 * HOUR + Duration::from_secs(30 * 60);
        let clock = TokioClock::starting_at(start);
        let instant = clock.now();
        assert_eq!(clock.wall(), start);
        assert_eq!(utc_day(clock.wall()), 20_413);

        tokio::time::advance(Duration::from_secs(30 * 60)).await;
        assert_eq!(utc_day(clock.wall()), 20_414, "midnight crossed");
        assert_eq!(until_next_utc_day(clock.wall()), 24 * HOUR);

        // 23:30 + 25h = 00:30 two days later: two day boundaries crossed.
        tokio::time::advance(24 * HOUR + Duration::from_secs(30 * 60)).await;
        assert_eq!(utc_day(clock.wall()), 20_415);
        assert_eq!(utc_hour(clock.wall()), 20_415 * 24);
        assert_eq!(
            until_next_utc_hour(clock.wall()),
            Duration::from_secs(30 * 60)
        );
        assert_eq!(clock.now() - instant, 25 * HOUR);
        assert_eq!(clock.wall(), start + 25 * HOUR);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_origin() {
        let clock = TokioClock::starting_at(midnight());
        tokio::time::advance(HOUR).await;
        let clone = clock;
        tokio::time::advance(HOUR).await;
        assert_eq!(clone.wall(), midnight() + 2 * HOUR);
        assert_eq!(clock.wall(), clone.wall());
    }
}
