//! The HTTP/1.1 server: accepts connections, decides each answer, journals it.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};

use crate::{
    ConfigError, Entry, Fault, Journal, MockConfig, Rule, admin,
    config::Timing,
    content,
    fault::{RequestFacts, Script, Shape},
    quota::{Cost, Quotas, Refusal},
    wire::{self, Chat, ErrorKind, Event, Provider, Success},
};

/// The body of every answer.
pub(crate) type Body = BoxBody<Bytes, io::Error>;

/// The request header that asks for a fault for this one call, written as a
/// rule spec (`status=503`, `drop=3` …; matchers, chance and counts are
/// ignored).
pub const FAULT_HEADER: &str = "x-mock-fault";

/// The largest request body read; larger ones get a `413`.
const MAX_BODY: usize = 32 << 20;

/// State shared by the server, its connections and its handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) seed: u64,
    timing: Timing,
    api_key: Option<String>,
    context_window: u32,
    pub(crate) state: Mutex<State>,
    pub(crate) journal: Journal,
    started: Instant,
    started_wall: SystemTime,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) script: Script,
    quotas: Quotas,
    seq: u64,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn wall_now(&self) -> SystemTime {
        self.started_wall + self.elapsed()
    }
}

/// A running mock provider. Dropping it stops the server and closes every
/// connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use llm_tower_mock::{Fault, MockServer, Rule};
///
/// let mock = MockServer::builder()
///     .seed(7)
///     .rule(Rule::new(Fault::rate_limited(Duration::from_secs(2))).times(1))
///     .start()
///     .await?;
/// let base = mock.openai_base_url(); // "http://127.0.0.1:PORT/v1"
/// // … point the client under test at `base` …
/// assert!(mock.journal().entries().iter().all(|e| e.attempt >= 1));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// Builds a [`MockServer`] from code; see [`MockConfig`] for every field.
#[derive(Debug, Clone, Default)]
pub struct MockBuilder {
    config: MockConfig,
    addr: Option<SocketAddr>,
}

impl MockBuilder {
    /// The seed of content and chance.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Adds a fault rule, tried after those already added.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.config.rules.push(rule);
        self
    }

    /// Requests and tokens per minute, per model.
    pub fn quota(mut self, quota: crate::Quota) -> Self {
        self.config.quota = quota;
        self
    }

    /// Time before the headers of every answer.
    pub fn first_byte(mut self, delay: Duration) -> Self {
        self.config.timing.first_byte = delay;
        self
    }

    /// Time before each token of a stream.
    pub fn token_interval(mut self, interval: Duration) -> Self {
        self.config.timing.token_interval = interval;
        self
    }

    /// Requires this API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(key.into());
        self
    }

    /// The context window of every model, in tokens.
    pub fn context_window(mut self, tokens: u32) -> Self {
        self.config.context_window = tokens;
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: MockConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the configuration, binds and starts serving.
    pub async fn start(self) -> Result<MockServer, StartError> {
        let addr = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        MockServer::bind(self.config, addr).await
    }
}

/// Why the mock could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The address could not be bound.
    Bind(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid mock configuration: {e}"),
            StartError::Bind(e) => write!(f, "cannot bind the mock provider: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Bind(e) => Some(e),
        }
    }
}

impl MockServer {
    /// A builder with the default configuration: no faults, no quota,
    /// answers as fast as possible, on `127.0.0.1:0`.
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    /// Starts a mock with `config` on `127.0.0.1:0`.
    pub async fn start(config: MockConfig) -> Result<MockServer, StartError> {
        MockServer::builder().config(config).start().await
    }

