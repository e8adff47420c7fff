//! Breaker health shared through a store, with paused time: two layers over
//! one `MemoryStore` clone stand for two processes over one Redis.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response};
use http_body_util::BodyExt;
use llm_tower::{
    BoxError,
    circuit_breaker::{
        BreakerState, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, OpenDuration,
        Transition,
    },
    config::Valid,
    store::{MemoryStore, Store},
};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};

const SEC: Duration = Duration::from_secs(1);

/// The flag of the breaker of model `m`, with the default prefix.
const FLAG: &str = "llm-tower:breaker:m:open";

#[path = "support/breaker.rs"]
mod breaker_support;
use breaker_support::{ScriptedProvider as Provider, key, request};
mod faulty;
use faulty::{FaultyStore, Mode};

/// Two failures in a row open for 10 s (no jitter); shared, looked at
/// every second at most.
fn config(base: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig::new()
        .consecutive_failures(Some(2))
        .failure_rate(None)
        .open(OpenDuration {
            base,
            factor: 2.0,
            cap: 60 * SEC,
            jitter: 0.0,
        })
        .share(true)
        .share_refresh(SEC)
}

type Log = Arc<Mutex<Vec<(BreakerState, BreakerState, &'static str, Option<Duration>)>>>;

fn layer<St: Store + Clone>(config: CircuitBreakerConfig, store: St) -> (CircuitBreakerLayer, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let layer = CircuitBreakerLayer::with_store(config.build().unwrap(), store).on_transition(
        move |t: &Transition| {
            sink.lock()
                .unwrap()
                .push((t.from, t.to, t.reason, t.open_for));
        },
    );
    (layer, log)
}

/// Calls once and reads the body to its end.
async fn call<S, B>(svc: &mut S) -> Result<u16, BoxError>
where
    S: Service<Request<String>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let res = svc.ready().await?.call(request("m")).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}

fn open_err(e: BoxError) -> CircuitOpen {
    e.downcast_ref::<CircuitOpen>()
        .unwrap_or_else(|| panic!("not CircuitOpen: {e}"))
        .clone()
}

fn last(log: &Log) -> (BreakerState, BreakerState, &'static str, Option<Duration>) {
    *log.lock().unwrap().last().expect("a transition")
}

