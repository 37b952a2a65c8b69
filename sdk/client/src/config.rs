//! Client configuration and how the broker's certificate is trusted.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// How the client decides to trust the broker's TLS certificate.
///
/// Meridian brokers usually run with a self-signed certificate and print its
/// fingerprint at start-up (`sha256:…`); pin it with [`Trust::Fingerprint`], or hand
/// the client the certificate (or the CA that signed it) as PEM.
///
/// ```no_run
/// use meridian_client::Trust;
/// let pinned = Trust::parse_fingerprint(
///     "sha256:3f0c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
/// )?;
/// let from_file = Trust::CaFile("broker-cert.pem".into());
/// # Ok::<(), meridian_client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub enum Trust {
    /// PEM file holding the broker's self-signed certificate or a CA certificate.
    CaFile(PathBuf),
    /// PEM bytes, same meaning.
    CaPem(Vec<u8>),
    /// Pin the broker's leaf certificate by SHA-256 of its DER bytes (like SSH
    /// `known_hosts`). Handshake signatures are still verified; only chain building
    /// and name checks are replaced by the pin.
    Fingerprint([u8; 32]),
}

impl Trust {
    /// Parses a fingerprint written as `sha256:<64 hex digits>` or as 64 plain hex
    /// digits; colons between digit pairs are allowed, case does not matter.
    pub fn parse_fingerprint(s: &str) -> Result<Trust> {
        let trimmed = s.trim();
        let hex = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
            _ => trimmed,
        };
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        let bad = || {
            Error::Config(format!(
                "`{trimmed}` is not a SHA-256 fingerprint: expected `sha256:` followed by 64 hex digits"
            ))
        };
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let high = hex_value(pair[0]).ok_or_else(bad)?;
            let low = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = high << 4 | low;
        }
        Ok(Trust::Fingerprint(out))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Formats a certificate fingerprint as `sha256:` and 64 lowercase hex digits, the
/// format the broker prints and [`Trust::parse_fingerprint`] reads.
pub fn format_fingerprint(sha256: &[u8; 32]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in sha256 {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// SHA-256 of a certificate's DER bytes, the value [`Trust::Fingerprint`] pins.
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// Connection settings shared by everything made from one [`Client`](crate::Client).
///
/// ```no_run
/// use std::time::Duration;
/// use meridian_client::{ClientConfig, Trust};
/// let mut config = ClientConfig::new("127.0.0.1:9092", Trust::CaFile("broker-cert.pem".into()));
/// config.request_timeout = Duration::from_secs(10);
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of the broker to connect to (resolved with the system resolver).
    pub bootstrap: String,
    /// Name checked against the broker's certificate (not used with a pinned
    /// fingerprint). Default `localhost`.
    pub server_name: String,
    pub trust: Trust,
    /// How long one request may take, connection set-up included. Default 30 s.
    pub request_timeout: Duration,
    /// Largest response frame accepted; checked before anything is allocated.
    /// Default 256 MiB.
    pub max_response_bytes: u32,
    /// Sent to the broker in the ApiVersions handshake (shows up in its logs).
    pub client_software: String,
    /// UDP socket send and receive buffers, default 4 MiB (the kernel caps them at
    /// `net.core.rmem_max` / `wmem_max`). Small buffers drop datagrams under bursts.
    pub udp_buffer_bytes: usize,
}

/// Default [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ClientConfig::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: u32 = 256 * 1024 * 1024;

impl ClientConfig {
    /// A configuration with defaults for everything but the address and trust.
    pub fn new(bootstrap: impl Into<String>, trust: Trust) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into(),
            server_name: "localhost".into(),
            trust,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            client_software: concat!("meridian-client/", env!("CARGO_PKG_VERSION")).into(),
            udp_buffer_bytes: 4 * 1024 * 1024,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap.trim().is_empty() {
            return Err(Error::Config("bootstrap address is empty".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request_timeout must be above zero".into()));
        }
        if self.max_response_bytes < 1024 {
            return Err(Error::Config(format!(
                "max_response_bytes {} is below the minimum of 1024",
                self.max_response_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parse(input: &str, expected: Option<[u8; 32]>) {
        match (Trust::parse_fingerprint(input), expected) {
            (Ok(Trust::Fingerprint(got)), Some(want)) => assert_eq!(got, want, "{input}"),
            (Err(Error::Config(_)), None) => {}
            (other, _) => panic!("{input}: unexpected {other:?}"),
        }
    }

    #[test]
    fn fingerprints_parse_in_every_accepted_spelling() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8) * 7 + 1);
        let formatted = format_fingerprint(&bytes);
        assert!(formatted.starts_with("sha256:"));
        assert_eq!(formatted.len(), 7 + 64);
        assert_eq!(formatted, formatted.to_lowercase());
        let plain = &formatted[7..];
        let colons: Vec<String> = plain
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        check_parse(&formatted, Some(bytes));
        check_parse(plain, Some(bytes));
        check_parse(&plain.to_uppercase(), Some(bytes));
        check_parse(&formatted.replace("sha256:", "SHA256:"), Some(bytes));
        check_parse(&colons.join(":"), Some(bytes));
        check_parse(&format!("sha256:{}", colons.join(":")), Some(bytes));
        check_parse(&format!("  {formatted}\n"), Some(bytes));
        check_parse("", None);
        check_parse("sha256:", None);
        check_parse(&plain[..62], None);
        check_parse(&format!("{plain}00"), None);
        check_parse(&format!("{}zz", &plain[..62]), None);
        check_parse(&format!("sha1:{plain}"), None);
    }

    #[test]
    fn format_matches_known_digest() {
        // SHA-256 of the empty input.
        assert_eq!(
            format_fingerprint(&certificate_fingerprint(b"")),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn defaults() {
        let config = ClientConfig::new("127.0.0.1:9092", Trust::CaPem(Vec::new()));
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_response_bytes, 256 << 20);
        assert!(config.client_software.starts_with("meridian-client/"));
        assert!(config.validate().is_ok());
        let mut bad = config.clone();
        bad.bootstrap = String::new();
        assert!(bad.validate().is_err());
    }
}
