//! The mock behind TLS (feature `tls`): a front on 127.0.0.1 that
//! decrypts each connection and relays it to the mock, with a certificate
//! made on the spot — so that clients' HTTPS is tested on loopback, and the
//! mock's answers, faults and journal hold as over plain HTTP.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use llm_tower_mock::{MockServer, tls::{Certificate, front}};
//!
//! let mock = MockServer::builder().start().await?;
//! let cert = Certificate::for_localhost();
//! let addr = front(mock.addr(), cert.server_config()).await?;
//! // Clients trust `cert.der()` (or `cert.pem()` through SSL_CERT_FILE) and
//! // call https://{addr}/v1/…
//! # let _ = addr;
//! # Ok(())
//! # }
//! ```

use std::{io, net::SocketAddr, sync::Arc};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for 127.0.0.1 and `localhost`, with its key.
#[derive(Debug)]
pub struct Certificate {
    der: CertificateDer<'static>,
    pem: String,
    key: Vec<u8>,
}

impl Certificate {
    /// A new certificate, made here.
    pub fn for_localhost() -> Self {
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("a self-signed certificate");
        Certificate {
            der: made.cert.der().clone(),
            pem: made.cert.pem(),
            key: made.signing_key.serialize_der(),
        }
    }

    /// The certificate, for a client's root store.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate in PEM, for a file `SSL_CERT_FILE` names.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A rustls server config (ring) presenting this certificate.
    pub fn server_config(&self) -> ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring's protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .expect("a key that matches the certificate")
    }
}

/// Serves TLS with `config` on 127.0.0.1 (a free port) and relays every
/// connection to `backend` (the mock's address), in a task of its own;
/// returns the front's address. A handshake a client refuses is its
/// business: the connection is dropped and nothing reaches the mock.
pub async fn front(backend: SocketAddr, config: ServerConfig) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    Ok(addr)
}
