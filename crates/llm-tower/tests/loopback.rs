//! The shared vocabulary over a real socket: prepare and meter around
//! hyper-util's client, against a server on 127.0.0.1 whose stream the test
//! releases event by event.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use llm_tower::{
    BoxError,
    metering::{
        MeterLayer, Outcome, StreamProgress, TruncatedStream, UsageObservers, UsageReport,
        UsageSource,
    },
    provider::Provider,
    request::{PrepareLayer, ReplayBody},
};
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt};

type Events = mpsc::UnboundedSender<Option<&'static str>>;

/// A server that streams whatever the test sends, one chunk per message;
/// `None` ends the stream.
async fn server() -> (SocketAddr, mpsc::UnboundedReceiver<Events>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns_tx, conns_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conns_tx = conns_tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let conns_tx = conns_tx.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let (tx, rx) = mpsc::unbounded_channel::<Option<&'static str>>();
                        conns_tx.send(tx).unwrap();
                        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                            match rx.recv().await {
                                Some(Some(chunk)) => Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                                        chunk.as_bytes(),
                                    ))),
                                    rx,
                                )),
                                _ => None,
                            }
                        });
                        let body: BoxBody<Bytes, Infallible> = StreamBody::new(chunks).boxed();
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .header("request-id", "req_loop")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, conns_rx)
}

/// Prepare and meter around hyper-util's client.
fn stack() -> impl tower::Service<
    Request<String>,
    Response = Response<llm_tower::metering::MeteredBody<hyper::body::Incoming>>,
    Error = BoxError,
    Future: Send,
> + Send
+ 'static {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(MeterLayer::new())
        .service(client)
}

const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":42,\"output_tokens\":1}}}\n\n";
const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";
const END: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn request(addr: SocketAddr, reports: &Arc<Mutex<Vec<UsageReport>>>) -> Request<String> {
    let mut req = Request::post(format!("http://{addr}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"claude-haiku-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#.to_owned())
        .unwrap();
    let sink = reports.clone();
    UsageObservers::register(
        &mut req,
        Arc::new(move |r: &UsageReport| sink.lock().unwrap().push(r.clone())),
    );
    req
}

#[tokio::test]
async fn events_reach_the_caller_as_they_arrive_and_usage_is_reported_once() {
    let (addr, mut conns) = server().await;
    let svc = stack();
    let reports = Arc::default();

    let call = tokio::spawn(svc.oneshot(request(addr, &reports)));
    let events = conns.recv().await.unwrap();
    events.send(Some(START)).unwrap();
    let resp = call.await.unwrap().unwrap();
    let mut body = resp.into_body();

    // The first event arrives while the server still holds the rest: the
    // body is passed through, not collected.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap();
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), START);
    events.send(Some(DELTA)).unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, DELTA);
    assert!(
        reports.lock().unwrap().is_empty(),
        "no report before the end"
    );

    events.send(Some(END)).unwrap();
    events.send(None).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, END);

    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::Completed, UsageSource::Actual)
    );
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (42, 9));
    assert_eq!(r.provider, Some(Provider::Anthropic));
    assert_eq!(r.model.as_deref(), Some("claude-haiku-4-5"));
}

#[tokio::test]
async fn a_connection_cut_mid_stream_is_recorded_as_a_truncation_with_the_estimate() {
    let (addr, mut conns) = server().await;
    let svc = stack();
    let reports = Arc::default();

    let call = tokio::spawn(svc.oneshot(request(addr, &reports)));
    let events = conns.recv().await.unwrap();
    events.send(Some(START)).unwrap();
    events.send(Some(DELTA)).unwrap();
    // The stream ends without `message_stop`.
    events.send(None).unwrap();
    let resp = call.await.unwrap().unwrap();
    let progress = StreamProgress::get(&resp).cloned().expect("attached");
    // The meter observes: the bytes pass as they came, and the cut is
    // recorded for the layers that act on it (retry turns it into an error).
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), START.len() + DELTA.len());
    let err: BoxError = progress.failure_error().expect("recorded");
    assert!(err.is::<TruncatedStream>(), "{err}");

    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(
        (r.outcome, r.source),
        (Outcome::Truncated, UsageSource::Estimated)
    );
    // The input the provider reported, the output estimated from the text.
    assert_eq!(r.usage.input_tokens, 42);
}

#[tokio::test]
async fn dropping_the_body_early_reports_once() {
    let (addr, mut conns) = server().await;
    let svc = stack();
    let reports: Arc<Mutex<Vec<UsageReport>>> = Arc::default();

    let call = tokio::spawn(svc.oneshot(request(addr, &reports)));
    let events = conns.recv().await.unwrap();
    events.send(Some(START)).unwrap();
    let resp = call.await.unwrap().unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].outcome, reports[0].source),
        (Outcome::DroppedEarly, UsageSource::Estimated)
    );
    assert_eq!(reports[0].usage.input_tokens, 42);
}