    /// Starts a mock with `config` on `addr`.
    pub async fn bind(config: MockConfig, addr: SocketAddr) -> Result<MockServer, StartError> {
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr).await.map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let shared = Arc::new(Shared {
            seed: config.seed,
            timing: config.timing,
            api_key: config.api_key,
            context_window: config.context_window,
            state: Mutex::new(State {
                script: Script::new(config.rules),
                quotas: Quotas::new(config.quota),
                seq: 0,
            }),
            journal: Journal::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        });
        let (shutdown, stop) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop));
        tracing::debug!(%addr, "mock provider listening");
        Ok(MockServer {
            addr,
            shared,
            accept,
            shutdown,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the base URL of Anthropic's SDKs and of Gemini.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/v1`: the base URL as OpenAI's SDKs take it.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The journal of every attempt.
    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    /// Adds a fault rule while running, tried after the others.
    pub fn push_rule(&self, rule: Rule) -> Result<(), ConfigError> {
        rule.validate().map_err(ConfigError::new)?;
        self.shared.state().script.push(rule);
        Ok(())
    }

    /// Removes every fault rule.
    pub fn clear_rules(&self) {
        self.shared.state().script.clear();
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<Rule> {
        self.shared.state().script.rules()
    }

    /// Time since the server started, the clock of rule windows.
    pub fn elapsed(&self) -> Duration {
        self.shared.elapsed()
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }

    /// Waits until the server stops: forever, unless its task fails. For
    /// binaries that serve until interrupted.
    pub async fn serve_forever(&mut self) {
        let _ = (&mut self.accept).await;
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!(error = %e, "mock provider accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What the journal learns of a request as it goes.
struct Record {
    at: Duration,
    method: String,
    path: String,
    provider: Option<Provider>,
    model: Option<String>,
    stream: bool,
    fingerprint: u64,
    attempt: u32,
    seq: u64,
    faults: Vec<String>,
    idempotency_key: Option<String>,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
}

impl Record {
    fn finish(self, shared: &Shared, status: StatusCode, request_id: Option<String>) {
        shared.journal.push(Entry {
            seq: self.seq,
            at: self.at,
            method: self.method,
            path: self.path,
            provider: self.provider,
            model: self.model,
            stream: self.stream,
            fingerprint: format!("{:016x}", self.fingerprint),
            attempt: self.attempt,
            faults: self.faults,
            status: status.as_u16(),
            request_id,
            idempotency_key: self.idempotency_key,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
        });
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let at = shared.elapsed();
    let raw_path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    // Everything the mock records, matches or echoes sees the path with a
    // Gemini `?key=` redacted; only the key check reads the raw one.
    let path = wire::redact_key(&raw_path).into_owned();
    if path.starts_with(admin::PREFIX) {
        return admin::handle(shared, req, &path).await;
    }
    let route = wire::route(&path);
    let provider = route.as_ref().map(|r| r.provider);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let answer = wire::error(
                provider.unwrap_or(Provider::OpenAi),
                ErrorKind::Status(StatusCode::PAYLOAD_TOO_LARGE),
                None,
            );
            return json_response(answer.status, answer.body);
        }
    };
    let fingerprint = content::fingerprint((path.as_str(), &body[..]));
    let (seq, attempt) = {
        let mut state = shared.state();
        let seq = state.seq;
        state.seq += 1;
        (seq, state.script.sight(fingerprint))
    };
    let mut record = Record {
        at,
        method: parts.method.to_string(),
        path: path.clone(),
        provider,
        model: route.as_ref().and_then(|r| r.path_model.clone()),
        stream: false,
        fingerprint,
        attempt,
        seq,
        faults: Vec::new(),
        idempotency_key: parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        input_tokens: None,
        output_tokens: None,
    };
    let Some(route) = route else {
        let answer = wire::error(
            Provider::OpenAi,
            ErrorKind::Status(StatusCode::NOT_FOUND),
            Some(&format!("Unknown request URL: POST {path}.")),
        );
        record.finish(shared, answer.status, None);
        return json_response(answer.status, answer.body);
    };
    let provider = route.provider;
    let request_id = request_id(shared.seed, provider, fingerprint, attempt);
    let mut headers = HeaderMap::new();
    if let (Some(name), Some(id)) = (wire::request_id_header(provider), &request_id) {
        headers.insert(name, HeaderValue::try_from(id.as_str()).expect("ASCII id"));
    }

    let chat = if parts.method != Method::POST {
        Err(wire::error(
            provider,
            ErrorKind::Status(StatusCode::METHOD_NOT_ALLOWED),
            Some("Only POST is accepted here."),
        ))
    } else if !authorized(shared, provider, &parts.headers, &raw_path) {
        Err(wire::error(
            provider,
            ErrorKind::Status(StatusCode::UNAUTHORIZED),
            None,
        ))
    } else {
        wire::parse(&route, &body).map_err(|e| wire::invalid(provider, &e))
    };
    let chat = match chat {
        Ok(chat) => chat,
        Err(answer) => {
            record.finish(shared, answer.status, request_id.clone());
            return error_response(answer, headers, Duration::ZERO).await;
        }
    };
    record.model = Some(chat.model.clone());
    record.stream = chat.stream;
    record.input_tokens = Some(chat.input_tokens);

    let facts = RequestFacts {
        provider,
        model: &chat.model,
        path: &path,
        stream: chat.stream,
        fingerprint,
        attempt,
        elapsed: at,
    };
    // A fault the request asks for itself, for tests that script per call.
    let forced = match parts.headers.get(FAULT_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(spec) => match spec
            .map_err(|_| "not ASCII".to_owned())
            .and_then(str::parse::<Rule>)
        {
            Ok(rule) => Some(rule.fault),
            Err(e) => {
                let answer = wire::error(
                    provider,
                    ErrorKind::Status(StatusCode::BAD_REQUEST),
                    Some(&format!("invalid {FAULT_HEADER} header: {e}")),
                );
                record.finish(shared, answer.status, request_id.clone());
                return error_response(answer, headers, Duration::ZERO).await;
            }
        },
    };
    let (decision, admitted, limits, mut refund) = {
        let mut state = shared.state();
        let decision = state.script.decide(shared.seed, &facts, forced.as_ref());
        let cost = Cost {
            input: chat.input_tokens,
            max_tokens: chat.max_tokens,
        };
        let (admitted, limits) = if state.quotas.is_limited() {
            state.quotas.admit(&chat.model, cost, Instant::now())
        } else {
            (Ok(()), Default::default())
        };
        // What the output limit took, given back less the output used when
        // the answer ends.
        let refund = (admitted.is_ok() && state.quotas.limits_output()).then(|| OutputRefund {
            shared: shared.clone(),
            model: chat.model.clone(),
            unused: cost.output(),
        });
        (decision, admitted, limits, refund)
    };
    wire::rate_limit_headers(provider, &limits, shared.wall_now(), &mut headers);
    record.faults = decision.names.clone();
    let delay = shared.timing.first_byte + decision.latency;

    // The quota answers first, as a provider's gateway does.
    let refused = match admitted {
        Err(Refusal::Wait(wait)) => {
            record.faults.push("quota".into());
            wire::retry_after_headers(provider, wait, &mut headers);
            Some(wire::error(provider, ErrorKind::RateLimited(wait), None))
        }
        Err(Refusal::TooLarge) => {
            record.faults.push("quota".into());
            Some(wire::error(provider, ErrorKind::RequestTooLarge, None))
        }
        Ok(()) => None,
    };
    let refused = refused.or_else(|| match &decision.fault {
        Some(Fault::RateLimited { retry_after }) => {
            wire::retry_after_headers(provider, *retry_after, &mut headers);
            Some(wire::error(
                provider,
                ErrorKind::RateLimited(*retry_after),
                None,
            ))
        }
        Some(Fault::InsufficientQuota) => {
            Some(wire::error(provider, ErrorKind::InsufficientQuota, None))
        }
        Some(Fault::ContextLength) => Some(wire::error(provider, ErrorKind::ContextLength, None)),
        Some(Fault::Overloaded) => Some(wire::error(provider, ErrorKind::Overloaded, None)),
        Some(Fault::Status { status }) => Some(wire::error(
            provider,
            ErrorKind::Status(StatusCode::from_u16(*status).expect("validated status")),
            None,
        )),
        _ => None,
    });
    let refused = refused.or_else(|| {
        let need = u64::from(chat.input_tokens) + u64::from(chat.max_tokens.unwrap_or(0));
        (need > u64::from(shared.context_window)).then(|| {
            wire::error(
                provider,
                ErrorKind::ContextLength,
                Some(&format!(
                    "This model's maximum context length is {} tokens. However, you requested {need} tokens.",
                    shared.context_window
                )),
            )
        })
    });
    if let Some(answer) = refused {
        record.finish(shared, answer.status, request_id.clone());
        // An error answer used no output: all of it goes back (`refund`
        // is dropped when the answer is sent).
        let response = error_response(answer, headers, delay).await;
        drop(refund);
        return response;
    }

    let mut answer = content::answer(shared.seed, fingerprint, chat.input_tokens, chat.max_tokens);
    if let Some(tool) = &chat.tool {
        answer = answer.calling(tool.clone());
    }
    let id = answer_id(shared.seed, provider, fingerprint, attempt);
    let created = shared
        .wall_now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let success = Success {
        chat: &chat,
        answer: &answer,
        id: &id,
        created,
    };
    let first_byte = delay
        + match decision.fault {
            Some(Fault::SlowFirstByte { delay }) => delay,
            _ => Duration::ZERO,
        };
    wire::common_headers(provider, &mut headers, first_byte.as_millis() as u64);
    let (content_type, body, output_tokens) = if chat.stream {
        let steps = schedule(
            &chat,
            Stream {
                events: wire::stream_answer(&success),
                keepalive: wire::keepalive(&success),
            },
            decision.shape,
            decision.fault.as_ref(),
            shared.timing.token_interval,
        );
        let tokens = steps
            .iter()
            .map(|s| match s {
                Step::Send(_, n) => *n,
                _ => 0,
            })
            .sum();
        if let Some(r) = refund.as_mut() {
            r.unused = r.unused.saturating_sub(tokens);
        }
        // The stream owns the refund: given back at its end (or when the
        // client leaves).
        (
            "text/event-stream; charset=utf-8",
            stream_body(steps, refund.take()),
            tokens,
        )
    } else {
        if let Some(r) = refund.as_mut() {
            r.unused = r.unused.saturating_sub(answer.output_tokens());
        }
        (
            "application/json",
            full(wire::json_answer(&success)),
            answer.output_tokens(),
        )
    };
    record.output_tokens = Some(output_tokens);
    record.finish(shared, StatusCode::OK, request_id);
    sleep(first_byte).await;
    // A JSON answer is whole when it is sent: its unused output goes back.
    drop(refund);
    let mut resp = Response::new(body);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if chat.stream {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    *resp.headers_mut() = headers;
    resp
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn error_response(
    answer: wire::ErrorAnswer,
    headers: HeaderMap,
    delay: Duration,
) -> Response<Body> {
    sleep(delay).await;
    let mut resp = json_response(answer.status, answer.body);
    resp.headers_mut().extend(headers);
    resp
}

fn authorized(shared: &Shared, provider: Provider, headers: &HeaderMap, path: &str) -> bool {
    let Some(key) = &shared.api_key else {
        return true;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match provider {
        Provider::OpenAi => header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key),
        Provider::Anthropic => header("x-api-key").is_some_and(|v| v == key),
        Provider::Gemini => {
            header("x-goog-api-key").is_some_and(|v| v == key)
                || path
                    .split_once('?')
                    .is_some_and(|(_, q)| q.split('&').any(|p| p.strip_prefix("key=") == Some(key)))
        }
    }
}

fn request_id(seed: u64, provider: Provider, fingerprint: u64, attempt: u32) -> Option<String> {
    let n = content::fingerprint((seed, fingerprint, attempt, "request-id"));
    match provider {
        Provider::OpenAi => Some(format!("req_{}", content::hex_id(n, 32))),
        Provider::Anthropic => Some(format!("req_01{}", content::base62_id(n, 22))),
        Provider::Gemini => None,
    }
}

fn answer_id(seed: u64, provider: Provider, fingerprint: u64, attempt: u32) -> String {
    let n = content::fingerprint((seed, fingerprint, attempt, "answer-id"));
    match provider {
        Provider::OpenAi => format!("chatcmpl-{}", content::base62_id(n, 29)),
        Provider::Anthropic => format!("msg_01{}", content::base62_id(n, 22)),
        Provider::Gemini => content::base62_id(n, 22),
    }
}

/// One step of a streamed answer.
#[derive(Debug)]
enum Step {
    Sleep(Duration),
    /// An event, and the output tokens it carries.
    Send(Bytes, u32),
    /// Break the connection.
    Fail,
}

/// The events of a healthy stream, and the provider's keep-alive.
#[derive(Debug)]
struct Stream {
    events: Vec<Event>,
    keepalive: Bytes,
}

/// Lays out the events of a stream in time, with its shape and the fault
/// applied.
fn schedule(
    chat: &Chat,
    stream: Stream,
    shape: Shape,
    fault: Option<&Fault>,
    interval: Duration,
) -> VecDeque<Step> {
    let Stream {
        mut events,
        keepalive,
    } = stream;
    // The preamble ends at the first event carrying output.
    let first_token = |events: &[Event]| {
        events
            .iter()
            .position(|e| e.tokens > 0)
            .unwrap_or(events.len())
    };
    if shape.no_done && events.last().is_some_and(wire::is_done) {
        events.pop();
    }
    if shape.empty_deltas > 0 {
        let at = first_token(&events);
        let empty = (0..shape.empty_deltas).map(|_| Event::frame(keepalive.clone()));
        events.splice(at..at, empty);
    }
    // Index just past the `after`-th event carrying tokens (0: the very start; past
    // the last token when the answer is shorter).
    let cut = |after: u32| -> usize {
        if after == 0 {
            return 0;
        }
        let mut seen = 0;
        let mut last = 0;
        for (i, e) in events.iter().enumerate() {
            if e.tokens > 0 {
                seen += 1;
                last = i + 1;
                if seen == after {
                    return i + 1;
                }
            }
        }
        last
    };
    let (at, tail): (usize, Vec<Step>) = match fault {
        Some(Fault::SlowFirstToken {
            delay,
            keepalive: k,
        }) => (first_token(&events), wait(*delay, *k, &keepalive)),
        Some(Fault::Stall { after, duration }) => (cut(*after), vec![Step::Sleep(*duration)]),
        Some(Fault::Malformed { after }) => (
            cut(*after),
            vec![Step::Send(wire::malformed_event(chat.provider), 0)],
        ),
        Some(Fault::Drop { after }) => (cut(*after), vec![Step::Fail]),
        Some(Fault::Truncate { after }) => (cut(*after), Vec::new()),
        Some(Fault::ErrorEvent { after }) => (
            cut(*after),
            vec![Step::Send(wire::stream_error(chat.provider), 0)],
        ),
        _ => (usize::MAX, Vec::new()),
    };
    // Faults that end the stream drop everything after their point.
    let ends = matches!(
        fault,
        Some(Fault::Drop { .. } | Fault::Truncate { .. } | Fault::ErrorEvent { .. })
    );
    let mut steps = VecDeque::with_capacity(events.len() * 2 + tail.len());
    let mut tail = Some(tail);
    for (i, e) in events.into_iter().enumerate() {
        if i == at {
            steps.extend(tail.take().into_iter().flatten());
            if ends {
                return steps;
            }
        }
        if e.tokens > 0 && !interval.is_zero() {
            steps.push_back(Step::Sleep(interval));
        }
        steps.push_back(Step::Send(e.bytes, e.tokens));
    }
    if at != usize::MAX {
        // The fault falls after the last event.
        steps.extend(tail.into_iter().flatten());
    }
    steps
}

/// A wait of `delay`, with a keep-alive every `keepalive` strictly before
/// its end.
fn wait(delay: Duration, keepalive: Option<Duration>, bytes: &Bytes) -> Vec<Step> {
    let Some(every) = keepalive.filter(|k| !k.is_zero()) else {
        return vec![Step::Sleep(delay)];
    };
    let mut steps = Vec::new();
    let mut left = delay;
    while left > every {
        steps.push(Step::Sleep(every));
        steps.push(Step::Send(bytes.clone(), 0));
        left -= every;
    }
    steps.push(Step::Sleep(left));
    steps
}

/// Output tokens an admitted request was charged and did not use, given
/// back to its model's output limit when dropped: when the answer ends.
#[derive(Debug)]
struct OutputRefund {
    shared: Arc<Shared>,
    model: String,
    unused: u32,
}

impl Drop for OutputRefund {
    fn drop(&mut self) {
        self.shared
            .state()
            .quotas
            .refund_output(&self.model, self.unused, Instant::now());
    }
}

fn stream_body(steps: VecDeque<Step>, refund: Option<OutputRefund>) -> Body {
    let frames = futures_util::stream::unfold((steps, refund), |(mut steps, refund)| async move {
        let mut flushed = false;
        loop {
            match steps.pop_front()? {
                Step::Sleep(d) => sleep(d).await,
                Step::Send(bytes, _) => return Some((Ok(Frame::data(bytes)), (steps, refund))),
                Step::Fail => {
                    // Let the connection flush what was sent, so the drop
                    // falls after those bytes on the wire, not before them.
                    if !std::mem::replace(&mut flushed, true) {
                        steps.push_front(Step::Fail);
                        tokio::task::yield_now().await;
                        continue;
                    }
                    steps.clear();
                    return Some((
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the mock provider dropped the connection",
                        )),
                        (steps, refund),
                    ));
                }
            }
        }
    });
    StreamBody::new(frames).boxed()
}
