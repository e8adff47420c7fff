//! Faults and the rules that decide when they are injected.

use std::{collections::HashMap, fmt, ops::Range, str::FromStr, time::Duration};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{content, wire::Provider};

/// A way for a call to go wrong, written the way the provider would.
///
/// Faults that only make sense while streaming (`stall`, `drop`, `truncate`,
/// `malformed`, `error_event`, `slow_first_token`, `empty_deltas`,
/// `no_done`) fire only for streaming requests; a rule carrying one passes
/// over other requests without spending its count. `empty_deltas` and
/// `no_done` shape OpenAI chat streams only, and pass over other providers'
/// requests the same way.
///
/// Two kinds of fault do not decide the answer alone: `latency` adds to the
/// delay of whatever follows, and the stream shapes (`empty_deltas`,
/// `no_done`) change how a healthy stream is written, as some
/// OpenAI-compatible servers write it. Both let later rules fire as well, so
/// a shape composes with a stream fault (empty deltas, then a slow first
/// token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// `429` rate limit (`rate_limit_exceeded`, `rate_limit_error`,
    /// `RESOURCE_EXHAUSTED`) with `retry-after` (and `retry-after-ms` for
    /// OpenAI) set to `retry_after`.
    RateLimited {
        /// The server-directed delay.
        #[serde(with = "humantime_serde", default = "one_second")]
        retry_after: Duration,
    },
    /// Quota exhausted: OpenAI `429 insufficient_quota`, Anthropic `400`
    /// credit balance too low, Gemini `429 RESOURCE_EXHAUSTED`.
    InsufficientQuota,
    /// `400` context length exceeded (`context_length_exceeded`, Anthropic's
    /// `prompt is too long`, Gemini's `INVALID_ARGUMENT`).
    ContextLength,
    /// Anthropic `529 overloaded_error`; `503` for OpenAI and Gemini.
    Overloaded,
    /// Any status, with that provider's usual error body for it.
    Status {
        /// The HTTP status, 400 to 599.
        status: u16,
    },
    /// Added latency before the response starts, `delay` plus up to
    /// `jitter` drawn from the seed. Unlike every other fault it does not
    /// end rule matching: it adds to the delay of whatever answer follows.
    Latency {
        /// The fixed part of the delay.
        #[serde(with = "humantime_serde")]
        delay: Duration,
        /// The most added at random on top.
        #[serde(with = "humantime_serde", default)]
        jitter: Duration,
    },
    /// A healthy answer whose response headers wait `delay`.
    SlowFirstByte {
        /// Time before the status line is sent.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// A healthy stream whose headers and preamble come at once and whose
    /// first token waits `delay`, as a model that thinks long does.
    ///
    /// The preamble is every event before the first one carrying output:
    /// Anthropic's `message_start`, `content_block_start` and `ping`,
    /// OpenAI's role chunk (and any `empty_deltas`); Gemini has none. With
    /// `keepalive`, the provider's keep-alive is sent every `keepalive` while
    /// the stream waits: Anthropic `event: ping`, an OpenAI chunk whose delta
    /// is `{"content": ""}`, a Gemini SSE comment `: keep-alive`.
    SlowFirstToken {
        /// Time between the preamble and the first token.
        #[serde(with = "humantime_serde")]
        delay: Duration,
        /// The interval of keep-alives sent while waiting; none when absent.
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        keepalive: Option<Duration>,
    },
    /// A stream that pauses for `duration` after `after` tokens, then goes on.
    Stall {
        /// Tokens sent before the pause.
        after: u32,
        /// How long the stream goes quiet.
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// The connection is dropped after `after` tokens (`0`: before the
    /// first event): the body breaks off without its last chunk.
    Drop {
        /// Tokens sent before the drop.
        after: u32,
    },
    /// The stream ends cleanly after `after` tokens, without its terminal
    /// event (`[DONE]`, `message_stop`, the finish reason): a cut answer.
    /// Compare [`NoDone`](Fault::NoDone), a complete one.
    Truncate {
        /// Tokens sent before the end.
        after: u32,
    },
    /// An event whose JSON breaks off, sent after `after` tokens; the
    /// stream then goes on.
    Malformed {
        /// Tokens sent before the broken event.
        after: u32,
    },
    /// The provider's error event inside a `200` stream after `after` tokens
    /// (`0`: as the first event), then the stream ends.
    ErrorEvent {
        /// Tokens sent before the error.
        after: u32,
    },
    /// OpenAI chat streams only: after the role chunk, `count` chunks whose
    /// delta is `{"content": ""}` before the first token, as several
    /// OpenAI-compatible servers send. A stream shape, not a failure: it
    /// composes with the rules after it.
    EmptyDeltas {
        /// Empty chunks sent before the first token.
        #[serde(default = "one")]
        count: u32,
    },
    /// OpenAI chat streams only: the stream ends after its finish chunk and
    /// its usage chunk, without `data: [DONE]`, as some OpenAI-compatible
    /// servers end theirs. A legitimate, complete stream (the finish reason
    /// came), not a cut one as with [`Truncate`](Fault::Truncate). A stream
    /// shape: it composes with the rules after it.
    NoDone,
}

fn one() -> u32 {
    1
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl Fault {
    /// A `429` with the given server-directed delay.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Fault::RateLimited { retry_after }
    }

    /// Any status with the provider's error body for it.
    pub fn status(status: u16) -> Self {
        Fault::Status { status }
    }

    /// A healthy stream whose first token waits `delay`, with no keep-alive.
    pub fn slow_first_token(delay: Duration) -> Self {
        Fault::SlowFirstToken {
            delay,
            keepalive: None,
        }
    }

    /// Whether this fault only applies to streaming requests.
    pub fn streaming_only(&self) -> bool {
        matches!(
            self,
            Fault::SlowFirstToken { .. }
                | Fault::Stall { .. }
                | Fault::Drop { .. }
                | Fault::Truncate { .. }
                | Fault::Malformed { .. }
                | Fault::ErrorEvent { .. }
                | Fault::EmptyDeltas { .. }
                | Fault::NoDone
        )
    }

    /// The only provider whose requests this fault applies to, if it is
    /// specific to one wire format.
    pub fn only_for(&self) -> Option<Provider> {
        match self {
            Fault::EmptyDeltas { .. } | Fault::NoDone => Some(Provider::OpenAi),
            _ => None,
        }
    }

    /// Whether this fault applies to a request of `provider`, streaming or not.
    fn applies_to(&self, provider: Provider, stream: bool) -> bool {
        (stream || !self.streaming_only()) && self.only_for().is_none_or(|p| p == provider)
    }

    /// The fault's name, as written in the journal (`rate_limited`,
    /// `status_503`, `drop` …).
    pub fn name(&self) -> String {
        match self {
            Fault::RateLimited { .. } => "rate_limited".into(),
            Fault::InsufficientQuota => "insufficient_quota".into(),
            Fault::ContextLength => "context_length".into(),
            Fault::Overloaded => "overloaded".into(),
            Fault::Status { status } => format!("status_{status}"),
            Fault::Latency { .. } => "latency".into(),
            Fault::SlowFirstByte { .. } => "slow_first_byte".into(),
            Fault::SlowFirstToken { .. } => "slow_first_token".into(),
            Fault::Stall { .. } => "stall".into(),
            Fault::Drop { .. } => "drop".into(),
            Fault::Truncate { .. } => "truncate".into(),
            Fault::Malformed { .. } => "malformed".into(),
            Fault::ErrorEvent { .. } => "error_event".into(),
            Fault::EmptyDeltas { .. } => "empty_deltas".into(),
            Fault::NoDone => "no_done".into(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Fault::Status { status } if !(400..=599).contains(status) => Err(format!(
                "fault status {status} is not an error status (400 to 599)"
            )),
            Fault::SlowFirstToken {
                keepalive: Some(k), ..
            } if k.is_zero() => Err("slow_first_token keepalive must be longer than 0s".into()),
            _ => Ok(()),
        }
    }
}

/// Which requests a rule applies to; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The model, exactly, or a prefix when it ends with `*` (`gpt-4o*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The wire format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// A substring of the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Streaming requests only (`true`) or non-streaming only (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

impl Match {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        let model_ok = match &self.model {
            None => true,
            Some(m) => match m.strip_suffix('*') {
                Some(prefix) => req.model.starts_with(prefix),
                None => req.model == m,
            },
        };
        model_ok
            && self.provider.is_none_or(|p| p == req.provider)
            && self
                .path
                .as_ref()
                .is_none_or(|p| req.path.contains(p.as_str()))
            && self.stream.is_none_or(|s| s == req.stream)
    }
}

/// A time window, from the server's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// When the window opens.
    #[serde(with = "humantime_serde")]
    pub from: Duration,
    /// When it closes (excluded).
    #[serde(with = "humantime_serde")]
    pub until: Duration,
}

