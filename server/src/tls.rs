//! TLS for the server: rustls (ring provider), enabled by a certificate
//! chain and a private key in PEM files (`constellation serve --tls-cert
//! PATH --tls-key PATH`, or [`Config::tls`](crate::Config::tls)).
//!
//! Handshakes run in each connection's own task (`crate::listen`), bounded
//! in time (`Limits::tls_handshake_timeout`) and in number
//! (`Limits::max_tls_handshakes`), so a slow or silent client never holds up
//! the accept loop. TLS 1.2 and 1.3, rustls' safe defaults.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// Where the certificate chain and the key are.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Loads the files into a rustls server configuration.
pub fn server_config(cfg: &TlsConfig) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| invalid(format!("{}: {e}", cfg.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("{}: {e}", cfg.cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{}: no certificate found",
            cfg.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| invalid(format!("{}: {e}", cfg.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("certificate and key: {e}")))?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}
