//! The Redis store over TLS (`rediss://`, feature `redis-tls`), against a
//! `redis-server` with TLS on a port of its own and certificates made for
//! the test (`support/redis_tls.rs`): operations, an unknown CA, mutual
//! TLS, and misconfiguration. The whole store conformance suite also runs
//! over TLS (`store_conformance.rs`, module `redis_tls`).

use std::time::Duration;

use llm_tower::store::{Bucket, Quota, RedisStore, Reserve, Span, Store, Take};

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/redis_tls.rs"]
mod redis_tls_support;

fn quota() -> Quota {
    Quota::new(10, Duration::from_secs(1)).unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Rate-limit cells, a budget reservation settled, and a flag, all over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_runs_over_tls() {
    let Some((server, certs)) = redis_tls_support::server(false) else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    let store = RedisStore::builder(server.url())
        .prefix("tls")
        .timeout(TIMEOUT)
        .tls_root_certificate(certs.ca.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        store.take("cell", 4, quota()).await.unwrap(),
        Take::Allowed { remaining: 6 }
    );
    let day = Span::Fixed {
        ttl: Some(Duration::from_secs(86_400)),
    };
    let Reserve::Granted(r) = store
        .reserve(&[Bucket::new("day", 70, 100, day)], Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("70 of 100 refused");
    };
    store.settle(&r, &[30]).await.unwrap();
    let balance = store.balance("day", day).await.unwrap();
    assert_eq!((balance.spent, balance.reserved), (30, 0));
    store
        .set_flag("pause", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(store.flag("pause").await.unwrap().is_some());
}

/// A server whose CA the client does not trust: the system's roots, or
/// another CA given as root. Connecting fails with an error, never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let Some((server, _certs)) = redis_tls_support::server(false) else {
        return;
    };
    let err = RedisStore::builder(server.url())
        .timeout(TIMEOUT)
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");

    let (other, _, _) = redis_tls_support::certificates();
    let err = RedisStore::builder(server.url())
        .timeout(TIMEOUT)
        .tls_root_certificate(other.ca)
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
}

/// A server that authenticates its clients: refused without a client
/// certificate, served with the one its CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let Some((server, certs)) = redis_tls_support::server(true) else {
        return;
    };
    let without = RedisStore::builder(server.url())
        .timeout(TIMEOUT)
        .tls_root_certificate(certs.ca.clone())
        .connect()
        .await;
    // TLS 1.3 may finish the handshake before the server checks for a
    // client certificate: then the first operation fails instead.
    if let Ok(store) = without {
        store.take("cell", 1, quota()).await.unwrap_err();
    }

    let store = RedisStore::builder(server.url())
        .prefix("mtls")
        .timeout(TIMEOUT)
        .tls_root_certificate(certs.ca.clone())
        .tls_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        store.take("cell", 1, quota()).await.unwrap(),
        Take::Allowed { remaining: 9 }
    );
}

/// Certificates for a plain `redis://` URL are a mistake, said at connect
/// (they would be ignored, and the password sent in the clear).
#[tokio::test]
async fn certificates_for_a_plain_url_are_refused() {
    let (certs, _, _) = redis_tls_support::certificates();
    let err = RedisStore::builder("redis://:hunter2@127.0.0.1:1")
        .tls_root_certificate(certs.ca)
        .connect()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("not a rediss:// URL"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

/// `Debug` says which certificates are set, never what they hold.
#[test]
fn debug_never_shows_a_key() {
    let (certs, _, _) = redis_tls_support::certificates();
    let builder = RedisStore::builder("rediss://:hunter2@redis.internal:6380")
        .tls_root_certificate(certs.ca.clone())
        .tls_client_certificate(certs.client_cert.clone(), certs.client_key.clone());
    let debug = format!("{builder:?}");
    assert!(debug.contains("client_certificate: true"), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