#[tokio::test(start_paused = true)]
async fn a_trip_in_one_layer_opens_the_other_within_share_refresh() {
    let store = MemoryStore::new();
    let (a, _) = layer(config(10 * SEC), store.clone());
    let (b, b_log) = layer(config(10 * SEC), store.clone());
    let (pa, pb) = (Provider::default(), Provider::default());
    let (mut sa, mut sb) = (a.layer(pa.service()), b.layer(pb.service()));

    // B looks at the flag with its first call: nothing.
    assert_eq!(call(&mut sb).await.unwrap(), 200);

    // A trips, and says so in the store for its open time.
    pa.set(503);
    for _ in 0..2 {
        assert_eq!(call(&mut sa).await.unwrap(), 503);
    }
    assert_eq!(a.handle().state(&key("m")), BreakerState::Open);
    assert_eq!(store.flag(FLAG).await.unwrap(), Some(10 * SEC));

    // Within its refresh period B goes on its own state...
    assert_eq!(call(&mut sb).await.unwrap(), 200);
    assert_eq!(pb.calls(), 2);

    // ...and one period later it has seen A's trip: it refuses without
    // having met a failure, for the rest of A's open time.
    advance(SEC).await;
    let open = open_err(call(&mut sb).await.unwrap_err());
    assert_eq!(open.state(), BreakerState::Open);
    assert_eq!(open.retry_after(), Some(9 * SEC));
    assert_eq!(pb.calls(), 2, "B's provider was not called");
    assert_eq!(b.handle().state(&key("m")), BreakerState::Open);
    assert_eq!(b.handle().open_for(&key("m")), Some(9 * SEC));
    assert_eq!(
        last(&b_log),
        (
            BreakerState::Closed,
            BreakerState::Open,
            "opened_elsewhere",
            Some(9 * SEC)
        )
    );

    // After the open time both let a probe through, and close on it.
    advance(9 * SEC).await;
    pa.set(200);
    assert_eq!(call(&mut sa).await.unwrap(), 200);
    assert_eq!(call(&mut sb).await.unwrap(), 200);
    assert_eq!(pb.calls(), 3);
    assert_eq!(a.handle().state(&key("m")), BreakerState::Closed);
    assert_eq!(b.handle().state(&key("m")), BreakerState::Closed);
    assert_eq!(
        last(&b_log),
        (
            BreakerState::HalfOpen,
            BreakerState::Closed,
            "probes_succeeded",
            None
        )
    );
    // The probes cleared the flag: nothing reopens.
    assert_eq!(store.flag(FLAG).await.unwrap(), None);
    advance(2 * SEC).await;
    assert_eq!(call(&mut sb).await.unwrap(), 200);
    assert_eq!(b.handle().store_errors(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_clears_the_shared_flag_for_the_others() {
    let store = MemoryStore::new();
    let (a, _) = layer(config(10 * SEC), store.clone());
    // A third process whose trip holds longer (its open time is 30 s).
    let (c, _) = layer(config(30 * SEC), store.clone());
    let (b, _) = layer(config(10 * SEC), store.clone());
    let (pa, pb, pc) = (
        Provider::default(),
        Provider::default(),
        Provider::default(),
    );
    let (mut sa, mut sb, mut sc) = (
        a.layer(pa.service()),
        b.layer(pb.service()),
        c.layer(pc.service()),
    );

    // A and C both look at the flag (nothing), then trip in the same
    // refresh period: neither hears of the other's trip first.
    call(&mut sa).await.unwrap();
    call(&mut sc).await.unwrap();
    pa.set(503);
    pc.set(503);
    for _ in 0..2 {
        call(&mut sa).await.unwrap();
    }
    for _ in 0..2 {
        call(&mut sc).await.unwrap();
    }
    assert_eq!(store.flag(FLAG).await.unwrap(), Some(30 * SEC));
    assert_eq!(c.handle().state(&key("m")), BreakerState::Open);

    // A's open time is over and its probe finds the provider back: the
    // flag goes, although C's trip had it for 20 s more.
    advance(10 * SEC).await;
    pa.set(200);
    assert_eq!(call(&mut sa).await.unwrap(), 200);
    assert_eq!(a.handle().state(&key("m")), BreakerState::Closed);
    assert_eq!(store.flag(FLAG).await.unwrap(), None);

    // B, which never saw a failure, is not held back by C's older word.
    assert_eq!(call(&mut sb).await.unwrap(), 200);
    assert_eq!(b.handle().state(&key("m")), BreakerState::Closed);
    assert_eq!(pb.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn sharing_is_off_by_default() {
    assert!(!CircuitBreakerConfig::default().share);
    let store = MemoryStore::new();
    let base = config(10 * SEC).share(CircuitBreakerConfig::default().share);
    let (a, _) = layer(base.clone(), store.clone());
    let (b, _) = layer(base, store.clone());
    let (pa, pb) = (Provider::default(), Provider::default());
    let (mut sa, mut sb) = (a.layer(pa.service()), b.layer(pb.service()));

    pa.set(503);
    for _ in 0..2 {
        call(&mut sa).await.unwrap();
    }
    assert_eq!(a.handle().state(&key("m")), BreakerState::Open);
    assert_eq!(store.flag(FLAG).await.unwrap(), None, "nothing written");

    // B never hears of A's trip.
    for _ in 0..3 {
        advance(SEC).await;
        assert_eq!(call(&mut sb).await.unwrap(), 200);
    }
    assert_eq!(pb.calls(), 3);
    assert_eq!(b.handle().state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn sharing_stays_within_one_prefix() {
    let store = MemoryStore::new();
    let (a, _) = layer(config(10 * SEC), store.clone());
    let (b, _) = layer(config(10 * SEC).prefix("other-fleet"), store.clone());
    let (pa, pb) = (Provider::default(), Provider::default());
    let (mut sa, mut sb) = (a.layer(pa.service()), b.layer(pb.service()));
    pa.set(503);
    for _ in 0..2 {
        call(&mut sa).await.unwrap();
    }
    assert_eq!(store.flag(FLAG).await.unwrap(), Some(10 * SEC));
    advance(SEC).await;
    assert_eq!(call(&mut sb).await.unwrap(), 200);
    assert_eq!(
        store.flag("other-fleet:breaker:m:open").await.unwrap(),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_fails_a_call_and_the_breaker_works_locally() {
    // A store that is down: every operation fails.
    let store = FaultyStore::new();
    store.set(Mode::Fail);
    let (a, log) = layer(config(10 * SEC), store.clone());
    let p = Provider::default();
    let mut svc = a.layer(p.service());

    // The flag cannot be read: the call goes on the local state.
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    assert_eq!(a.handle().store_errors(), 1);
    // Not looked at again within the refresh period.
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    assert_eq!(store.ops(), 1);

    // Failures trip it locally, although the trip cannot be shared.
    p.set(503);
    advance(SEC).await;
    for _ in 0..2 {
        assert_eq!(call(&mut svc).await.unwrap(), 503);
    }
    assert_eq!(
        last(&log),
        (
            BreakerState::Closed,
            BreakerState::Open,
            "consecutive_failures",
            Some(10 * SEC)
        )
    );
    let open = open_err(call(&mut svc).await.unwrap_err());
    assert_eq!(open.retry_after(), Some(10 * SEC));
    assert_eq!(p.calls(), 4);

    // Its probe closes it, although the flag cannot be cleared.
    advance(10 * SEC).await;
    p.set(200);
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    assert_eq!(a.handle().state(&key("m")), BreakerState::Closed);
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    // Two reads (at 0 s and 1 s), the set of the trip, the clear of the
    // close; none on the open path, none within a period of the close.
    assert_eq!(a.handle().store_errors(), 4);
    assert_eq!(store.ops(), 4);
}

#[test]
fn share_is_configured_as_data_and_checked() {
    let config: Valid<CircuitBreakerConfig> =
        serde_json::from_str(r#"{ "share": true, "share_refresh": "250ms", "prefix": "fleet" }"#)
            .unwrap();
    assert!(config.share);
    assert_eq!(config.share_refresh, Duration::from_millis(250));
    assert_eq!(config.prefix, "fleet");
    let defaults = CircuitBreakerConfig::default();
    assert_eq!(
        (defaults.share_refresh, &*defaults.prefix),
        (SEC, "llm-tower")
    );

    let e = CircuitBreakerConfig::new()
        .share(true)
        .prefix("")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "prefix");
    // An empty prefix is harmless while nothing is shared.
    CircuitBreakerConfig::new().prefix("").build().unwrap();
}
