//! Metering of real provider bodies, JSON and SSE, through `MeterLayer` and
//! `MeteredBody`.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use llm_tower::{
    BoxError,
    metering::{
        BodyKind, MalformedStream, MeterLayer, MeteredBody, Outcome, SseParser, StreamError,
        TruncatedStream, UsageObservers, UsageReport, UsageSource,
    },
    provider::{Endpoint, Provider, WireFormat, usage::StreamUsage},
    request::RequestMeta,
    usage::{FinishReason, Usage},
};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};

// ---------------------------------------------------------------- bodies

const CHAT_JSON: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default"
}"#;

const CHAT_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" wörld, \\\"usage\\\": 👋\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1310,\"completion_tokens\":10,\"total_tokens\":1320,\"prompt_tokens_details\":{\"cached_tokens\":1280,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

const RESPONSES_JSON: &str = r#"{
  "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
  "object": "response",
  "created_at": 1741476777,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4o-2024-08-06",
  "output": [
    {
      "type": "message",
      "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
      "status": "completed",
      "role": "assistant",
      "content": [
        {
          "type": "output_text",
          "text": "The image depicts a scenic landscape.",
          "annotations": []
        }
      ]
    }
  ],
  "parallel_tool_calls": true,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "tool_choice": "auto",
  "tools": [],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {
    "input_tokens": 328,
    "input_tokens_details": {"cached_tokens": 256},
    "output_tokens": 52,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 380
  },
  "user": null,
  "metadata": {}
}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"error\":null,\"incomplete_details\":null,\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null,\"metadata\":{}}}\n\n",
    "event: response.in_progress\n",
    "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"error\":null,\"incomplete_details\":null,\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null,\"metadata\":{}}}\n\n",
    "event: response.output_item.added\n",
    "data: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n",
    "event: response.content_part.added\n",
    "data: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":\"\"}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\" there, friend\"}\n\n",
    "event: response.output_text.done\n",
    "data: {\"type\":\"response.output_text.done\",\"sequence_number\":6,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"Hi there, friend\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":7,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"completed\",\"error\":null,\"incomplete_details\":null,\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"completed\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"text\":\"Hi there, friend\"}],\"role\":\"assistant\"}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":48},\"user\":null,\"metadata\":{}}}\n\n",
);

const ANTHROPIC_JSON: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello! How can I help?"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":2048,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":2048,"ephemeral_1h_input_tokens":0},"output_tokens":6,"service_tier":"standard"}}"#;

const ANTHROPIC_START: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1200,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! Ça va ? 👋 Here is a longer sentence.\"}}\n\n",
);

const ANTHROPIC_END: &str = concat!(
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const ANTHROPIC_OVERLOADED: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

const GEMINI_JSON: &str = r#"{
  "candidates": [
    {
      "content": {
        "parts": [{"text": "AI learns patterns from data."}],
        "role": "model"
      },
      "finishReason": "STOP",
      "avgLogprobs": -0.12
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 8,
    "candidatesTokenCount": 7,
    "totalTokenCount": 1031,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    "thoughtsTokenCount": 1016
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "jqFvaJ_PEs2gz7IP7bGr4Ak"
}"#;

const GEMINI_SSE: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue because of Rayleigh scattering\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \".\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 12,\"totalTokenCount\": 20,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}],\"candidatesTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 12}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
);

fn anthropic_sse() -> String {
    format!("{ANTHROPIC_START}{ANTHROPIC_END}")
}

// --------------------------------------------------------------- support

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<UsageReport>>>);

impl Recorder {
    fn observers(&self) -> UsageObservers {
        let mut o = UsageObservers::new();
        let sink = self.0.clone();
        o.push(Arc::new(move |r: &UsageReport| {
            sink.lock().unwrap().push(r.clone())
        }));
        o
    }

    fn reports(&self) -> Vec<UsageReport> {
        self.0.lock().unwrap().clone()
    }

    fn only(&self) -> UsageReport {
        let all = self.reports();
        assert_eq!(all.len(), 1, "exactly one report: {all:?}");
        all.into_iter().next().unwrap()
    }
}

fn meta(provider: Provider, format: WireFormat, stream: bool) -> RequestMeta {
    RequestMeta::new(Some(Endpoint { provider, format }))
        .with_model("test-model")
        .with_stream(stream)
        .with_estimated_input_tokens(1000)
}

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunks<I: IntoIterator<Item = Vec<u8>>>(parts: I) -> Chunks {
    let frames: Vec<_> = parts
        .into_iter()
        .map(|p| Ok(Frame::data(Bytes::from(p))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

/// Splits `text` into frames of `size` bytes (splitting lines, `\r\n` and
/// UTF-8 characters alike).
fn split(text: &str, size: usize) -> Chunks {
    chunks(text.as_bytes().chunks(size).map(<[u8]>::to_vec))
}

/// Drains a body that is always ready, without a runtime: the bytes it
/// passed and the error it ended with.
/// Drains a metered body, which must yield no error of its own (the meter
/// observes), and returns what its progress recorded.
fn drain_judged<B>(body: MeteredBody<B>) -> (Vec<u8>, Option<BoxError>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let progress = body.progress().cloned();
    let (out, err) = drain(body);
    assert!(err.is_none(), "the meter never adds an error: {err:?}");
    (out, progress.and_then(|p| p.failure_error()))
}

fn drain<B>(body: B) -> (Vec<u8>, Option<BoxError>)
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // After its error the body ends.
                assert!(matches!(
                    body.as_mut().poll_frame(&mut cx),
                    Poll::Ready(None)
                ));
                return (out, Some(e));
            }
            Poll::Ready(None) => return (out, None),
            Poll::Pending => panic!("test bodies are always ready"),
        }
    }
}

