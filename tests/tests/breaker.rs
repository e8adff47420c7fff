//! The circuit breaker inside the recommended stack: bounded per-key state
//! whatever the requests name, an operator's isolation that reaches the
//! calls it names, listeners free to steer the breaker, and an open breaker
//! that fails fast even in front of a saturated service.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Request;
use llm_tower::{
    circuit_breaker::{BreakerKey, BreakerState, CircuitBreakerLayer, CircuitOpen},
    metering::MeterLayer,
    request::PrepareLayer,
    retry::RetryLayer,
};
use llm_tower_mock::{Fault, Provider, Rule};
use support::*;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, limit::ConcurrencyLimitLayer, util::BoxCloneService};

/// An OpenAI chat request naming `model`.
fn for_model(mock: &llm_tower_mock::MockServer, model: &str) -> Request<String> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    Request::post(format!("{}/v1/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn breakers_stay_bounded_whatever_models_the_requests_name() {
    let mock = mock(vec![]).await;
    let tuning = Tuning {
        breaker: Tuning::new().breaker.max_keys(64),
        ..Tuning::new()
    };
    let stack = Stack::recommended(&tuning);
    for i in 0..1_000 {
        let answer = stack.call(for_model(&mock, &format!("model-{i}"))).await;
        assert!(answer.is_clean(), "{}", answer.describe());
    }
    let kept = stack.breaker.states().len();
    assert!(
        kept <= 64,
        "{kept} breakers kept for 1000 distinct models, cap 64"
    );
}

#[tokio::test(start_paused = true)]
async fn isolating_a_model_by_name_reaches_its_calls() {
    let mock = mock(vec![]).await;
    let stack = Stack::recommended(&Tuning::new());
    // As the module docs show: a name, no provider.
    stack.breaker.isolate(&BreakerKey::named(OPENAI_MODEL));
    let answer = stack.call(chat(&mock, Provider::OpenAi, false, "hi")).await;
    assert!(
        find::<CircuitOpen>(answer.err()).is_some(),
        "{}",
        answer.describe()
    );
    assert_eq!(mock.journal().len(), 0, "nothing reached the provider");
    assert_eq!(stack.breaker_state(OPENAI_MODEL), BreakerState::Isolated);
    // Other models are untouched, and reset puts the model back.
    let other = stack
        .call(chat(&mock, Provider::Anthropic, false, "hi"))
        .await;
    assert!(other.is_clean(), "{}", other.describe());
    stack.breaker.reset(&BreakerKey::named(OPENAI_MODEL));
    let back = stack.call(chat(&mock, Provider::OpenAi, false, "hi")).await;
    assert!(back.is_clean(), "{}", back.describe());
}

#[tokio::test(start_paused = true)]
async fn a_listener_may_steer_the_breaker_from_a_transition() {
    let mock = mock(vec![Rule::new(Fault::Overloaded).times(3)]).await;
    let tuning = Tuning::new();
    let layer_slot: Arc<Mutex<Option<llm_tower::circuit_breaker::CircuitBreakerHandle>>> =
        Arc::default();
    let slot = layer_slot.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let breaker = CircuitBreakerLayer::try_from(tuning.breaker.clone())
        .unwrap()
        .on_transition(move |t| {
            log.lock().unwrap().push((t.from, t.to));
            // An operator's hook that closes the breaker again at once:
            // called after the breaker's lock, it must not deadlock.
            if t.to == BreakerState::Open
                && let Some(h) = slot.lock().unwrap().as_ref()
            {
                h.reset(&t.key);
            }
        });
    *layer_slot.lock().unwrap() = Some(breaker.handle());
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(RetryLayer::try_from(tuning.retry.clone()).unwrap())
        .layer(breaker)
        .layer(MeterLayer::new())
        .service(client());
    let svc: Svc = BoxCloneService::new(ServiceExt::<Request<String>>::map_response(svc, |r| {
        r.map(http_body_util::BodyExt::boxed_unsync)
    }));
    let call = call(&svc, chat(&mock, Provider::OpenAi, false, "hi"));
    let answer = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("no deadlock");
    assert!(answer.error.is_some() || answer.status.is_some());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(BreakerState::Closed, BreakerState::Open))
            && seen.contains(&(BreakerState::Open, BreakerState::Closed)),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_in_front_of_a_saturated_service() {
    // One call at a time below the breaker, and that one hangs for 30 s.
    let mock = mock(vec![
        Rule::new(Fault::SlowFirstByte {
            delay: Duration::from_secs(30),
        })
        .times(1),
    ])
    .await;
    let tuning = Tuning::new();
    let breaker = CircuitBreakerLayer::try_from(tuning.breaker.clone()).unwrap();
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(breaker)
        .layer(ConcurrencyLimitLayer::new(1))
        .layer(MeterLayer::new())
        .service(client());
    let svc: Svc = BoxCloneService::new(ServiceExt::<Request<String>>::map_response(svc, |r| {
        r.map(http_body_util::BodyExt::boxed_unsync)
    }));
    let hung = tokio::spawn(
        svc.clone()
            .oneshot(chat(&mock, Provider::OpenAi, false, "hang")),
    );
    // Let the first call take the only permit.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        mock.journal().len(),
        1,
        "the hung call holds the only permit"
    );
    handle.isolate(&BreakerKey::named(OPENAI_MODEL));
    let start = Instant::now();
    let answer = call(&svc, chat(&mock, Provider::OpenAi, false, "refused")).await;
    assert!(
        find::<CircuitOpen>(answer.err()).is_some(),
        "{}",
        answer.describe()
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not after the hung call"
    );
    hung.abort();
}
