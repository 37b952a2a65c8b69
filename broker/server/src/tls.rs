//! The broker's TLS identity: loaded from PEM files, or generated self-signed on first
//! start so `meridian dev` needs nothing installed. Clients pin it by its SHA-256
//! fingerprint or trust the PEM file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `sha256:<hex>` of the leaf certificate's DER bytes.
    pub fingerprint: String,
    pub generated: bool,
}

pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Loads the certificate and key, generating a self-signed pair (for `localhost`,
/// `127.0.0.1`, `::1` and `extra_names`) when neither file exists.
pub fn load_or_generate(
    cert_path: &Path,
    key_path: &Path,
    extra_names: &[String],
) -> anyhow::Result<Identity> {
    let mut generated = false;
    if !cert_path.exists() && !key_path.exists() {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        for name in extra_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let certified = rcgen::generate_simple_self_signed(names)
            .context("generating a self-signed certificate")?;
        for path in [cert_path, key_path] {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        std::fs::write(cert_path, certified.cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        write_private(key_path, certified.key_pair.serialize_pem().as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
        generated = true;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    let leaf = certs
        .first()
        .with_context(|| format!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    Ok(Identity {
        certs,
        key,
        fingerprint,
        generated,
    })
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A QUIC server config speaking ALPN `meridian/1` with this identity.
pub fn server_crypto(
    identity: &Identity,
) -> anyhow::Result<Arc<quinn::crypto::rustls::QuicServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    Ok(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(
        tls,
    )?))
}