fn metered(text: &str, size: usize, meta: &RequestMeta, rec: &Recorder) -> MeteredBody<Chunks> {
    MeteredBody::new(split(text, size), Some(meta), rec.observers())
}

// ----------------------------------------------------------------- tests

#[test]
fn openai_chat_json() {
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, false);
    let body = MeteredBody::new(
        Full::new(Bytes::from(CHAT_JSON)).map_err(BoxError::from),
        Some(&m),
        rec.observers(),
    );
    let (out, err) = drain(body);
    assert!(err.is_none());
    assert_eq!(out, CHAT_JSON.as_bytes());
    let r = rec.only();
    assert_eq!(r.usage, Usage::new(19, 10));
    assert_eq!(r.source, UsageSource::Actual);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(r.provider, Some(Provider::OpenAi));
    assert_eq!(r.model.as_deref(), Some("test-model"));
}

#[test]
fn openai_chat_stream_final_usage_chunk() {
    for size in [1, 7, 64, 100_000] {
        let rec = Recorder::default();
        let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, true);
        let (out, err) = drain(metered(CHAT_SSE, size, &m, &rec));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, CHAT_SSE.as_bytes());
        let r = rec.only();
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 1310,
                output_tokens: 10,
                cached_input_tokens: 1280,
                ..Usage::default()
            }
        );
        assert_eq!(r.source, UsageSource::Actual);
        assert_eq!(r.finish_reason, Some(FinishReason::Length));
        assert_eq!(r.outcome, Outcome::Completed);
        assert_eq!(r.events, 6);
    }
}

#[test]
fn openai_chat_stream_without_include_usage_is_estimated() {
    let text: String = CHAT_SSE
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect();
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, true);
    let (_, err) = drain(metered(&text, 50, &m, &rec));
    assert!(err.is_none());
    let r = rec.only();
    assert_eq!(r.source, UsageSource::Estimated);
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(r.usage.input_tokens, 1000);
    assert!(r.usage.output_tokens > 0);
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
}

#[test]
fn openai_chat_error_inside_stream() {
    let first = CHAT_SSE.split_inclusive("\n\n").next().unwrap();
    let text = format!(
        "{first}data: {{\"error\":{{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\n"
    );
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, true);
    let (out, err) = drain_judged(metered(&text, first.len(), &m, &rec));
    assert_eq!(&out[..first.len()], first.as_bytes());
    let err = err.expect("an error");
    let e = err.downcast_ref::<StreamError>().expect("a StreamError");
    assert_eq!(e.provider_error().error_type(), Some("server_error"));
    assert_eq!(rec.only().outcome, Outcome::StreamError);
}

#[test]
fn openai_responses_json() {
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiResponses, false);
    let (_, err) = drain(metered(RESPONSES_JSON, 300, &m, &rec));
    assert!(err.is_none());
    let r = rec.only();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 328,
            output_tokens: 52,
            cached_input_tokens: 256,
            ..Usage::default()
        }
    );
    assert_eq!(r.source, UsageSource::Actual);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn openai_responses_stream() {
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiResponses, true);
    let (out, err) = drain(metered(RESPONSES_SSE, 33, &m, &rec));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out, RESPONSES_SSE.as_bytes());
    let r = rec.only();
    assert_eq!(r.usage, Usage::new(37, 11));
    assert_eq!(r.source, UsageSource::Actual);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    assert_eq!(r.events, 8);
}

#[test]
fn openai_responses_failed_and_error_events() {
    let cut = RESPONSES_SSE.find("event: response.completed").unwrap();
    let failed = format!(
        "{}event: response.failed\ndata: {{\"type\":\"response.failed\",\"sequence_number\":7,\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"failed\",\"error\":{{\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\"}},\"output\":[],\"usage\":null}}}}\n\n",
        &RESPONSES_SSE[..cut]
    );
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiResponses, true);
    let (_, err) = drain_judged(metered(&failed, 64, &m, &rec));
    let err = err.unwrap();
    let e = err.downcast_ref::<StreamError>().unwrap();
    assert_eq!(e.provider_error().code(), Some("server_error"));
    assert_eq!(rec.only().outcome, Outcome::StreamError);

    let error = format!(
        "{}event: error\ndata: {{\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":7}}\n\n",
        &RESPONSES_SSE[..cut]
    );
    let rec = Recorder::default();
    let (_, err) = drain_judged(metered(&error, 64, &m, &rec));
    let err = err.unwrap();
    let e = err.downcast_ref::<StreamError>().unwrap();
    assert_eq!(e.provider_error().code(), Some("ERR_SOMETHING"));
    assert_eq!(rec.only().source, UsageSource::Estimated);
}

