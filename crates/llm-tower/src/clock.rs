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
//! The calendar helpers turn a wall-clock time into window numbers, to build
//! keys such as `tenant-a:day:20414`, into the time left in the window, to
//! expire the state kept for it, and window numbers back into their start:
//!
//! | window | number | time left | start |
//! |---|---|---|---|
//! | hour | [`utc_hour`] | [`until_next_utc_hour`] | |
//! | day | [`utc_day`] (0 = 1970-01-01) | [`until_next_utc_day`] | [`utc_day_start`] |
//! | week, from Monday 00:00 | [`utc_week`] (0 = the week of 1969-12-29) | [`until_next_utc_week`] | [`utc_week_start`] |
//! | month | [`utc_month`] (0 = January 1970) | [`until_next_utc_month`] | [`utc_month_start`] |
//!
//! Every window is UTC and numbered from the Unix epoch; times before the
//! epoch count as the epoch. Month lengths and leap years come from the
//! [`time`] crate's civil calendar (proleptic Gregorian: 2028 is a leap year,
//! 2100 is not).
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
//! A monthly budget, with its window's start for reports:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use llm_tower::clock::{until_next_utc_month, utc_month, utc_month_start};
//!
//! // 2025-11-21T23:30:00Z: month 670 (November 2025), 9 days 30 minutes left.
//! let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_767_800);
//! assert_eq!(utc_month(t), 670);
//! assert_eq!(until_next_utc_month(t), Duration::from_secs(9 * 86_400 + 30 * 60));
//! // 2025-11-01T00:00:00Z
//! assert_eq!(utc_month_start(670), SystemTime::UNIX_EPOCH + Duration::from_secs(1_761_955_200));
//! let key = format!("org-1:month:{}", utc_month(t));
//! # assert_eq!(key, "org-1:month:670");
//! ```
//!
//! [advance]: https://docs.rs/tokio/latest/tokio/time/fn.advance.html

use std::time::{Duration, SystemTime};

use time::{Date, Month, OffsetDateTime};
use tokio::time::Instant;

const NANOS_PER_HOUR: u128 = 3_600 * 1_000_000_000;
const NANOS_PER_DAY: u128 = 24 * NANOS_PER_HOUR;
const SECS_PER_DAY: u64 = 86_400;
/// 1970-01-01 was a Thursday: the Monday that starts week 0, 1969-12-29, is
/// three days before the epoch.
const WEEK_0_OFFSET_DAYS: u64 = 3;
/// The Julian day of 1970-01-01.
const EPOCH_JULIAN_DAY: i32 = OffsetDateTime::UNIX_EPOCH.to_julian_day();
/// The first month past the [`time`] crate's calendar (January 10000),
/// where the month helpers saturate.
const MONTH_LIMIT: u64 = (10_000 - 1_970) * 12;

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

/// The UTC week of `t`: whole weeks since the Monday before the Unix epoch.
///
/// Weeks start on Monday at 00:00 UTC (ISO 8601). 1970-01-01 was a
/// Thursday, so week 0 starts on Monday 1969-12-29, and week 1 on Monday
/// 1970-01-05. Times before the epoch count as the epoch: they map to week 0.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use llm_tower::clock::{utc_week, utc_week_start};
///
/// let sunday_night = SystemTime::UNIX_EPOCH + Duration::from_secs(4 * 86_400 - 1);
/// assert_eq!(utc_week(sunday_night), 0);
/// assert_eq!(utc_week(sunday_night + Duration::from_secs(1)), 1);
/// assert_eq!(utc_week_start(1), SystemTime::UNIX_EPOCH + Duration::from_secs(4 * 86_400));
/// ```
pub fn utc_week(t: SystemTime) -> u64 {
    (utc_day(t) + WEEK_0_OFFSET_DAYS) / 7
}