/// When to inject a fault: for which requests, how often and how many times.
///
/// ```
/// use std::time::Duration;
/// use llm_tower_mock::{Fault, Rule};
///
/// // The next two calls to gpt-4o get a 503.
/// let rule = Rule::new(Fault::status(503)).model("gpt-4o").times(2);
/// // One streaming call in ten is cut after five tokens.
/// let cut = Rule::new(Fault::Drop { after: 5 }).probability(0.1);
/// // An outage between 10 s and 20 s after the start.
/// let outage = Rule::outage(Duration::from_secs(10)..Duration::from_secs(20));
/// // The same rules, written as on the command line.
/// assert_eq!("status=503,model=gpt-4o,times=2".parse::<Rule>().unwrap(), rule);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The fault to inject.
    pub fault: Fault,
    /// The requests it applies to.
    #[serde(default, rename = "match", skip_serializing_if = "is_default")]
    pub matcher: Match,
    /// The chance that a matching request gets it, from 0 to 1.
    #[serde(default = "certain")]
    pub probability: f64,
    /// How many requests get it at most; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Only during this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

fn is_default(m: &Match) -> bool {
    *m == Match::default()
}

fn certain() -> f64 {
    1.0
}

impl Rule {
    /// A rule that gives `fault` to every request.
    pub fn new(fault: Fault) -> Self {
        Rule {
            fault,
            matcher: Match::default(),
            probability: 1.0,
            times: None,
            window: None,
        }
    }

