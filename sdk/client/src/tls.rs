//! TLS and QUIC transport set-up: rustls with the ring provider (built explicitly, so
//! no process-wide default provider is needed), ALPN `meridian/1`, and generous flow
//! control windows for throughput.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{certificate_fingerprint, format_fingerprint, ClientConfig, Trust};
use crate::error::{Error, Result};

/// Per-stream receive window: one fetch response of several MiB flows without stalls.
const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// Connection-wide receive window, room for several large streams at once.
pub(crate) const CONNECTION_RECEIVE_WINDOW: u32 = 128 * 1024 * 1024;
const SEND_WINDOW: u64 = CONNECTION_RECEIVE_WINDOW as u64;
/// A broker killed outright (SIGKILL, power loss) sends nothing: over UDP there is no
/// reset to notice. Keep-alives every half second and a short idle timeout make the
/// client give up on such a connection after 2.5 s, so requests waiting on it fail
/// and are retried at the partition's new leader instead of waiting out the request
/// timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Builds the quinn client configuration for `config`.
pub(crate) fn quic_client_config(config: &ClientConfig) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &config.trust {
        Trust::CaFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
            builder.with_root_certificates(root_store(&pem, &path.display().to_string())?)
        }
        Trust::CaPem(pem) => builder.with_root_certificates(root_store(pem, "the CA PEM")?),
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                pin: *pin,
                provider,
            })),
    };
    let mut tls = match &config.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| Error::Tls(format!("the client certificate is unusable: {e}")))?,
    };
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(format!("TLS configuration unusable for QUIC: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config()?));
    Ok(client)
}

fn transport_config() -> Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|e| Error::Config(format!("idle timeout: {e}")))?,
        ))
        // The broker never opens streams towards the client.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Ok(transport)
}

fn root_store(pem: &[u8], source: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n_certs = 0usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("cannot parse {source}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("unusable certificate in {source}: {e}")))?;
        n_certs += 1;
    }
    if n_certs == 0 {
        return Err(Error::Tls(format!("{source} holds no PEM certificate")));
    }
    Ok(roots)
}

/// Trusts exactly one leaf certificate, identified by the SHA-256 of its DER bytes.
/// Handshake signatures are verified with the provider's algorithms as usual, so a
/// peer must hold the private key of the pinned certificate.
#[derive(Debug)]
struct PinnedCertificate {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = certificate_fingerprint(end_entity.as_ref());
        if actual == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "broker certificate fingerprint {} does not match the pinned {}",
                format_fingerprint(&actual),
                format_fingerprint(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trust_kind_builds_a_config() {
        let config = ClientConfig::new("127.0.0.1:1", Trust::Fingerprint([7; 32]));
        assert!(quic_client_config(&config).is_ok());
    }

    #[test]
    fn empty_or_missing_ca_is_a_tls_error() {
        let config = ClientConfig::new("127.0.0.1:1", Trust::CaPem(b"not pem".to_vec()));
        assert!(matches!(quic_client_config(&config), Err(Error::Tls(_))));
        let config = ClientConfig::new(
            "127.0.0.1:1",
            Trust::CaFile("/nonexistent/meridian-ca.pem".into()),
        );
        assert!(matches!(quic_client_config(&config), Err(Error::Tls(_))));
    }
}
