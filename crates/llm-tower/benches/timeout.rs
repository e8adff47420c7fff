//! TimeoutLayer's happy path, side by side with the bare service it wraps.
//!
//! `cargo bench -p llm-tower --features timeout --bench timeout -- --warm-up-time 1 --measurement-time 3`

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    hint::black_box,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::{Body, Frame};
use llm_tower::{
    request::RequestMeta,
    timeout::{TimeoutConfig, TimeoutLayer},
};
use tower::{Layer, Service, service_fn};

/// A body yielding prepared chunks; with `gaps`, it is pending once before
/// each chunk, as a network stream is, which arms the idle timer.
struct Chunks {
    chunks: VecDeque<Bytes>,
    gaps: bool,
    ready: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.gaps && !std::mem::replace(&mut self.ready, true) {
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.chunks.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Polls until ready with a no-op waker (everything here becomes ready
/// without being woken).
fn block<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => n += f.data_ref().map_or(0, Bytes::len),
            Poll::Ready(_) => return n,
            Poll::Pending => {}
        }
    }
}

fn request(stream: bool) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(
        RequestMeta::new(None)
            .with_model("gpt-4o-mini")
            .with_stream(stream),
    );
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let json = Bytes::from(vec![b'x'; 1024]);
    let event =
        Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\" token\"}}]}\n\n");
    let make = |chunks: Vec<Bytes>, gaps: bool| {
        service_fn(move |_req: Request<()>| {
            let body = Chunks {
                chunks: chunks.clone().into(),
                gaps,
                ready: false,
            };
            let resp = Response::builder()
                .header(
                    "content-type",
                    if gaps {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(resp))
        })
    };
    let limits = TimeoutConfig::new()
        .total(Duration::from_secs(120))
        .attempt(Duration::from_secs(60))
        .first_byte(Duration::from_secs(30))
        .first_token(Duration::from_secs(20))
        .idle(Duration::from_secs(15))
        .stream(Duration::from_secs(55))
        .profile(
            "o3*",
            TimeoutConfig::new().first_token(Duration::from_secs(50)),
        );
    let layer = TimeoutLayer::new(limits).unwrap();

    let mut g = c.benchmark_group("timeout");
    let mut bare = make(vec![json.clone()], false);
    g.bench_function("json_1kb/bare", |b| {
        b.iter(|| {
            drain(
                block(bare.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut layered = layer.layer(make(vec![json.clone()], false));
    g.bench_function("json_1kb/timeout", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    // tower's own timeout, which stops at the headers, for scale.
    let mut tower_timeout = tower::timeout::TimeoutLayer::new(Duration::from_secs(30))
        .layer(make(vec![json.clone()], false));
    g.bench_function("json_1kb/tower_timeout", |b| {
        b.iter(|| {
            drain(
                block(tower_timeout.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let events = vec![event; 20];
    let mut bare = make(events.clone(), true);
    g.bench_function("sse_20_events_with_gaps/bare", |b| {
        b.iter(|| {
            drain(
                block(bare.call(black_box(request(true))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut layered = layer.layer(make(events, true));
    g.bench_function("sse_20_events_with_gaps/timeout", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request(true))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
