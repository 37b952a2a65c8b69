//! PEM files a client's TLS reads: the CA certificates it trusts and the
//! certificate and key it presents (`bench kafka-produce --ca/--cert/--key`, the
//! OTLP exporter's `OTEL_EXPORTER_OTLP_*CERTIFICATE*`).

use std::path::Path;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates of the PEM file `path`, as roots to trust.
pub(crate) fn roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        roots.add(cert.with_context(|| format!("a certificate in {}", path.display()))?)?;
    }
    Ok(roots)
}

/// A certificate chain and its private key, from their PEM files, to present.
pub(crate) fn identity(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    Ok((chain, key))
}
