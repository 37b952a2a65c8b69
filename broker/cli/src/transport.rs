//! Two bare QUIC endpoints on 127.0.0.1 with the same TLS and transport settings the
//! broker and client use, for `bench transport`.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;

/// A fresh self-signed identity for the two endpoints.
pub fn identity() -> anyhow::Result<meridian_server::tls::Identity> {
    let dir = tempfile::tempdir()?;
    meridian_server::tls::load_or_generate(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        &[],
    )
}

/// The receiving endpoint; its driver runs on the runtime this is called in.
pub fn server(identity: &meridian_server::tls::Identity) -> anyhow::Result<quinn::Endpoint> {
    let mut server_config =
        quinn::ServerConfig::with_crypto(meridian_server::tls::server_crypto(identity, None)?);
    let mut transport =
        meridian_server::transport_config(&meridian_server::BrokerConfig::default())?;
    // The broker takes requests on bidirectional streams only; bulk transfer here
    // uses unidirectional ones.
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(1024));
    server_config.transport_config(Arc::new(transport));
    let buffer = meridian_server::BrokerConfig::default().udp_buffer_bytes as usize;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        meridian_server::bind_udp("127.0.0.1:0".parse()?, buffer)?,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// The sending endpoint, trusting `identity`; its driver runs on the runtime this is
/// called in.
pub fn client(identity: &meridian_server::tls::Identity) -> anyhow::Result<quinn::Endpoint> {
    let buffer = meridian_server::BrokerConfig::default().udp_buffer_bytes as usize;

    let mut roots = rustls::RootCertStore::empty();
    let leaf: &CertificateDer<'static> = identity.certs.first().context("no certificate")?;
    roots.add(leaf.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    let mut client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client_config.transport_config(Arc::new(meridian_server::transport_config(
        &meridian_server::BrokerConfig::default(),
    )?));
    let mut client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        meridian_server::bind_udp("127.0.0.1:0".parse()?, buffer)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    client.set_default_client_config(client_config);
    Ok(client)
}
