//! TLS: the server started with a self-signed certificate (made here with
//! rcgen) answers HTTPS on 127.0.0.1 and refuses plain HTTP on that port.

mod common;

use std::sync::Arc;

use common::*;
use constellation::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_on_loopback_with_a_self_signed_certificate() {
    let (dir, db) = temp_db();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = config(&db);
    cfg.tls = Some(constellation::tls::TlsConfig {
        cert: cert.clone(),
        key,
    });
    let srv = Server::start(cfg).await.expect("TLS server starts");
    assert!(srv.url().starts_with("https://127.0.0.1:"));
    let addr = srv.local_addr();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .expect("handshake");
        let req =
            format!("GET /api/v1/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        let _ = tls.read_to_end(&mut resp).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"status\":\"ok\""), "{text}");
    }

    // A client that does not trust the certificate fails the handshake.
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(name, tcp)
        .await
        .is_err());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    srv.shutdown().await;

    // A missing or bad certificate file stops the start with an error.
    let mut cfg = config(&db);
    cfg.tls = Some(constellation::tls::TlsConfig {
        cert: dir.path().join("missing.pem"),
        key: cert,
    });
    assert!(Server::start(cfg).await.is_err());
}
