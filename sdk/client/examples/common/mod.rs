//! Shared by the examples: broker address and trust from arguments or environment.

use meridian_client::{Client, ClientConfig, Trust};

/// Usage: `<example> [broker] [fingerprint-or-ca-file] ...` or the environment:
/// `MERIDIAN_BROKER` (default `127.0.0.1:9092`), `MERIDIAN_FINGERPRINT`
/// (`sha256:…`, as printed by the broker) or `MERIDIAN_CA` (PEM file).
pub async fn connect(args: &[String]) -> anyhow::Result<Client> {
    let broker = args
        .first()
        .cloned()
        .or_else(|| std::env::var("MERIDIAN_BROKER").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let trust = match args.get(1) {
        Some(arg) if arg.starts_with("sha256:") => Trust::parse_fingerprint(arg)?,
        Some(path) => Trust::CaFile(path.into()),
        None => match (
            std::env::var("MERIDIAN_FINGERPRINT"),
            std::env::var("MERIDIAN_CA"),
        ) {
            (Ok(fingerprint), _) => Trust::parse_fingerprint(&fingerprint)?,
            (_, Ok(path)) => Trust::CaFile(path.into()),
            _ => anyhow::bail!(
                "say how to trust the broker: pass its fingerprint or CA file as the second \
                 argument, or set MERIDIAN_FINGERPRINT or MERIDIAN_CA"
            ),
        },
    };
    Ok(Client::connect(ClientConfig::new(broker, trust)).await?)
}
