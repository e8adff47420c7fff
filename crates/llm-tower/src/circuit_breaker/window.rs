//! The sliding windows of a breaker, in atomics: recording a call takes no
//! lock.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Calls, failures and slow calls in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// The last `n` calls: two bits per call (failed, slow) in a ring of words.
///
/// Recording claims a slot with one `fetch_add`, then clears and sets its
/// bits. A count read at the same moment may miss the call being written:
/// the rate is exact to within the calls in flight.
#[derive(Debug)]
pub(crate) struct CallRing {
    size: u64,
    next: AtomicU64,
    words: Box<[AtomicU64]>,
}

const SLOTS_PER_WORD: u64 = 32;

impl CallRing {
    pub(crate) fn new(size: u32) -> Self {
        let words = u64::from(size).div_ceil(SLOTS_PER_WORD) as usize;
        CallRing {
            size: u64::from(size),
            next: AtomicU64::new(0),
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, failed: bool, slow: bool) {
        let slot = self.next.fetch_add(1, Relaxed) % self.size;
        let word = &self.words[(slot / SLOTS_PER_WORD) as usize];
        let shift = (slot % SLOTS_PER_WORD) * 2;
        let bits = (u64::from(failed) | (u64::from(slow) << 1)) << shift;
        let mask = 0b11 << shift;
        // Skip the writes when the slot already holds these bits: the common
        // case of a healthy provider is then one `fetch_add` and one load.
        if word.load(Relaxed) & mask != bits {
            word.fetch_and(!mask, Relaxed);
            word.fetch_or(bits, Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let recorded = self.next.load(Relaxed).min(self.size) as u32;
        let (mut failures, mut slow) = (0, 0);
        for w in self.words.iter() {
            let v = w.load(Relaxed);
            failures += (v & 0x5555_5555_5555_5555).count_ones();
            slow += (v & 0xAAAA_AAAA_AAAA_AAAA).count_ones();
        }
        Counts {
            calls: recorded,
            failures,
            slow,
        }
    }

    pub(crate) fn reset(&self) {
        for w in self.words.iter() {
            w.store(0, Relaxed);
        }
        self.next.store(0, Relaxed);
    }
}

/// The calls of the last `duration`, in ten buckets of a tenth each.
#[derive(Debug)]
pub(crate) struct TimeRing {
    bucket_nanos: u64,
    buckets: Box<[Bucket]>,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which tenth of time (since the breaker's origin) the counts are for.
    epoch: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

const BUCKETS: u64 = 10;

impl TimeRing {
    pub(crate) fn new(duration: Duration) -> Self {
        TimeRing {
            bucket_nanos: (duration.as_nanos() as u64 / BUCKETS).max(1),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }

    fn epoch(&self, now_nanos: u64) -> u64 {
        // Epoch 0 stands for an empty bucket.
        now_nanos / self.bucket_nanos + 1
    }

    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) {
        let epoch = self.epoch(now_nanos);
        let b = &self.buckets[(epoch % BUCKETS) as usize];
        let seen = b.epoch.load(Relaxed);
        if seen != epoch
            && seen < epoch
            && b.epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            // This call opened the bucket for its tenth: forget the old one.
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
        b.calls.fetch_add(1, Relaxed);
        if failed {
            b.failures.fetch_add(1, Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        let epoch = self.epoch(now_nanos);
        let mut c = Counts::default();
        for b in self.buckets.iter() {
            let e = b.epoch.load(Relaxed);
            if e != 0 && e + BUCKETS > epoch && e <= epoch {
                c.calls += b.calls.load(Relaxed);
                c.failures += b.failures.load(Relaxed);
                c.slow += b.slow.load(Relaxed);
            }
        }
        c
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.epoch.store(0, Relaxed);
        }
    }
}

/// Either window.
#[derive(Debug)]
pub(crate) enum Window {
    Calls(CallRing),
    Time(TimeRing),
}

impl Window {
    pub(crate) fn record(&self, now_nanos: u64, failed: bool, slow: bool) {
        match self {
            Window::Calls(r) => r.record(failed, slow),
            Window::Time(r) => r.record(now_nanos, failed, slow),
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> Counts {
        match self {
            Window::Calls(r) => r.counts(),
            Window::Time(r) => r.counts(now_nanos),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Calls(r) => r.reset(),
            Window::Time(r) => r.reset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_ring_forgets_the_oldest() {
        let r = CallRing::new(40);
        for i in 0..40 {
            r.record(i % 4 == 0, i % 10 == 0);
        }
        assert_eq!(
            r.counts(),
            Counts {
                calls: 40,
                failures: 10,
                slow: 4
            }
        );
        for _ in 0..40 {
            r.record(false, false);
        }
        assert_eq!(
            r.counts(),
            Counts {
                calls: 40,
                failures: 0,
                slow: 0
            }
        );
        r.record(true, true);
        assert_eq!(
            r.counts(),
            Counts {
                calls: 40,
                failures: 1,
                slow: 1
            }
        );
        r.reset();
        assert_eq!(r.counts(), Counts::default());
    }

    #[test]
    fn the_time_ring_forgets_what_is_older_than_its_duration() {
        let sec = 1_000_000_000;
        let r = TimeRing::new(Duration::from_secs(10));
        r.record(0, true, false);
        r.record(5 * sec, false, true);
        assert_eq!(
            r.counts(5 * sec),
            Counts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        // At 10.5 s the bucket of second 0 has left the window.
        assert_eq!(
            r.counts(10 * sec + sec / 2),
            Counts {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        // A new call in the bucket that second 0 used starts it afresh.
        r.record(20 * sec, true, false);
        assert_eq!(
            r.counts(20 * sec),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }
}
