//! TLS with rustls (and the `ring` provider): the host's side for
//! `partyhost serve --tls-cert --tls-key`, the client's side for
//! `partyhost deploy` and `rollback` to an `https://` host.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's TLS settings from a PEM certificate chain and its PEM key.
///
/// # Errors
/// When a file cannot be read, holds no certificate or key, or the key
/// does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a PEM private key from {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("using the key with the certificate in {}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client's TLS settings: the web's usual roots, plus the certificates
/// in `extra_roots` (a self-signed host's, say).
///
/// # Errors
/// When `extra_roots` cannot be read or holds no certificate.
pub fn client_config(extra_roots: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_roots {
        for certificate in read_certificates(path)? {
            roots.add(certificate).with_context(|| format!("adding a root from {}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading PEM certificates from {}", path.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no PEM certificate", path.display());
    Ok(chain)
}