    /// The provider is overloaded for every request in `window` (from the
    /// server's start): Anthropic `529`, `503` for the others.
    pub fn outage(window: Range<Duration>) -> Self {
        Rule::new(Fault::Overloaded).during(window)
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Only with this chance (0 to 1), drawn from the seed.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// Only for this model (a trailing `*` matches a prefix).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.matcher.model = Some(model.into());
        self
    }

    /// Only for this wire format.
    pub fn provider(mut self, provider: Provider) -> Self {
        self.matcher.provider = Some(provider);
        self
    }

    /// Only for paths containing `path`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.matcher.path = Some(path.into());
        self
    }

    /// Only for streaming (`true`) or non-streaming (`false`) requests.
    pub fn stream(mut self, stream: bool) -> Self {
        self.matcher.stream = Some(stream);
        self
    }

    /// Only between `window.start` and `window.end` after the server started.
    pub fn during(mut self, window: Range<Duration>) -> Self {
        self.window = Some(Window {
            from: window.start,
            until: window.end,
        });
        self
    }

    /// Checks the rule for values that cannot mean anything.
    pub fn validate(&self) -> Result<(), String> {
        self.fault.validate()?;
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "probability {} is not between 0 and 1",
                self.probability
            ));
        }
        if let Some(w) = self.window
            && w.until <= w.from
        {
            return Err(format!(
                "window {}..{} is empty",
                humantime::format_duration(w.from),
                humantime::format_duration(w.until)
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fault.name())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

fn parse_u32(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a valid {what} (a whole number)"))
}

/// Parses a rule written as `FAULT[=ARG][,KEY=VALUE]...`, as the command line
/// takes it.
///
/// Faults: `rate-limited[=2s]`, `insufficient-quota`, `context-length`,
/// `overloaded`, `status=503`, `latency=200ms[+100ms]`, `slow-first-byte=5s`,
/// `slow-first-token=5s[:1s]` (a keep-alive every second while waiting),
/// `stall=3:10s` (after 3 tokens, for 10 s), `drop=5`, `truncate=5`,
/// `malformed=5`, `error-event[=0]`, `empty-deltas[=1]`, `no-done`,
/// `outage` (overloaded, meant with `during`).
/// Keys: `p` (probability), `times`, `model`, `provider`, `path`, `stream`
/// (`true`/`false`), `during=10s..20s`.
impl FromStr for Rule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = spec.split(',').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let (name, arg) = match head.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (head, None),
        };
        let need = |what: &str| {
            arg.ok_or_else(|| format!("fault `{name}` needs a value: `{name}={what}`"))
        };
        let after = |default: u32| arg.map_or(Ok(default), |a| parse_u32(a, "token count"));
        let fault = match name.replace('_', "-").as_str() {
            "rate-limited" | "rate-limit" | "429" => Fault::RateLimited {
                retry_after: arg.map_or(Ok(one_second()), parse_duration)?,
            },
            "insufficient-quota" => Fault::InsufficientQuota,
            "context-length" => Fault::ContextLength,
            "overloaded" | "outage" => Fault::Overloaded,
            "status" => Fault::Status {
                status: parse_u32(need("503")?, "status")?
                    .try_into()
                    .map_err(|_| "status out of range".to_owned())?,
            },
            "latency" => {
                let a = need("200ms[+100ms]")?;
                let (delay, jitter) = match a.split_once('+') {
                    Some((d, j)) => (parse_duration(d)?, parse_duration(j)?),
                    None => (parse_duration(a)?, Duration::ZERO),
                };
                Fault::Latency { delay, jitter }
            }
            "slow-first-byte" => Fault::SlowFirstByte {
                delay: parse_duration(need("5s")?)?,
            },
            "slow-first-token" => {
                let a = need("5s[:1s]")?;
                let (delay, keepalive) = match a.split_once(':') {
                    Some((d, k)) => (parse_duration(d)?, Some(parse_duration(k)?)),
                    None => (parse_duration(a)?, None),
                };
                Fault::SlowFirstToken { delay, keepalive }
            }
            "stall" => {
                let a = need("TOKENS:DURATION")?;
                let (n, d) = a
                    .split_once(':')
                    .ok_or_else(|| format!("stall takes `TOKENS:DURATION`, not `{a}`"))?;
                Fault::Stall {
                    after: parse_u32(n, "token count")?,
                    duration: parse_duration(d)?,
                }
            }
            "drop" => Fault::Drop { after: after(0)? },
            "truncate" => Fault::Truncate { after: after(0)? },
            "malformed" => Fault::Malformed { after: after(0)? },
            "error-event" => Fault::ErrorEvent { after: after(0)? },
            "empty-deltas" => Fault::EmptyDeltas {
                count: arg.map_or(Ok(1), |a| parse_u32(a, "chunk count"))?,
            },
            "no-done" => Fault::NoDone,
            other => return Err(format!("unknown fault `{other}`")),
        };
        let mut rule = Rule::new(fault);
        for part in parts.filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
            match key.trim() {
                "p" | "probability" => {
                    rule.probability = value
                        .parse()
                        .map_err(|_| format!("`{value}` is not a probability"))?;
                }
                "times" => rule.times = Some(parse_u32(value, "count")?),
                "model" => rule.matcher.model = Some(value.to_owned()),
                "provider" => rule.matcher.provider = Some(value.parse()?),
                "path" => rule.matcher.path = Some(value.to_owned()),
                "stream" => {
                    rule.matcher.stream = Some(
                        value
                            .parse()
                            .map_err(|_| format!("stream is true or false, not `{value}`"))?,
                    );
                }
                "during" => {
                    let (a, b) = value
                        .split_once("..")
                        .ok_or_else(|| format!("during takes `FROM..UNTIL`, not `{value}`"))?;
                    rule = rule.during(parse_duration(a)?..parse_duration(b)?);
                }
                other => return Err(format!("unknown rule key `{other}`")),
            }
        }
        rule.validate()?;
        Ok(rule)
    }
}