#[test]
fn anthropic_json_adds_cache_writes_to_input() {
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, false);
    let (_, err) = drain(metered(ANTHROPIC_JSON, 128, &m, &rec));
    assert!(err.is_none());
    let r = rec.only();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 12 + 2048,
            output_tokens: 6,
            cache_write_tokens: 2048,
            ..Usage::default()
        }
    );
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
    assert_eq!(r.source, UsageSource::Actual);
}

#[test]
fn anthropic_stream_message_start_plus_cumulative_delta() {
    let text = anthropic_sse();
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let body = metered(&text, 20, &m, &rec);
    assert_eq!(body.kind(), BodyKind::Sse);
    let (out, err) = drain(body);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out, text.as_bytes());
    let r = rec.only();
    // Output is the last cumulative count (15), not 1 + 15.
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 25 + 1200,
            output_tokens: 15,
            cached_input_tokens: 1200,
            ..Usage::default()
        }
    );
    assert_eq!(r.source, UsageSource::Actual);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    assert_eq!(r.events, 8);
}

#[test]
fn anthropic_message_delta_may_carry_input_and_cache() {
    let text = anthropic_sse().replace(
        "\"usage\":{\"output_tokens\":15}",
        "\"usage\":{\"input_tokens\":30,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1200,\"output_tokens\":15}",
    );
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    drain(metered(&text, 1000, &m, &rec));
    assert_eq!(rec.only().usage.input_tokens, 1230);
}

#[test]
fn anthropic_overloaded_as_first_event() {
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let body = metered(ANTHROPIC_OVERLOADED, 1000, &m, &rec);
    let (out, err) = drain_judged(body);
    assert_eq!(out, ANTHROPIC_OVERLOADED.as_bytes());
    let err = err.expect("an error");
    let e = err.downcast_ref::<StreamError>().expect("a StreamError");
    assert_eq!(e.provider_error().error_type(), Some("overloaded_error"));
    assert_eq!(e.provider_error().message(), Some("Overloaded"));
    let r = rec.only();
    assert_eq!(r.outcome, Outcome::StreamError);
    assert_eq!(r.source, UsageSource::Estimated);
    assert_eq!(r.usage, Usage::new(1000, 0));
}

#[test]
fn anthropic_overloaded_after_some_deltas() {
    let text = format!("{ANTHROPIC_START}{ANTHROPIC_OVERLOADED}");
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    // One frame per event, as a server flushes them.
    let body = MeteredBody::new(
        chunks(text.split_inclusive("\n\n").map(|e| e.as_bytes().to_vec())),
        Some(&m),
        rec.observers(),
    );
    let (out, err) = drain_judged(body);
    assert_eq!(out, text.as_bytes(), "every byte before the error arrived");
    assert!(err.unwrap().is::<StreamError>());
    let r = rec.only();
    assert_eq!(r.outcome, Outcome::StreamError);
    // The input came in message_start; the output is estimated.
    assert_eq!(r.source, UsageSource::Estimated);
    assert_eq!(r.usage.input_tokens, 1225);
    assert!(r.usage.output_tokens >= 1);
}

#[test]
fn streams_are_complete_at_their_finish_reason() {
    // What some compatible servers send, and what a cut right at the end
    // leaves: the answer and its finish reason, without the closing event.
    let anthropic = anthropic_sse();
    let cases = [
        (
            WireFormat::AnthropicMessages,
            anthropic[..anthropic.find("event: message_stop").unwrap()].to_owned(),
            true,
        ),
        // Cut inside the closing event.
        (
            WireFormat::AnthropicMessages,
            anthropic[..anthropic.len() - 10].to_owned(),
            true,
        ),
        (
            WireFormat::OpenAiChat,
            CHAT_SSE[..CHAT_SSE.find("data: [DONE]").unwrap()].to_owned(),
            true,
        ),
        // The finish reason came, the usage chunk did not: complete, and
        // estimated.
        (
            WireFormat::OpenAiChat,
            CHAT_SSE[..CHAT_SSE.find("data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[]").unwrap()].to_owned(),
            false,
        ),
    ];
    for (format, text, actual) in cases {
        let rec = Recorder::default();
        let m = meta(Provider::OpenAi, format, true);
        let (out, err) = drain_judged(metered(&text, 40, &m, &rec));
        assert_eq!(out, text.as_bytes());
        assert!(err.is_none(), "{format:?}: {err:?}");
        let r = rec.only();
        assert_eq!(r.outcome, Outcome::Completed, "{format:?}");
        assert_eq!(r.is_actual(), actual, "{format:?}");
        assert!(r.finish_reason.is_some(), "{format:?}");
    }
}

