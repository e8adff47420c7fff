use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// Nano-dollars in one US dollar.
pub(crate) const NANOS_PER_USD: u64 = 1_000_000_000;

/// An amount of money in US dollars, held as whole nano-dollars
/// (10⁻⁹ USD).
///
/// Integers keep sums exact: adding up a million calls gives the same total
/// in any order, with no float drift. Arithmetic saturates at
/// `u64::MAX` nano-dollars (about 18.4 billion dollars) rather than
/// wrapping or panicking.
///
/// `Display` shows dollars with at least two decimals and as many more as
/// needed, up to nine:
///
/// ```
/// use llm_tower::pricing::Cost;
///
/// assert_eq!(Cost::from_nanos(12_500_000_000).to_string(), "$12.50");
/// assert_eq!(Cost::from_nanos(1_234_000).to_string(), "$0.001234");
/// assert_eq!(Cost::from_nanos(1).to_string(), "$0.000000001");
/// assert_eq!(Cost::ZERO.to_string(), "$0.00");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost(u64);

impl Cost {
    /// Nothing.
    pub const ZERO: Cost = Cost(0);

    /// The largest representable cost; sums saturate here.
    pub const MAX: Cost = Cost(u64::MAX);

    /// A cost of `nanos` nano-dollars (10⁻⁹ USD).
    pub const fn from_nanos(nanos: u64) -> Self {
        Cost(nanos)
    }

    /// This cost in nano-dollars (10⁻⁹ USD).
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// This cost in US dollars, for display and metrics; sums should be
    /// kept as [`Cost`], not as floats.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    /// The sum, or [`Cost::MAX`] on overflow.
    pub const fn saturating_add(self, other: Cost) -> Cost {
        Cost(self.0.saturating_add(other.0))
    }
}

impl Add for Cost {
    type Output = Cost;

    fn add(self, other: Cost) -> Cost {
        self.saturating_add(other)
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        *self = self.saturating_add(other);
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::ZERO, Cost::saturating_add)
    }
}

impl<'a> Sum<&'a Cost> for Cost {
    fn sum<I: Iterator<Item = &'a Cost>>(iter: I) -> Cost {
        iter.copied().sum()
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dollars = self.0 / NANOS_PER_USD;
        let mut frac = self.0 % NANOS_PER_USD;
        let mut digits = 9;
        while digits > 2 && frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        if f.width().is_none() {
            write!(f, "${dollars}.{frac:0digits$}")
        } else {
            // Only padded output (tables) pays for the allocation.
            f.pad(&format!("${dollars}.{frac:0digits$}"))
        }
    }
}