/// The UTC month of `t`: whole calendar months since January 1970 (month
/// 0); `12 · (year − 1970) + month − 1`.
///
/// Times before the epoch map to month 0; times from the year 10000 on
/// (past the calendar of the [`time`] crate) map to January 10000.
pub fn utc_month(t: SystemTime) -> u64 {
    let Some(date) = i32::try_from(utc_day(t))
        .ok()
        .and_then(|days| days.checked_add(EPOCH_JULIAN_DAY))
        .and_then(|jd| Date::from_julian_day(jd).ok())
    else {
        return MONTH_LIMIT;
    };
    // `date` is between 1970 and 9999.
    let years = u64::from(date.year().unsigned_abs()) - 1_970;
    years * 12 + u64::from(u8::from(date.month())) - 1
}

/// The time from `t` to the next Monday 00:00 UTC (a full week at that
/// time exactly).
pub fn until_next_utc_week(t: SystemTime) -> Duration {
    until_start(t, utc_week_start(utc_week(t) + 1))
}

/// The time from `t` to the first of the next month, 00:00 UTC (the whole
/// month at that time exactly).
///
/// From the year 10000 on, where [`utc_month`] saturates, zero.
pub fn until_next_utc_month(t: SystemTime) -> Duration {
    until_start(t, utc_month_start(utc_month(t).saturating_add(1)))
}

/// When the UTC day `day` ([`utc_day`]) starts: midnight UTC.
///
/// # Panics
///
/// If the day is too far in the future for [`SystemTime`] (billions of
/// years on 64-bit Unix), as adding a [`Duration`] to it would.
pub fn utc_day_start(day: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(day.saturating_mul(SECS_PER_DAY))
}

/// When the UTC week `week` ([`utc_week`]) starts: Monday 00:00 UTC. Week 0
/// starts on 1969-12-29, three days before the epoch.
///
/// # Panics
///
/// If the week is too far in the future for [`SystemTime`] (billions of
/// years on 64-bit Unix), as adding a [`Duration`] to it would.
pub fn utc_week_start(week: u64) -> SystemTime {
    let days = Duration::from_secs(week.saturating_mul(7 * SECS_PER_DAY));
    SystemTime::UNIX_EPOCH + days - Duration::from_secs(WEEK_0_OFFSET_DAYS * SECS_PER_DAY)
}

/// When the UTC month `month` ([`utc_month`]) starts: the first of the
/// month, 00:00 UTC. Months from January 10000 on saturate at January
/// 10000.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use llm_tower::clock::utc_month_start;
///
/// // January 1970, then February 1970.
/// assert_eq!(utc_month_start(0), SystemTime::UNIX_EPOCH);
/// assert_eq!(utc_month_start(1), SystemTime::UNIX_EPOCH + Duration::from_secs(31 * 86_400));
/// ```
pub fn utc_month_start(month: u64) -> SystemTime {
    let julian_day = if month >= MONTH_LIMIT {
        // The day after the calendar's last day: 10000-01-01.
        Date::MAX.to_julian_day() + 1
    } else {
        // Below `MONTH_LIMIT`, the year is at most 9999 and fits.
        let year = 1_970 + (month / 12) as i32;
        let first = Month::try_from((month % 12) as u8 + 1)
            .and_then(|m| Date::from_calendar_date(year, m, 1))
            .unwrap_or(Date::MAX);
        first.to_julian_day()
    };
    // From 1970 on, the Julian day is at least the epoch's.
    utc_day_start(julian_day.abs_diff(EPOCH_JULIAN_DAY).into())
}