/// What the script knows of a request when it decides.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) provider: Provider,
    pub(crate) model: &'a str,
    pub(crate) path: &'a str,
    pub(crate) stream: bool,
    pub(crate) fingerprint: u64,
    /// How many times this fingerprint has been seen, this one included.
    pub(crate) attempt: u32,
    /// Time since the server started.
    pub(crate) elapsed: Duration,
}

/// What the script decided for one request.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub(crate) fault: Option<Fault>,
    /// The sum of every `latency` rule that fired.
    pub(crate) latency: Duration,
    /// How a healthy stream is written (the stream shapes that fired).
    pub(crate) shape: Shape,
    /// Names of the faults that fired, `latency` included.
    pub(crate) names: Vec<String>,
}

/// The stream shapes that fired: how a healthy OpenAI chat stream is written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Empty-content chunks between the role chunk and the first token.
    pub(crate) empty_deltas: u32,
    /// End after the finish and usage chunks, without `[DONE]`.
    pub(crate) no_done: bool,
}

/// The rules in force and what they have spent.
#[derive(Debug, Default)]
pub(crate) struct Script {
    rules: Vec<(Rule, u32)>,
    /// Attempts seen per request fingerprint.
    sightings: HashMap<u64, u32>,
}

impl Script {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        Script {
            rules: rules.into_iter().map(|r| (r, 0)).collect(),
            sightings: HashMap::new(),
        }
    }

    pub(crate) fn push(&mut self, rule: Rule) {
        self.rules.push((rule, 0));
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn rules(&self) -> Vec<Rule> {
        self.rules.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Counts a sighting of `fingerprint` and returns its number (1-based).
    pub(crate) fn sight(&mut self, fingerprint: u64) -> u32 {
        let n = self.sightings.entry(fingerprint).or_default();
        *n += 1;
        *n
    }

    /// Runs `forced` (a fault the request asked for itself), then the rules
    /// in order, until a fault other than `latency` fires. Chance is drawn
    /// from the seed, the request's fingerprint, its attempt number and the
    /// rule's index, so the same requests get the same faults whatever order
    /// concurrent calls arrive in.
    pub(crate) fn decide(
        &mut self,
        seed: u64,
        req: &RequestFacts<'_>,
        forced: Option<&Fault>,
    ) -> Decision {
        let mut decision = Decision::default();
        if let Some(fault) = forced.filter(|f| f.applies_to(req.provider, req.stream)) {
            let mut rng = content::rng(seed, req.fingerprint, req.attempt, 0);
            if decision.add(fault, &mut rng) {
                return decision;
            }
        }
        for (index, (rule, fired)) in self.rules.iter_mut().enumerate() {
            if rule.times.is_some_and(|t| *fired >= t)
                || !rule.fault.applies_to(req.provider, req.stream)
                || rule
                    .window
                    .is_some_and(|w| req.elapsed < w.from || req.elapsed >= w.until)
                || !rule.matcher.matches(req)
            {
                continue;
            }
            let mut rng = content::rng(seed, req.fingerprint, req.attempt, index as u64 + 1);
            if rule.probability < 1.0 && rng.random::<f64>() >= rule.probability {
                continue;
            }
            *fired += 1;
            if decision.add(&rule.fault, &mut rng) {
                break;
            }
        }
        decision
    }
}

impl Decision {
    /// Adds a fault that fired; true when it decides the answer (anything
    /// but `latency`, which only adds to the delay, and the stream shapes).
    fn add(&mut self, fault: &Fault, rng: &mut impl Rng) -> bool {
        self.names.push(fault.name());
        match *fault {
            Fault::Latency { delay, jitter } => {
                let extra = if jitter.is_zero() {
                    Duration::ZERO
                } else {
                    jitter.mul_f64(rng.random::<f64>())
                };
                self.latency += delay + extra;
                false
            }
            Fault::EmptyDeltas { count } => {
                self.shape.empty_deltas += count;
                false
            }
            Fault::NoDone => {
                self.shape.no_done = true;
                false
            }
            _ => {
                self.fault = Some(fault.clone());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Script {
        fn decide_all(&mut self, seed: u64, req: &RequestFacts<'_>) -> Decision {
            self.decide(seed, req, None)
        }
    }

    fn facts(model: &str, stream: bool, attempt: u32, elapsed: Duration) -> RequestFacts<'_> {
        RequestFacts {
            provider: Provider::OpenAi,
            model,
            path: "/v1/chat/completions",
            stream,
            fingerprint: 99,
            attempt,
            elapsed,
        }
    }

    #[test]
    fn specs_parse_into_rules() {
        let r: Rule = "rate-limited=2s,p=0.5,times=3,model=gpt-4o*,provider=openai,stream=true"
            .parse()
            .unwrap();
        assert_eq!(r.fault, Fault::rate_limited(Duration::from_secs(2)));
        assert_eq!(r.probability, 0.5);
        assert_eq!(r.times, Some(3));
        assert_eq!(r.matcher.model.as_deref(), Some("gpt-4o*"));
        assert_eq!(r.matcher.provider, Some(Provider::OpenAi));
        assert_eq!(r.matcher.stream, Some(true));
        let s: Rule = "stall=3:10s".parse().unwrap();
        assert_eq!(
            s.fault,
            Fault::Stall {
                after: 3,
                duration: Duration::from_secs(10)
            }
        );
        let o: Rule = "outage,during=10s..20s".parse().unwrap();
        assert_eq!(
            o,
            Rule::outage(Duration::from_secs(10)..Duration::from_secs(20))
        );
        let l: Rule = "latency=200ms+50ms".parse().unwrap();
        assert_eq!(
            l.fault,
            Fault::Latency {
                delay: Duration::from_millis(200),
                jitter: Duration::from_millis(50)
            }
        );
        assert_eq!(
            "error-event".parse::<Rule>().unwrap().fault,
            Fault::ErrorEvent { after: 0 }
        );
        assert_eq!(
            "slow-first-token=30s:1s".parse::<Rule>().unwrap().fault,
            Fault::SlowFirstToken {
                delay: Duration::from_secs(30),
                keepalive: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            "slow-first-token=5s".parse::<Rule>().unwrap().fault,
            Fault::slow_first_token(Duration::from_secs(5))
        );
        assert_eq!(
            "empty-deltas=3".parse::<Rule>().unwrap().fault,
            Fault::EmptyDeltas { count: 3 }
        );
        assert_eq!(
            "empty_deltas".parse::<Rule>().unwrap().fault,
            Fault::EmptyDeltas { count: 1 }
        );
        assert_eq!("no-done".parse::<Rule>().unwrap().fault, Fault::NoDone);
        let json: Fault = serde_json::from_str(
            r#"{"kind": "slow_first_token", "delay": "30s", "keepalive": "1s"}"#,
        )
        .unwrap();
        assert_eq!(
            json,
            "slow-first-token=30s:1s".parse::<Rule>().unwrap().fault
        );
        let json: Fault =
            serde_json::from_str(r#"{"kind": "slow_first_token", "delay": "30s"}"#).unwrap();
        assert_eq!(json, Fault::slow_first_token(Duration::from_secs(30)));
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"kind":"slow_first_token","delay":"30s"}"#
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("explode", "unknown fault `explode`"),
            ("status=200", "not an error status"),
            ("status", "needs a value"),
            ("drop=x", "not a valid token count"),
            ("status=503,p=2", "not between 0 and 1"),
            ("status=503,during=20s..10s", "is empty"),
            ("status=503,colour=red", "unknown rule key `colour`"),
            ("slow-first-token=soon", "is not a duration"),
            ("slow-first-token=5s:0s", "keepalive must be longer"),
            ("empty-deltas=x", "not a valid chunk count"),
            ("status=503,provider=mistral", "unknown provider"),
        ] {
            let err = spec.parse::<Rule>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn times_window_stream_and_model_gate_rules() {
        let mut script = Script::new(vec![
            Rule::new(Fault::Drop { after: 1 }),
            Rule::outage(Duration::from_secs(10)..Duration::from_secs(20)),
            Rule::new(Fault::status(500)).model("gpt-4o*").times(1),
        ]);
        // A non-streaming call passes over the stream-only rule.
        let d = script.decide_all(1, &facts("gpt-4o-mini", false, 1, Duration::ZERO));
        assert_eq!(d.fault, Some(Fault::status(500)));
        // Spent: the next one is healthy.
        let d = script.decide_all(1, &facts("gpt-4o-mini", false, 2, Duration::ZERO));
        assert_eq!(d.fault, None);
        // Inside the window.
        let d = script.decide_all(1, &facts("gpt-4o-mini", false, 3, Duration::from_secs(10)));
        assert_eq!(d.fault, Some(Fault::Overloaded));
        let d = script.decide_all(1, &facts("gpt-4o-mini", false, 4, Duration::from_secs(20)));
        assert_eq!(d.fault, None);
        // Streaming calls get the drop.
        let d = script.decide_all(1, &facts("o3", true, 5, Duration::ZERO));
        assert_eq!(d.fault, Some(Fault::Drop { after: 1 }));
    }

    #[test]
    fn latency_adds_up_and_lets_later_rules_fire() {
        let mut script = Script::new(vec![
            Rule::new(Fault::Latency {
                delay: Duration::from_millis(100),
                jitter: Duration::ZERO,
            }),
            Rule::new(Fault::Latency {
                delay: Duration::from_millis(50),
                jitter: Duration::from_millis(10),
            }),
            Rule::new(Fault::status(503)),
        ]);
        let d = script.decide_all(1, &facts("m", false, 1, Duration::ZERO));
        assert!(d.latency >= Duration::from_millis(150) && d.latency <= Duration::from_millis(160));
        assert_eq!(d.fault, Some(Fault::status(503)));
        assert_eq!(d.names, ["latency", "latency", "status_503"]);
    }

    #[test]
    fn chance_follows_the_seed_and_the_rate() {
        let run = |seed| {
            let mut script = Script::new(vec![Rule::new(Fault::status(500)).probability(0.3)]);
            (1..=2000)
                .map(|a| {
                    script
                        .decide_all(seed, &facts("m", false, a, Duration::ZERO))
                        .fault
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same faults");
        assert_ne!(a, run(8));
        let hits = a.iter().filter(|f| **f).count();
        assert!((500..700).contains(&hits), "{hits} of 2000 at p=0.3");
    }
}

#[cfg(test)]
mod shapes {
    use super::*;

    fn req(provider: Provider, stream: bool) -> RequestFacts<'static> {
        RequestFacts {
            provider,
            model: "m",
            path: "/",
            stream,
            fingerprint: 5,
            attempt: 1,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn shapes_compose_with_the_fault_after_them() {
        let mut script = Script::new(vec![
            Rule::new(Fault::EmptyDeltas { count: 2 }),
            Rule::new(Fault::NoDone),
            Rule::new(Fault::slow_first_token(Duration::from_secs(3))),
        ]);
        let d = script.decide(1, &req(Provider::OpenAi, true), None);
        assert_eq!(
            d.shape,
            Shape {
                empty_deltas: 2,
                no_done: true
            }
        );
        assert_eq!(
            d.fault,
            Some(Fault::slow_first_token(Duration::from_secs(3)))
        );
        assert_eq!(d.names, ["empty_deltas", "no_done", "slow_first_token"]);
    }

    #[test]
    fn shapes_pass_over_other_providers_and_plain_answers() {
        let mut script = Script::new(vec![Rule::new(Fault::NoDone).times(1)]);
        for r in [req(Provider::Anthropic, true), req(Provider::OpenAi, false)] {
            let d = script.decide(1, &r, None);
            assert_eq!((d.shape, d.names.len()), (Shape::default(), 0));
        }
        let d = script.decide(1, &req(Provider::OpenAi, true), None);
        assert!(d.shape.no_done, "the count was not spent");
    }
}

#[cfg(test)]
mod forced {
    use super::*;

    #[test]
    fn a_forced_fault_wins_and_spends_no_rule() {
        let mut script = Script::new(vec![Rule::new(Fault::status(500)).times(1)]);
        let req = RequestFacts {
            provider: Provider::Anthropic,
            model: "m",
            path: "/v1/messages",
            stream: false,
            fingerprint: 1,
            attempt: 1,
            elapsed: Duration::ZERO,
        };
        let d = script.decide(1, &req, Some(&Fault::Overloaded));
        assert_eq!(d.fault, Some(Fault::Overloaded));
        // A stream fault asked for by a non-streaming call does not apply.
        let d = script.decide(1, &req, Some(&Fault::Drop { after: 1 }));
        assert_eq!(
            d.fault,
            Some(Fault::status(500)),
            "the rule is still unspent"
        );
        assert_eq!(script.decide(1, &req, None).fault, None);
    }
}