#[test]
fn truncated_streams_are_typed_errors() {
    // (format, stream cut short, whether its final usage had come)
    let cases = [
        (
            WireFormat::AnthropicMessages,
            ANTHROPIC_START.to_owned(),
            false,
        ),
        (
            WireFormat::GeminiGenerateContent,
            GEMINI_SSE[..GEMINI_SSE.rfind("data: ").unwrap()].to_owned(),
            false,
        ),
        (
            WireFormat::OpenAiResponses,
            RESPONSES_SSE[..RESPONSES_SSE.find("event: response.completed").unwrap()].to_owned(),
            false,
        ),
        (WireFormat::OpenAiChat, String::new(), false),
    ];
    for (format, text, actual) in cases {
        let rec = Recorder::default();
        let m = meta(Provider::OpenAi, format, true);
        let (out, err) = drain_judged(metered(&text, 40, &m, &rec));
        assert_eq!(out, text.as_bytes());
        let err = err.unwrap_or_else(|| panic!("{format:?} is truncated"));
        assert!(err.is::<TruncatedStream>(), "{format:?}: {err}");
        let r = rec.only();
        assert_eq!(r.outcome, Outcome::Truncated);
        assert_eq!(r.is_actual(), actual, "{format:?} {text:.60}");
        if !actual {
            assert_eq!(r.source, UsageSource::Estimated);
            assert!(r.usage.input_tokens > 0);
        }
    }
}

#[test]
fn gemini_json() {
    let rec = Recorder::default();
    let m = meta(Provider::Gemini, WireFormat::GeminiGenerateContent, false);
    drain(metered(GEMINI_JSON, 64, &m, &rec));
    let r = rec.only();
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 8,
            output_tokens: 7 + 1016,
            reasoning_tokens: 1016,
            ..Usage::default()
        }
    );
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
    assert_eq!(r.source, UsageSource::Actual);
}

#[test]
fn gemini_stream_last_usage_metadata() {
    let rec = Recorder::default();
    let m = meta(Provider::Gemini, WireFormat::GeminiGenerateContent, true);
    let (out, err) = drain(metered(GEMINI_SSE, 17, &m, &rec));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out, GEMINI_SSE.as_bytes());
    let r = rec.only();
    assert_eq!(r.usage, Usage::new(8, 12));
    assert_eq!(r.source, UsageSource::Actual);
    assert_eq!(r.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn malformed_event_that_matters() {
    let text = "event: message_start\ndata: <html>502 Bad Gateway</html>\n\n";
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let (_, err) = drain_judged(metered(text, 9, &m, &rec));
    assert!(err.unwrap().is::<MalformedStream>());
    assert_eq!(rec.only().outcome, Outcome::Malformed);
}

#[test]
fn dropped_early_reports_the_estimate_once() {
    let text = anthropic_sse();
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let mut body = Box::pin(metered(&text, 150, &m, &rec));
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..4 {
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }
    assert!(body.first_token_seen() || body.events_seen() > 0);
    assert!(rec.reports().is_empty(), "nothing before the end");
    drop(body);
    let r = rec.only();
    assert_eq!(r.outcome, Outcome::DroppedEarly);
    assert_eq!(r.source, UsageSource::Estimated);

    // A JSON body dropped before its end: input estimate, output from the
    // bytes seen.
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, false);
    let mut body = Box::pin(metered(CHAT_JSON, 100, &m, &rec));
    let _ = body.as_mut().poll_frame(&mut cx);
    drop(body);
    let r = rec.only();
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::DroppedEarly, UsageSource::Estimated)
    );
    assert_eq!(r.usage, Usage::new(1000, 25));
}

#[test]
fn complete_body_reports_actual_usage_once() {
    let text = anthropic_sse();
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let mut body = Box::pin(metered(&text, 64, &m, &rec));
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        frame.unwrap();
    }
    assert!(body.is_end_stream());
    // Polling past the end and dropping report nothing more.
    assert!(matches!(
        body.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
    drop(body);
    let r = rec.only();
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::Completed, UsageSource::Actual)
    );
}

#[test]
fn a_client_that_stops_at_the_terminal_event_completed() {
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, true);
    // The whole stream in one frame, then a body that never says it ended.
    let mut body = Box::pin(MeteredBody::new(
        chunks([CHAT_SSE.as_bytes().to_vec(), Vec::new()]),
        Some(&m),
        rec.observers(),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let _ = body.as_mut().poll_frame(&mut cx);
    drop(body);
    let r = rec.only();
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::Completed, UsageSource::Actual)
    );
}

#[test]
fn oversized_json_gives_up_on_usage() {
    let mut big = String::from("{\"choices\":[{\"message\":{\"content\":\"");
    big.push_str(&"x".repeat(llm_tower::metering::JSON_RETAIN_LIMIT));
    big.push_str(
        "\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    );
    let rec = Recorder::default();
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, false);
    let (out, err) = drain(metered(&big, 64 * 1024, &m, &rec));
    assert!(err.is_none());
    assert_eq!(out.len(), big.len());
    let r = rec.only();
    assert_eq!(r.source, UsageSource::Estimated);
    assert_eq!(r.usage.input_tokens, 1000);
    assert_eq!(r.usage.output_tokens, (big.len() as u64).div_ceil(4));
}

#[test]
fn oversized_stream_event_gives_up_on_usage_but_passes_every_byte() {
    let mut big =
        String::from("event: message_start\ndata: {\"type\":\"message_start\",\"pad\":\"");
    big.push_str(&"x".repeat(llm_tower::metering::MAX_EVENT_SIZE + (1 << 20)));
    big.push_str("\"}\n\n");
    big.push_str(&anthropic_sse());
    let rec = Recorder::default();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let (out, err) = drain(metered(&big, 256 * 1024, &m, &rec));
    assert!(
        err.is_none(),
        "no error for a stream that could not be read: {err:?}"
    );
    assert_eq!(out.len(), big.len());
    let r = rec.only();
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::Completed, UsageSource::Estimated)
    );
    assert_eq!(r.usage.input_tokens, 1000);
}

