//! A Redis server that speaks TLS, for tests: a CA, the server's
//! certificate (127.0.0.1 and `localhost`) and a client's, made here with
//! rcgen and written where the server reads them. Needs `redis_support`
//! (`support/redis.rs`) beside it.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::redis_support::{RedisServer, free_port, skipped, start_server};

/// Certificates in PEM.
#[derive(Debug, Clone)]
pub struct Certificates {
    /// The CA that signed the server's and the client's certificates.
    pub ca: String,
    /// The client's certificate and key, for mutual TLS.
    pub client_cert: String,
    pub client_key: String,
}

/// A CA of its own, a server certificate and a client certificate.
pub fn certificates() -> (Certificates, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "llm-tower test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["llm-tower-client".to_owned()]).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "llm-tower test client");
    let client = client.signed_by(&client_key, &ca).unwrap();
    (
        Certificates {
            ca: ca.pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        },
        server.pem(),
        server_key.serialize_pem(),
    )
}

/// A server with TLS on a port of its own (`rediss://127.0.0.1:PORT`), and
/// the certificates to reach it; with `require_client_certificate`, it
/// refuses clients that present none (`tls-auth-clients yes`). `None`, with
/// a loud message, when no `redis-server` with TLS can be started and
/// `LLM_TOWER_REQUIRE_REDIS` is not `1`.
pub fn server(require_client_certificate: bool) -> Option<(RedisServer, Certificates)> {
    let started = (|| {
        let (certs, server_cert, server_key) = certificates();
        let (port, tls_port) = (free_port()?, free_port()?);
        // The directory the server runs in, which dropping it removes.
        let dir: PathBuf =
            std::env::temp_dir().join(format!("llm-tower-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).ok()?;
            Some(path.to_str()?.to_owned())
        };
        let extra = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            write("server.pem", &server_cert)?,
            "--tls-key-file".to_owned(),
            write("server.key", &server_key)?,
            "--tls-ca-cert-file".to_owned(),
            write("ca.pem", &certs.ca)?,
            "--tls-auth-clients".to_owned(),
            if require_client_certificate {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ];
        let server = start_server(port, &extra, format!("rediss://127.0.0.1:{tls_port}"))?;
        Some((server, certs))
    })();
    if started.is_none() {
        skipped("a Redis server with TLS (install redis-server, built with TLS)");
    }
    started
}