/// The time from `t` (the epoch if before it) to `next`; zero if `next` is
/// not later.
fn until_start(t: SystemTime, next: SystemTime) -> Duration {
    next.duration_since(t.max(SystemTime::UNIX_EPOCH))
        .unwrap_or_default()
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

    const DAY: Duration = Duration::from_secs(86_400);
    const SEC: Duration = Duration::from_secs(1);
    const NS: Duration = Duration::from_nanos(1);

    /// `year-month-day` at 00:00 UTC, from the `time` crate's calendar.
    fn date(year: i32, month: u8, day: u8) -> SystemTime {
        let d = Date::from_calendar_date(year, Month::try_from(month).unwrap(), day).unwrap();
        let days = d.to_julian_day() - EPOCH_JULIAN_DAY;
        SystemTime::UNIX_EPOCH + DAY * u32::try_from(days).unwrap()
    }

    /// The month number of `year-month`.
    fn month_no(year: u64, month: u64) -> u64 {
        (year - 1_970) * 12 + month - 1
    }

    #[test]
    fn month_ends() {
        // 2025-01-31 23:59:59 → 2025-02-01.
        let t = date(2025, 2, 1) - SEC;
        assert_eq!(utc_month(t), month_no(2025, 1));
        assert_eq!(until_next_utc_month(t), SEC);
        assert_eq!(utc_month(t + SEC), month_no(2025, 2));
        assert_eq!(until_next_utc_month(t + SEC), 28 * DAY);
        assert_eq!(utc_month_start(month_no(2025, 2)), t + SEC);

        // 2025-12-31 23:59:59 → 2026-01-01.
        let t = date(2026, 1, 1) - SEC;
        assert_eq!(utc_month(t), month_no(2025, 12));
        assert_eq!(utc_month(t + SEC), month_no(2026, 1));
        assert_eq!(until_next_utc_month(t), SEC);
        assert_eq!(utc_month_start(month_no(2026, 1)), date(2026, 1, 1));
        assert_eq!(utc_month_start(month_no(2025, 12)), date(2025, 12, 1));

        // The first months, and before the epoch.
        assert_eq!(utc_month(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(utc_month_start(0), SystemTime::UNIX_EPOCH);
        assert_eq!(utc_month(date(1970, 2, 1) - NS), 0);
        assert_eq!(utc_month(date(1970, 2, 1)), 1);
        assert_eq!(utc_month(SystemTime::UNIX_EPOCH - HOUR), 0);
        assert_eq!(
            until_next_utc_month(SystemTime::UNIX_EPOCH - HOUR),
            31 * DAY
        );
    }

    #[test]
    fn leap_years() {
        // 2028-02-29 23:59:59 → March.
        let t = date(2028, 3, 1) - SEC;
        assert_eq!(utc_month(t), month_no(2028, 2));
        assert_eq!(utc_month(t + SEC), month_no(2028, 3));
        assert_eq!(until_next_utc_month(t), SEC);
        let feb = |y| {
            let m = month_no(y, 2);
            utc_month_start(m + 1)
                .duration_since(utc_month_start(m))
                .unwrap()
        };
        assert_eq!(feb(2028), 29 * DAY);
        assert_eq!(feb(2000), 29 * DAY, "divisible by 400");
        assert_eq!(feb(2100), 28 * DAY, "divisible by 100, not 400");
        assert_eq!(feb(2027), 28 * DAY);
        // 2100-02-28 23:59:59 → March 1st, no 29th.
        let t = date(2100, 3, 1) - SEC;
        assert_eq!(utc_month(t), month_no(2100, 2));
        assert_eq!(utc_month(t + SEC), month_no(2100, 3));
    }

    #[test]
    fn months_agree_with_the_calendar() {
        // Every 181 hours (7 days and 13 hours, to visit every time of day)
        // from 1970 to 2200: the month's start is the first of a month, at
        // most `t`, and the next month starts after `t`.
        let mut t = SystemTime::UNIX_EPOCH;
        while t < date(2200, 1, 1) {
            let m = utc_month(t);
            let start = utc_month_start(m);
            let next = utc_month_start(m + 1);
            assert!(start <= t && t < next, "{t:?} in month {m}");
            assert_eq!(next.duration_since(t).unwrap(), until_next_utc_month(t));
            let days = utc_day(start) as i32;
            let first = Date::from_julian_day(EPOCH_JULIAN_DAY + days).unwrap();
            assert_eq!(first.day(), 1);
            assert_eq!(
                month_no(first.year() as u64, u64::from(u8::from(first.month()))),
                m
            );
            t += 181 * HOUR;
        }
        // Past the calendar, the helpers saturate without panicking.
        let far = date(9999, 12, 31) + DAY;
        assert_eq!(utc_month(far), MONTH_LIMIT);
        assert_eq!(utc_month(far - NS), MONTH_LIMIT - 1);
        assert_eq!(utc_month_start(MONTH_LIMIT), far);
        assert_eq!(utc_month_start(u64::MAX), far);
        assert_eq!(until_next_utc_month(far), Duration::ZERO);
        assert_eq!(until_next_utc_month(far - SEC), SEC);
    }

    #[test]
    fn week_boundaries() {
        // 2025-11-23 was a Sunday: 23:59:59 → Monday 2025-11-24.
        let monday = date(2025, 11, 24);
        let t = monday - SEC;
        assert_eq!(utc_week(t) + 1, utc_week(monday));
        assert_eq!(until_next_utc_week(t), SEC);
        assert_eq!(until_next_utc_week(monday), 7 * DAY);
        assert_eq!(utc_week_start(utc_week(monday)), monday);
        assert_eq!(utc_week_start(utc_week(t)), monday - 7 * DAY);
        assert_eq!(utc_day_start(utc_day(t)), date(2025, 11, 23));

        // Week 0 starts on Monday 1969-12-29; week 1 on 1970-01-05.
        assert_eq!(utc_week_start(0), date(1970, 1, 5) - 7 * DAY);
        assert_eq!(utc_week(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(utc_week(date(1970, 1, 5) - NS), 0);
        assert_eq!(utc_week(date(1970, 1, 5)), 1);
        assert_eq!(until_next_utc_week(SystemTime::UNIX_EPOCH), 4 * DAY);
        assert_eq!(utc_week(SystemTime::UNIX_EPOCH - 10 * DAY), 0);

        // Every week starts on a Monday, and holds its times.
        for week in (0..20_000).step_by(7) {
            let start = utc_week_start(week);
            let days = utc_day(start) as i32;
            let d = Date::from_julian_day(EPOCH_JULIAN_DAY + days).unwrap();
            if week > 0 {
                assert_eq!(d.weekday(), time::Weekday::Monday, "week {week}");
            }
            assert_eq!(utc_week(start + 7 * DAY - NS), week);
            assert_eq!(utc_week(start + 7 * DAY), week + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_rolls_over_weeks_and_months() {
        // Sunday 2028-02-27 23:30: a week and, two days later, a month end
        // (2028-02-29, a leap day).
        let start = date(2028, 2, 28) - Duration::from_secs(30 * 60);
        let clock = TokioClock::starting_at(start);
        let (week, month) = (utc_week(clock.wall()), utc_month(clock.wall()));
        assert_eq!(month, month_no(2028, 2));
        assert_eq!(
            until_next_utc_week(clock.wall()),
            Duration::from_secs(30 * 60)
        );

        tokio::time::advance(Duration::from_secs(30 * 60)).await;
        assert_eq!(utc_week(clock.wall()), week + 1, "Monday");
        assert_eq!(until_next_utc_week(clock.wall()), 7 * DAY);
        assert_eq!(utc_month(clock.wall()), month);
        assert_eq!(until_next_utc_month(clock.wall()), 2 * DAY);

        tokio::time::advance(2 * DAY - SEC).await;
        // 2028-02-29 23:59:59.
        assert_eq!(utc_month(clock.wall()), month);
        tokio::time::advance(SEC).await;
        assert_eq!(utc_month(clock.wall()), month + 1, "March");
        assert_eq!(clock.wall(), utc_month_start(month + 1));
        assert_eq!(until_next_utc_month(clock.wall()), 31 * DAY);
        assert_eq!(utc_week(clock.wall()), week + 1);
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