#[test]
fn formats_are_inferred_without_metadata() {
    for (text, want) in [
        (anthropic_sse(), Usage::new(1225, 15)),
        (CHAT_SSE.to_owned(), Usage::new(1310, 10)),
        (GEMINI_SSE.to_owned(), Usage::new(8, 12)),
        (RESPONSES_SSE.to_owned(), Usage::new(37, 11)),
    ] {
        let rec = Recorder::default();
        let body = MeteredBody::with_kind(split(&text, 50), BodyKind::Sse, None, rec.observers());
        let (_, err) = drain(body);
        assert!(err.is_none(), "{err:?}");
        let r = rec.only();
        assert_eq!(r.usage.total_tokens(), want.total_tokens(), "{text:.40}");
        assert!(r.is_actual());
    }
}

// ------------------------------------------------------ through the layer

async fn through_layer(
    res: http::Response<Full<Bytes>>,
    meta: Option<RequestMeta>,
) -> (Recorder, http::Response<MeteredBody<Full<Bytes>>>) {
    let rec = Recorder::default();
    let svc = ServiceBuilder::new()
        .layer(MeterLayer::new())
        .service(service_fn(move |req: http::Request<()>| {
            assert!(req.extensions().get::<UsageObservers>().is_none(), "taken");
            let res = res.clone();
            async move { Ok::<_, BoxError>(res) }
        }));
    let mut req = http::Request::new(());
    if let Some(m) = meta {
        req.extensions_mut().insert(m);
    }
    let sink = rec.clone();
    UsageObservers::register(
        &mut req,
        Arc::new(move |r: &UsageReport| sink.0.lock().unwrap().push(r.clone())),
    );
    let res = svc.oneshot(req).await.unwrap();
    (rec, res)
}

#[tokio::test]
async fn layer_meters_sse_by_content_type() {
    let res = http::Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(Full::new(Bytes::from(anthropic_sse())))
        .unwrap();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, false);
    let (rec, res) = through_layer(res, Some(m)).await;
    assert_eq!(res.body().kind(), BodyKind::Sse);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, anthropic_sse().as_bytes());
    let r = rec.only();
    assert_eq!(r.status, Some(http::StatusCode::OK));
    assert_eq!(r.usage.output_tokens, 15);
    assert_eq!(r.provider, Some(Provider::Anthropic));
}

#[tokio::test]
async fn layer_reports_zero_for_error_responses() {
    let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#;
    let res = http::Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (rec, res) = through_layer(res, None).await;
    assert_eq!(res.body().kind(), BodyKind::Unmetered);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, body.as_bytes());
    let r = rec.only();
    assert_eq!(r.status, Some(http::StatusCode::TOO_MANY_REQUESTS));
    assert_eq!((r.usage, r.source), (Usage::default(), UsageSource::Actual));
}

#[tokio::test]
async fn layer_reports_transport_errors_and_cancellation() {
    let rec = Recorder::default();
    let svc = ServiceBuilder::new()
        .layer(MeterLayer::new())
        .service(service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<Full<Bytes>>, BoxError>("connection refused".into())
        }));
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(meta(Provider::OpenAi, WireFormat::OpenAiChat, false));
    let mut obs = rec.observers();
    let sink = rec.clone();
    obs.push(Arc::new(move |_: &UsageReport| {
        assert_eq!(sink.0.lock().unwrap().len(), 1, "in registration order");
    }));
    req.extensions_mut().insert(obs);
    assert!(svc.oneshot(req).await.is_err());
    let r = rec.only();
    assert_eq!(r.outcome, Outcome::TransportError);
    assert_eq!(r.status, None);
    assert_eq!(r.model.as_deref(), Some("test-model"));

    // A response future dropped before the response.
    let rec = Recorder::default();
    let mut svc = llm_tower::metering::Meter::new(service_fn(|_req: http::Request<()>| {
        std::future::pending::<Result<http::Response<Full<Bytes>>, BoxError>>()
    }));
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(meta(Provider::OpenAi, WireFormat::OpenAiChat, false));
    req.extensions_mut().insert(rec.observers());
    let fut = tower::Service::call(&mut svc, req);
    drop(fut);
    let r = rec.only();
    assert_eq!(
        (r.outcome, r.usage),
        (Outcome::Cancelled, Usage::new(1000, 0))
    );
}

// ------------------------------------------------------------ properties

/// Events as the parser dispatches them.
fn events(chunks: &[&[u8]]) -> Vec<(Option<String>, Vec<u8>)> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            out.push((e.event.map(str::to_owned), e.data.to_vec()))
        });
    }
    out
}

fn cut_at(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.iter_mut().for_each(|c| *c %= bytes.len() + 1);
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut from = 0;
    for c in cuts {
        parts.push(&bytes[from..c]);
        from = c;
    }
    parts.push(&bytes[from..]);
    parts
}

