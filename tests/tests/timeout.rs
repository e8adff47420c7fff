//! A body that is always ready — its inner body never returns `Pending` —
//! still meets its limits. A plain tower test: no mock, no sockets.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use llm_tower::timeout::{Elapsed, Phase, TimeoutConfig, TimeoutLayer};
use tower::{Layer, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// The most frames read before the test gives up: 100 s of paused time.
const MAX_FRAMES: u32 = 100_000;

/// Reads a stream body that yields a token event at once, every time it is
/// polled, forever, through a timeout layer with `config`; the clock moves
/// 1 ms per frame. Returns the phase that elapsed (`None`: the body was
/// still going after [`MAX_FRAMES`]) and the frames read before it.
async fn read_always_ready(config: TimeoutConfig) -> (Option<Phase>, u32) {
    let svc =
        TimeoutLayer::try_from(config)
            .unwrap()
            .layer(service_fn(|_req: Request<String>| async {
                let frames = stream::repeat_with(|| {
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
                    )))
                });
                Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
            }));
    let req = Request::post("http://llm.test/v1/chat/completions")
        .body(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#.to_owned())
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    let mut read = 0;
    while read < MAX_FRAMES {
        match body.frame().await {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => match e.downcast_ref::<Elapsed>() {
                Some(elapsed) => return (Some(elapsed.phase()), read),
                None => panic!("not a timeout: {e}"),
            },
            None => panic!("the endless body ended"),
        }
        tokio::time::advance(MS).await;
    }
    (None, read)
}

#[tokio::test(start_paused = true)]
async fn an_always_ready_body_meets_its_total_limit() {
    let (result, read) = read_always_ready(TimeoutConfig::new().total(SEC)).await;
    let phase = result.expect("the body was still yielding after 100 s; the limit is 1 s");
    assert_eq!(phase, Phase::Total);
    assert!(
        // Checked at least every 16 frames in a row without a wait.
        (999..=1016).contains(&read),
        "cut after {read} frames of 1 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn an_always_ready_body_meets_its_stream_limit() {
    let (result, read) = read_always_ready(TimeoutConfig::new().stream(SEC)).await;
    let phase = result.expect("the body was still yielding after 100 s; the limit is 1 s");
    assert_eq!(phase, Phase::Stream);
    assert!(
        // Checked at least every 16 frames in a row without a wait.
        (999..=1016).contains(&read),
        "cut after {read} frames of 1 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn an_always_ready_body_meets_its_attempt_limit() {
    let (result, read) = read_always_ready(TimeoutConfig::new().attempt(SEC)).await;
    let phase = result.expect("the body was still yielding after 100 s; the limit is 1 s");
    assert_eq!(phase, Phase::Attempt);
    assert!(
        // Checked at least every 16 frames in a row without a wait.
        (999..=1016).contains(&read),
        "cut after {read} frames of 1 ms"
    );
}
