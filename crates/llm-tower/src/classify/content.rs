use std::fmt;

/// What was wrong with an answer that arrived whole but cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentProblem {
    /// The answer is empty.
    Empty,
    /// JSON was asked for and the answer is not valid JSON.
    MalformedJson,
    /// The answer was cut by the output-token cap (`finish_reason:
    /// length`, `stop_reason: max_tokens`).
    Truncated,
    /// The model refused to answer.
    Refusal,
}

impl ContentProblem {
    /// A short stable name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ContentProblem::Empty => "empty",
            ContentProblem::MalformedJson => "malformed_json",
            ContentProblem::Truncated => "truncated",
            ContentProblem::Refusal => "refusal",
        }
    }
}

/// An answer failed content validation: the call succeeded on the wire,
/// but what came back is unusable. Classified as
/// [`FailureClass::InvalidContent`](super::FailureClass::InvalidContent):
/// worth another attempt or another model, and no sign of an unhealthy
/// provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidContent {
    problem: ContentProblem,
}

impl InvalidContent {
    /// An invalid-content error for `problem`.
    pub fn new(problem: ContentProblem) -> Self {
        InvalidContent { problem }
    }

    /// What was wrong.
    pub fn problem(&self) -> ContentProblem {
        self.problem
    }
}

impl fmt::Display for InvalidContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.problem {
            ContentProblem::Empty => "the answer is empty",
            ContentProblem::MalformedJson => "the answer is not the JSON that was asked for",
            ContentProblem::Truncated => "the answer was cut by the output-token cap",
            ContentProblem::Refusal => "the model refused to answer",
        };
        write!(f, "invalid content: {what}")
    }
}

impl std::error::Error for InvalidContent {}