fn streams() -> Vec<(WireFormat, String)> {
    vec![
        (WireFormat::AnthropicMessages, anthropic_sse()),
        // \r\n and bare \r line ends, a BOM, comments.
        (
            WireFormat::AnthropicMessages,
            format!(
                "\u{feff}: hello\r\n\r\n{}",
                anthropic_sse().replace('\n', "\r\n")
            ),
        ),
        (WireFormat::OpenAiChat, CHAT_SSE.replace('\n', "\r")),
        (WireFormat::GeminiGenerateContent, GEMINI_SSE.to_owned()),
        (WireFormat::OpenAiResponses, RESPONSES_SSE.to_owned()),
    ]
}

proptest! {
    #[test]
    fn split_anywhere_gives_the_same_result(
        which in 0usize..5,
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let (format, text) = &streams()[which];
        let bytes = text.as_bytes();
        let parts = cut_at(bytes, cuts);
        prop_assert_eq!(events(&parts), events(&[bytes]));

        let run = |parts: Vec<Vec<u8>>| {
            let rec = Recorder::default();
            let m = meta(Provider::OpenAi, *format, true);
            let body = MeteredBody::new(chunks(parts), Some(&m), rec.observers());
            let (out, err) = drain(body);
            (out, err.map(|e| e.to_string()), rec.only())
        };
        let whole = run(vec![bytes.to_vec()]);
        let split = run(parts.iter().map(|p| p.to_vec()).collect());
        prop_assert!(whole.1.is_none());
        prop_assert!(whole.2.is_actual());
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn sse_parser_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut p = SseParser::new();
        let mut tracker = StreamUsage::new(None);
        for c in &chunks {
            p.feed(c, |e| { tracker.on_event(e.event, e.data); });
        }
        let _ = (p.has_pending(), tracker.usage(), tracker.is_complete());
    }

    #[test]
    fn stream_tracker_never_panics(
        name in proptest::option::of("(message_start|message_delta|error|response.completed|x)"),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        format in 0usize..5,
    ) {
        let formats = [None, Some(WireFormat::OpenAiChat), Some(WireFormat::OpenAiResponses),
            Some(WireFormat::AnthropicMessages), Some(WireFormat::GeminiGenerateContent)];
        let mut tracker = StreamUsage::new(formats[format]);
        tracker.on_event(name.as_deref(), &data);
        let _ = tracker.usage();
    }

    #[test]
    fn usage_scanner_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), format in 0usize..5) {
        let formats = [None, Some(WireFormat::OpenAiChat), Some(WireFormat::OpenAiResponses),
            Some(WireFormat::AnthropicMessages), Some(WireFormat::GeminiGenerateContent)];
        let _ = llm_tower::provider::usage::scan_json(formats[format], &body);
    }

    #[test]
    fn usage_scanner_never_panics_near_keys(
        prefix in "[ {}\\[\\]\":,a-z0-9\\\\]{0,40}",
        key in "(\"usage\"|\"usageMetadata\"|\"finish_reason\"|\"stop_reason\"|\"status\"|\"finishReason\")",
        suffix in "[ {}\\[\\]\":,a-z0-9_\\\\]{0,60}",
    ) {
        let body = format!("{prefix}{key}{suffix}");
        for f in [None, Some(WireFormat::OpenAiChat), Some(WireFormat::OpenAiResponses),
            Some(WireFormat::AnthropicMessages), Some(WireFormat::GeminiGenerateContent)] {
            let _ = llm_tower::provider::usage::scan_json(f, body.as_bytes());
        }
    }
}

#[test]
fn bodies_keep_their_data_type() {
    fn assert_body<B: Body<Data = Bytes, Error = BoxError>>(_: &B) {}
    let body = MeteredBody::new(Full::new(Bytes::new()), None, UsageObservers::new());
    assert_body(&body);
    let _ = Pin::new(&mut Box::pin(body));
}

#[test]
fn every_two_piece_split_gives_the_same_result() {
    for (format, text) in streams() {
        let bytes = text.as_bytes();
        let want = events(&[bytes]);
        let m = meta(Provider::OpenAi, format, true);
        let rec = Recorder::default();
        drain(MeteredBody::new(
            chunks([bytes.to_vec()]),
            Some(&m),
            rec.observers(),
        ));
        let whole = rec.only();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(events(&[a, b]), want, "{format:?} cut at {cut}");
            let rec = Recorder::default();
            let (out, err) = drain(MeteredBody::new(
                chunks([a.to_vec(), b.to_vec()]),
                Some(&m),
                rec.observers(),
            ));
            assert!(err.is_none());
            assert_eq!(out, bytes);
            assert_eq!(rec.only(), whole, "{format:?} cut at {cut}");
        }
    }
}

// ------------------------------------------------------------ attempt gates

