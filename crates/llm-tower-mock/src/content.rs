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
    /// The tool call that answers in place of text, when the request asked
    /// for one.
    pub(crate) tool: Option<ToolCall>,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        self.tokens.concat()
    }

    pub(crate) fn output_tokens(&self) -> u32 {
        match &self.tool {
            Some(tool) => tool.output_tokens(),
            None => self.tokens.len() as u32,
        }
    }

    /// The answer as a call to `tool`: no text, never cut.
    pub(crate) fn calling(mut self, tool: ToolCall) -> Self {
        self.tokens.clear();
        self.truncated = false;
        self.tool = Some(tool);
        self
    }
}

/// One call to a tool: its name and its arguments, a JSON object written
/// whole and in the fragments a stream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    /// The arguments as a JSON text.
    pub(crate) arguments: String,
    /// `arguments` in three pieces, for the stream.
    pub(crate) fragments: Vec<String>,
}

impl ToolCall {
    /// A call to `name` with the JSON object `arguments`.
    pub(crate) fn new(name: String, arguments: &serde_json::Value) -> Self {
        let arguments = serde_json::to_string(arguments).expect("JSON values serialise");
        let chars: Vec<char> = arguments.chars().collect();
        let (a, b) = (chars.len() / 3, chars.len() * 2 / 3);
        let fragments = [&chars[..a], &chars[a..b], &chars[b..]]
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().collect())
            .collect();
        ToolCall {
            name,
            arguments,
            fragments,
        }
    }

    /// The arguments as a JSON value.
    pub(crate) fn input(&self) -> serde_json::Value {
        serde_json::from_str(&self.arguments).expect("the arguments are JSON")
    }

    /// The output tokens of one fragment: about four characters a token.
    pub(crate) fn fragment_tokens(fragment: &str) -> u32 {
        fragment.chars().count().div_ceil(4).min(u32::MAX as usize) as u32
    }

    /// The output tokens of the whole call: the sum of its fragments'.
    pub(crate) fn output_tokens(&self) -> u32 {
        self.fragments
            .iter()
            .map(|f| Self::fragment_tokens(f))
            .sum()
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
        tool: None,
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

    #[test]
    fn a_tool_call_splits_its_arguments_and_counts_them() {
        let args = serde_json::json!({"query": "what is the weather"});
        let call = ToolCall::new("search".into(), &args);
        assert_eq!(call.fragments.len(), 3);
        assert_eq!(call.fragments.concat(), call.arguments);
        assert_eq!(call.input(), args);
        let a = answer(7, 42, 10, Some(1)).calling(call.clone());
        assert!(!a.truncated);
        assert!(a.text().is_empty());
        assert_eq!(a.output_tokens(), call.output_tokens());
        assert!(a.output_tokens() >= call.arguments.len() as u32 / 4);
    }
}
