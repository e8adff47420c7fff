//! Deterministic answers: the same seed and request give the same words.

use std::hash::{Hash, Hasher};

use rand::{Rng, SeedableRng, rngs::StdRng};

const WORDS: &[&str] = &[
    "the",
    "provider",
    "answered",
    "with",
    "a",
    "steady",
    "stream",
    "of",
    "tokens",
    "while",
    "retries",
    "waited",
    "for",
    "their",
    "turn",
    "and",
    "every",
    "deadline",
    "held",
    "breaker",
    "stayed",
    "closed",
    "budget",
    "was",
    "settled",
    "to",
    "exact",
    "usage",
    "so",
    "nothing",
    "overspent",
    "latency",
    "remained",
    "low",
    "under",
    "load",
    "quota",
    "recovered",
    "after",
    "minute",
    "model",
    "replied",
    "clearly",
    "each",
    "request",
    "came",
    "back",
    "whole",
];

/// The fewest and most tokens an answer has before any output cap.
const MIN_TOKENS: u32 = 8;
pub(crate) const MAX_TOKENS: u32 = 40;

/// A generated answer: its pieces (one token each) and how it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) tokens: Vec<String>,
    /// True when the output cap cut the answer (`finish_reason: length`).
    pub(crate) truncated: bool,
    pub(crate) input_tokens: u32,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        self.tokens.concat()
    }

    pub(crate) fn output_tokens(&self) -> u32 {
        self.tokens.len() as u32
    }
}

/// A stable 64-bit fingerprint of anything hashable.
pub(crate) fn fingerprint(parts: impl Hash) -> u64 {
    // `DefaultHasher::new` has fixed keys: stable for a given build and
    // independent of the process, which is what reproducibility needs.
    let mut h = std::hash::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// A random generator for one decision about one attempt.
pub(crate) fn rng(seed: u64, fingerprint: u64, attempt: u32, salt: u64) -> StdRng {
    StdRng::seed_from_u64(self::fingerprint((seed, fingerprint, attempt, salt)))
}

/// Writes the answer to a request: its length is drawn from the seed and the
/// request fingerprint, then cut to `max_tokens`.
pub(crate) fn answer(
    seed: u64,
    fingerprint: u64,
    input_tokens: u32,
    max_tokens: Option<u32>,
) -> Answer {
    let mut rng = rng(seed, fingerprint, 0, 0xa115);
    let wanted = rng.random_range(MIN_TOKENS..=MAX_TOKENS);
    let n = max_tokens.map_or(wanted, |cap| wanted.min(cap));
    let tokens = (0..n)
        .map(|i| {
            let w = WORDS[rng.random_range(0..WORDS.len())];
            if i == 0 {
                let mut first = w.to_owned();
                first[..1].make_ascii_uppercase();
                first
            } else if i + 1 == wanted {
                format!(" {w}.")
            } else {
                format!(" {w}")
            }
        })
        .collect();
    Answer {
        tokens,
        truncated: n < wanted,
        input_tokens,
    }
}

/// A lowercase hex id of `len` characters drawn from `n`.
pub(crate) fn hex_id(n: u64, len: usize) -> String {
    let mut s = format!("{:016x}{:016x}", n, fingerprint(n));
    s.truncate(len);
    s
}

/// An alphanumeric id of `len` characters drawn from `n`, as Anthropic's
/// `msg_01…` and `req_01…` ids are written.
pub(crate) fn base62_id(n: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = StdRng::seed_from_u64(n);
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_answer_and_caps_hold() {
        let a = answer(7, 42, 10, None);
        assert_eq!(a, answer(7, 42, 10, None));
        assert!((MIN_TOKENS..=MAX_TOKENS).contains(&a.output_tokens()));
        assert!(!a.truncated);
        assert!(a.text().ends_with('.'));
        let capped = answer(7, 42, 10, Some(3));
        assert_eq!(capped.output_tokens(), 3);
        assert!(capped.truncated);
        assert_eq!(capped.tokens[..], a.tokens[..3]);
        assert_ne!(
            answer(8, 42, 10, None),
            a,
            "another seed writes another answer"
        );
    }
}