mod gates {
    use std::{
        fmt,
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use llm_tower::metering::{Admission, Attempt, AttemptGate, Meter, UsageObserver};
    use tokio::sync::oneshot;
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
    use tower_test::mock;

    use super::*;

    /// What a gate refuses with.
    #[derive(Debug, PartialEq)]
    struct OverBudget(u32);

    impl fmt::Display for OverBudget {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "over budget by {}", self.0)
        }
    }

    impl std::error::Error for OverBudget {}

    type Req = http::Request<()>;
    type Res = http::Response<Full<Bytes>>;

    fn ok_response() -> Res {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(CHAT_JSON)))
            .unwrap()
    }

    fn request(rec: &Recorder, gate: AttemptGate) -> Req {
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(meta(Provider::OpenAi, WireFormat::OpenAiChat, false));
        req.extensions_mut().insert(rec.observers());
        AttemptGate::insert(&mut req, gate);
        req
    }

    fn observer(rec: &Recorder) -> Arc<dyn UsageObserver> {
        let sink = rec.0.clone();
        Arc::new(move |r: &UsageReport| sink.lock().unwrap().push(r.clone()))
    }

    /// A gate answering with `answer` each time, counting its calls.
    fn counting(
        answer: impl Fn() -> Admission + Send + Sync + 'static,
    ) -> (AttemptGate, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = calls.clone();
        let gate = AttemptGate::new(move |_: &Attempt<'_>| {
            n.fetch_add(1, Ordering::SeqCst);
            answer()
        });
        (gate, calls)
    }

    /// Sets its flag when dropped.
    struct DropGuard(Arc<AtomicBool>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn now_adds_the_gates_observer_after_the_requests_own() {
        let (own, gated) = (Recorder::default(), Recorder::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let seen_model = Arc::new(Mutex::new(None));
        let (o1, o2, seen) = (order.clone(), order.clone(), seen_model.clone());
        let gate_obs = observer(&gated);
        let gate = AttemptGate::new(move |a: &Attempt<'_>| {
            *seen.lock().unwrap() = a.meta().and_then(|m| m.model()).map(str::to_owned);
            let (obs, o2) = (gate_obs.clone(), o2.clone());
            Admission::Now(Some(Arc::new(move |r: &UsageReport| {
                o2.lock().unwrap().push("gate");
                obs.on_usage(r)
            })))
        });
        let mut req = request(&own, gate);
        UsageObservers::register(
            &mut req,
            Arc::new(move |_: &UsageReport| o1.lock().unwrap().push("request")),
        );
        let svc = Meter::new(service_fn(|req: Req| async move {
            assert!(req.extensions().get::<AttemptGate>().is_none(), "taken");
            Ok::<_, BoxError>(ok_response())
        }));
        let res = svc.oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(seen_model.lock().unwrap().as_deref(), Some("test-model"));
        let (a, b) = (own.only(), gated.only());
        assert_eq!(a, b, "the same report");
        assert_eq!(
            (b.usage, b.outcome),
            (Usage::new(19, 10), Outcome::Completed)
        );
        assert_eq!(*order.lock().unwrap(), ["request", "gate"]);
    }

    #[tokio::test(start_paused = true)]
    async fn now_without_observer_and_no_gate_behave_as_before() {
        for gate in [
            Some(AttemptGate::new(|_: &Attempt<'_>| Admission::Now(None))),
            None,
        ] {
            let rec = Recorder::default();
            let mut req = http::Request::new(());
            req.extensions_mut().insert(rec.observers());
            if let Some(g) = gate {
                AttemptGate::insert(&mut req, g);
            }
            let svc = Meter::new(service_fn(|_: Req| async {
                Ok::<_, BoxError>(ok_response())
            }));
            let res = svc.oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
            assert_eq!(rec.only().usage, Usage::new(19, 10));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn later_sends_only_once_the_gate_admits_with_the_service_polled_ready() {
        let (tx, rx) = oneshot::channel::<()>();
        let rx = Mutex::new(Some(rx));
        let (own, gated) = (Recorder::default(), Recorder::default());
        let gate_obs = observer(&gated);
        let gate = AttemptGate::new(move |_: &Attempt<'_>| {
            let rx = rx.lock().unwrap().take().expect("consulted once");
            let obs = gate_obs.clone();
            Admission::later(async move {
                rx.await?;
                Ok(Some(obs))
            })
        });

        let (mock, mut handle) = mock::pair::<Req, Res>();
        let mut svc = mock::Spawn::new(Meter::new(mock));
        // One call allowed: a clone of the mock that was not polled ready
        // panics when called.
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
        let mut fut = tokio_test::task::spawn(svc.call(request(&own, gate)));

        assert_pending!(fut.poll());
        assert_pending!(handle.poll_request(), "nothing sent while the gate waits");
        assert!(own.reports().is_empty());

        tx.send(()).unwrap();
        assert!(fut.is_woken());
        assert_pending!(fut.poll());
        let (req, send) = assert_ready!(handle.poll_request()).expect("sent");
        assert!(req.extensions().get::<AttemptGate>().is_none(), "taken");
        assert!(req.extensions().get::<UsageObservers>().is_none(), "taken");
        send.send_response(ok_response());
        let res = assert_ready_ok!(fut.poll());
        res.into_body().collect().await.unwrap();
        assert_eq!(own.only().usage, Usage::new(19, 10));
        assert_eq!(gated.only().usage, Usage::new(19, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_or_denied_later_sends_nothing_and_reports_nothing() {
        let refuse = || Admission::Refuse(Box::new(OverBudget(3)));
        let deny = || Admission::later(async { Err(OverBudget(3).into()) });
        let answers: [Box<dyn Fn() -> Admission + Send + Sync>; 2] =
            [Box::new(refuse), Box::new(deny)];
        for answer in answers {
            let (gate, calls) = counting(answer);
            let rec = Recorder::default();
            let (mock, mut handle) = mock::pair::<Req, Res>();
            let mut svc = mock::Spawn::new(Meter::new(mock));
            handle.allow(1);
            assert_ready_ok!(svc.poll_ready());
            let mut fut = tokio_test::task::spawn(svc.call(request(&rec, gate)));
            let err = assert_ready!(fut.poll()).unwrap_err();
            assert_eq!(err.downcast_ref::<OverBudget>(), Some(&OverBudget(3)));
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_pending!(handle.poll_request(), "never sent");
            drop(fut);
            assert!(rec.reports().is_empty(), "{:?}", rec.reports());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_call_while_the_gate_waits_drops_its_future() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let gate = AttemptGate::new(move |_: &Attempt<'_>| {
            let guard = DropGuard(flag.clone());
            Admission::later(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(None)
            })
        });
        let rec = Recorder::default();
        let (mock, mut handle) = mock::pair::<Req, Res>();
        let mut svc = mock::Spawn::new(Meter::new(mock));
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
        let mut fut = tokio_test::task::spawn(svc.call(request(&rec, gate)));
        assert_pending!(fut.poll());
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_pending!(fut.poll());
        assert!(!dropped.load(Ordering::SeqCst));
        drop(fut);
        assert!(dropped.load(Ordering::SeqCst), "the gate's future dropped");
        assert_pending!(handle.poll_request(), "never sent");
        assert!(rec.reports().is_empty(), "nothing sent, nothing reported");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_meter_inside_does_not_consult_the_gate_again() {
        let gated = Recorder::default();
        let obs = observer(&gated);
        let (gate, calls) = counting(move || Admission::Now(Some(obs.clone())));
        let rec = Recorder::default();
        let svc = Meter::new(Meter::new(service_fn(|req: Req| async move {
            assert!(req.extensions().get::<AttemptGate>().is_none(), "taken");
            Ok::<_, BoxError>(ok_response())
        })));
        let res = svc.oneshot(request(&rec, gate)).await.unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(rec.only().usage, Usage::new(19, 10));
        assert_eq!(gated.only().usage, Usage::new(19, 10));
    }

    #[cfg(feature = "retry")]
    #[tokio::test(start_paused = true)]
    async fn under_retry_the_gate_is_consulted_once_per_attempt() {
        use llm_tower::retry::{Backoff, Jitter, RetryConfig, RetryLayer};
        use std::time::Duration;
        use tower::Layer;

        let unavailable = || {
            http::Response::builder()
                .status(503)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"overloaded"}}"#,
                )))
                .unwrap()
        };
        let answers = Arc::new(Mutex::new(vec![
            ok_response(),
            unavailable(),
            unavailable(),
        ]));
        let sent = Arc::new(AtomicUsize::new(0));
        let (a, s) = (answers.clone(), sent.clone());
        let inner = service_fn(move |_: http::Request<String>| {
            s.fetch_add(1, Ordering::SeqCst);
            let res = a.lock().unwrap().pop().expect("an answer left");
            std::future::ready(Ok::<_, Infallible>(res))
        });

        let gated = Recorder::default();
        let obs = observer(&gated);
        // Admits each attempt after a pause of its own, as a gate waiting
        // for its store would.
        let (gate, calls) = counting(move || {
            let obs = obs.clone();
            Admission::later(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Some(obs))
            })
        });
        let retry = RetryLayer::try_from(
            RetryConfig::new()
                .max_attempts(3)
                .backoff(Backoff {
                    base: Duration::from_millis(100),
                    factor: 2.0,
                    cap: Duration::from_secs(1),
                    jitter: Jitter::None,
                })
                .server_delay_jitter(Duration::ZERO),
        )
        .unwrap();
        let svc = retry.layer(MeterLayer::new().layer(inner));

        let rec = Recorder::default();
        let mut req = http::Request::post("http://llm.test/v1/chat/completions")
            .body(r#"{"model":"test-model"}"#.to_owned())
            .unwrap();
        req.extensions_mut()
            .insert(meta(Provider::OpenAi, WireFormat::OpenAiChat, false));
        req.extensions_mut().insert(rec.observers());
        AttemptGate::insert(&mut req, gate);
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();

        assert_eq!(sent.load(Ordering::SeqCst), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "once per attempt");
        let reports = gated.reports();
        assert_eq!(reports.len(), 3, "one report per attempt: {reports:?}");
        assert_eq!(
            reports.iter().map(|r| r.status).collect::<Vec<_>>(),
            [Some(http::StatusCode::SERVICE_UNAVAILABLE); 2]
                .into_iter()
                .chain([Some(http::StatusCode::OK)])
                .collect::<Vec<_>>()
        );
        assert_eq!(reports[2].usage, Usage::new(19, 10));
        assert_eq!(rec.reports().len(), 3, "the request's own observers too");
    }
}
