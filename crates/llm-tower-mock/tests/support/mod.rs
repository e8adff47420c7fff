//! A plain hyper client over loopback and an SSE splitter, shared by the
//! mock's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use llm_tower_mock::Provider;
use serde_json::{Value, json};
use tokio::time::Instant;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An OpenAI chat request.
pub fn openai(model: &str, stream: bool, prompt: &str) -> Value {
    let mut v = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    });
    if stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

/// An Anthropic messages request.
pub fn anthropic(model: &str, stream: bool, prompt: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// A Gemini request body (the model and stream flag are in the path).
pub fn gemini(prompt: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})
}

pub const OPENAI: &str = "/v1/chat/completions";
pub const ANTHROPIC: &str = "/v1/messages";

pub fn gemini_path(model: &str, stream: bool) -> String {
    if stream {
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/v1beta/models/{model}:generateContent")
    }
}

/// One body frame and when it arrived, from the request's start.
#[derive(Debug)]
pub struct Frame {
    pub at: Duration,
    pub bytes: Bytes,
}

/// What arrived on the wire for one request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// When the response head arrived.
    pub head_at: Duration,
    pub frames: Vec<Frame>,
    /// The body error that ended the stream, if it broke.
    pub error: Option<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.bytes))
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The SSE events as (event name, data) pairs.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        sse_events(&self.text())
    }

    /// The data of every event, parsed; panics on a malformed one.
    pub fn event_json(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }
}

/// Splits an SSE text into (event name, data) pairs.
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

/// Sends `body` to `base + path` and reads the whole answer, frame by frame.
pub async fn post(client: &HttpClient, base: &str, path: &str, body: &Value) -> Reply {
    post_with(client, base, path, body, &[]).await
}

/// Like [`post`], with extra request headers.
pub async fn post_with(
    client: &HttpClient,
    base: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    send(client, req).await
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let start = Instant::now();
    let resp = client
        .request(req)
        .await
        .expect("the response head arrives");
    let head_at = start.elapsed();
    let (parts, mut body) = resp.into_parts();
    let mut frames = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(bytes) = f.into_data() {
                    frames.push(Frame {
                        at: start.elapsed(),
                        bytes,
                    });
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Reply {
        status: parts.status,
        headers: parts.headers,
        head_at,
        frames,
        error,
    }
}

/// Sends a chat request to `provider`'s endpoint with its usual model.
pub async fn ask(
    client: &HttpClient,
    base: &str,
    provider: Provider,
    stream: bool,
    prompt: &str,
) -> Reply {
    match provider {
        Provider::OpenAi => post(client, base, OPENAI, &openai("gpt-4o", stream, prompt)).await,
        Provider::Anthropic => {
            post(
                client,
                base,
                ANTHROPIC,
                &anthropic("claude-haiku-4-5", stream, prompt),
            )
            .await
        }
        Provider::Gemini => {
            post(
                client,
                base,
                &gemini_path("gemini-2.0-flash", stream),
                &gemini(prompt),
            )
            .await
        }
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}
