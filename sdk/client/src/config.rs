//! Client configuration and how the broker's certificate is trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// What a TLS alert says about a client's certificate, when it is about one; the
/// alert as QUIC carries it, a crypto error code `0x100 + alert`. A broker with
/// `tls_client_ca` ends the handshake of a client it refuses with one of these
/// (and counts it), and the client reports it as [`Error::Tls`].
pub fn client_certificate_alert(quic_error_code: u64) -> Option<&'static str> {
    Some(match quic_error_code.checked_sub(0x100)? {
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired or not yet valid",
        46 => "certificate unknown",
        48 => "unknown CA: not signed by a CA the broker trusts (tls_client_ca)",
        49 => "access denied",
        51 => "signature does not verify: not signed by the CA the broker trusts (tls_client_ca)",
        116 => "certificate required",
        _ => return None,
    })
}

/// A certificate and its private key, presented to brokers that ask clients to
/// prove who they are (a broker with `tls_client_ca` set admits only clients whose
/// certificate a CA in that file signed: mutual TLS).
///
/// `meridian cert create-ca` and `meridian cert create NAME` make such a CA and
/// certificates; any X.509 certificate the broker's CA signed does as well.
///
/// ```no_run
/// use meridian_client::{ClientConfig, ClientIdentity, Trust};
/// let mut config = ClientConfig::new("127.0.0.1:9092", Trust::CaFile("certs/ca.pem".into()));
/// config.identity = Some(ClientIdentity::from_files("certs/alice.pem", "certs/alice.key")?);
/// # Ok::<(), meridian_client::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientIdentity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Arc<PrivateKeyDer<'static>>,
}

impl ClientIdentity {
    /// The certificate chain (leaf first, then any intermediates) and the private key
    /// (PKCS#8, PKCS#1 or SEC1), both PEM.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity> {
        Self::parse(chain_pem, "the certificate PEM", key_pem, "the key PEM")
    }

    /// [`from_pem`](Self::from_pem) with the PEM read from two files.
    pub fn from_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<ClientIdentity> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| Error::Tls(format!("cannot read {what} {}: {e}", path.display())))
        };
        Self::parse(
            &read(chain, "client certificate")?,
            &chain.display().to_string(),
            &read(key, "client key")?,
            &key.display().to_string(),
        )
    }

    fn parse(
        chain_pem: &[u8],
        chain_source: &str,
        key_pem: &[u8],
        key_source: &str,
    ) -> Result<ClientIdentity> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Tls(format!("cannot parse {chain_source}: {e}")))?;
        if chain.is_empty() {
            return Err(Error::Tls(format!(
                "{chain_source} holds no PEM certificate"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::Tls(format!("{key_source} holds no usable private key: {e}")))?;
        Ok(ClientIdentity {
            chain,
            key: Arc::new(key),
        })
    }

    /// A chain (leaf first) and key already parsed, e.g. by a broker that holds them
    /// as its own identity.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ClientIdentity> {
        if chain.is_empty() {
            return Err(Error::Tls("a client identity needs a certificate".into()));
        }
        Ok(ClientIdentity {
            chain,
            key: Arc::new(key),
        })
    }

    /// SHA-256 of the leaf certificate, as the broker logs it.
    pub fn fingerprint(&self) -> [u8; 32] {
        certificate_fingerprint(self.chain[0].as_ref())
    }
}

/// Shows the certificate's fingerprint, never the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificate", &format_fingerprint(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// Connection settings shared by everything made from one [`Client`](crate::Client).
///
/// ```no_run
/// use std::time::Duration;
/// use meridian_client::{ClientConfig, Trust};
/// let mut config = ClientConfig::new("127.0.0.1:9092", Trust::CaFile("broker-cert.pem".into()));
/// config.request_timeout = Duration::from_secs(10);
/// // Several brokers of one cluster: the first that answers is used to bootstrap.
/// let cluster = ClientConfig::new("10.0.0.1:9092,10.0.0.2:9092", Trust::Fingerprint([0; 32]));
/// assert_eq!(cluster.bootstrap_servers.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of brokers to bootstrap from (resolved with the system resolver),
    /// tried in order: the first that answers gives the cluster's metadata, after
    /// which requests go to the broker that leads each partition. One address of a
    /// single broker is enough; list several so a dead one is not fatal.
    pub bootstrap_servers: Vec<String>,
    /// Name checked against the broker's certificate (not used with a pinned
    /// fingerprint). Default `localhost`. Brokers of one cluster share one TLS
    /// identity, so one name and one [`Trust`] fit all of them.
    pub server_name: String,
    pub trust: Trust,
    /// The certificate this client presents, for brokers that require one
    /// (`tls_client_ca`). Default none.
    pub identity: Option<ClientIdentity>,
    /// How long one request may take, connection set-up included. Default 30 s.
    pub request_timeout: Duration,
    /// How long opening a connection to one broker (QUIC and TLS handshake, then
    /// ApiVersions) may take before the next address is tried. A dead address
    /// gives no answer at all over UDP, so this bounds what it costs. Kafka's
    /// `socket.connection.setup.timeout.ms`, default 10 s.
    pub connect_timeout: Duration,
    /// Largest response frame accepted; checked before anything is allocated.
    /// Default 256 MiB.
    pub max_response_bytes: u32,
    /// Sent to the broker in the ApiVersions handshake (shows up in its logs).
    pub client_software: String,
    /// UDP socket send and receive buffers, default 4 MiB (the kernel caps them at
    /// `net.core.rmem_max` / `wmem_max`). Small buffers drop datagrams under bursts.
    pub udp_buffer_bytes: usize,
    /// Memory kept of received responses of 64 KiB or more (fetches, mostly), to
    /// receive later responses into once nothing holds them any more: once the
    /// consumer's caller has dropped the records they carried. Fresh memory for
    /// every response costs a page fault and a page clear per 4 KiB. Default
    /// 64 MiB; 0 keeps none.
    pub response_buffer_cache_bytes: usize,
    /// Metadata (partition leaders, broker addresses) is refreshed at least this
    /// often, besides on demand after errors. Kafka's `metadata.max.age.ms`, default
    /// 5 minutes.
    pub metadata_max_age: Duration,
    /// First pause before a request that failed in a retriable way (say, the
    /// partition's leader moved) is tried again; it doubles per attempt up to
    /// [`retry_backoff_max`](Self::retry_backoff_max). Kafka's `retry.backoff.ms`,
    /// default 100 ms.
    pub retry_backoff: Duration,
    /// Longest pause between retries. Kafka's `retry.backoff.max.ms`, default 1 s.
    pub retry_backoff_max: Duration,
}

/// Default [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientConfig::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: u32 = 256 * 1024 * 1024;
/// Default [`ClientConfig::response_buffer_cache_bytes`].
pub const DEFAULT_RESPONSE_BUFFER_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Default [`ClientConfig::metadata_max_age`].
pub const DEFAULT_METADATA_MAX_AGE: Duration = Duration::from_secs(300);
/// Default [`ClientConfig::retry_backoff`].
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Default [`ClientConfig::retry_backoff_max`].
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Splits a comma-separated bootstrap list (`host:port,host:port`, as the CLI and
/// `MERIDIAN_BOOTSTRAP` take it) into addresses; blanks around commas are ignored.
pub fn parse_bootstrap(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl ClientConfig {
    /// A configuration with defaults for everything but the addresses and trust.
    /// `bootstrap` is one `host:port` or several separated by commas.
    pub fn new(bootstrap: impl AsRef<str>, trust: Trust) -> ClientConfig {
        ClientConfig::with_bootstrap(parse_bootstrap(bootstrap.as_ref()), trust)
    }

    /// A configuration bootstrapping from `servers`, tried in order.
    pub fn with_bootstrap<S: Into<String>>(
        servers: impl IntoIterator<Item = S>,
        trust: Trust,
    ) -> ClientConfig {
        ClientConfig {
            bootstrap_servers: servers.into_iter().map(Into::into).collect(),
            server_name: "localhost".into(),
            trust,
            identity: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            client_software: concat!("meridian-client/", env!("CARGO_PKG_VERSION")).into(),
            udp_buffer_bytes: 4 * 1024 * 1024,
            response_buffer_cache_bytes: DEFAULT_RESPONSE_BUFFER_CACHE_BYTES,
            metadata_max_age: DEFAULT_METADATA_MAX_AGE,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            retry_backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
        }
    }

    /// The bootstrap addresses as one comma-separated string (for messages).
    pub fn bootstrap_list(&self) -> String {
        self.bootstrap_servers.join(",")
    }

    /// The pause before retry number `attempt` (1 for the first retry): the
    /// backoff doubled per earlier attempt, capped by `retry_backoff_max`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_backoff, self.retry_backoff_max, attempt)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.is_empty()
            || self.bootstrap_servers.iter().any(|s| s.trim().is_empty())
        {
            return Err(Error::Config("bootstrap address is empty".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request_timeout must be above zero".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config("connect_timeout must be above zero".into()));
        }
        if self.max_response_bytes < 1024 {
            return Err(Error::Config(format!(
                "max_response_bytes {} is below the minimum of 1024",
                self.max_response_bytes
            )));
        }
        if self.retry_backoff_max < self.retry_backoff {
            return Err(Error::Config(format!(
                "retry_backoff_max {:?} is below retry_backoff {:?}",
                self.retry_backoff_max, self.retry_backoff
            )));
        }
        Ok(())
    }
}

/// `base * 2^(attempt - 1)`, capped by `max` (attempt 0 counts as 1).
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_identity_needs_a_certificate_and_its_key_and_never_shows_the_key() {
        let made = rcgen::generate_simple_self_signed(vec!["alice".to_string()]).unwrap();
        let (cert, key) = (made.cert.pem(), made.key_pair.serialize_pem());
        let identity = ClientIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(
            identity.fingerprint(),
            certificate_fingerprint(made.cert.der())
        );
        let shown = format!("{identity:?}");
        assert!(shown.contains("sha256:"), "{shown}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("key:"),
            "{shown}"
        );
        let tls = |r: Result<ClientIdentity>| match r {
            Err(Error::Tls(message)) => message,
            other => panic!("expected a TLS error, got {other:?}"),
        };
        let message = tls(ClientIdentity::from_pem(b"", key.as_bytes()));
        assert!(message.contains("no PEM certificate"), "{message}");
        let message = tls(ClientIdentity::from_pem(cert.as_bytes(), cert.as_bytes()));
        assert!(message.contains("no usable private key"), "{message}");
        let message = tls(ClientIdentity::from_files(
            "/nonexistent/alice.pem",
            "/nonexistent/alice.key",
        ));
        assert!(message.contains("/nonexistent/alice.pem"), "{message}");
        // A key that is not the certificate's: refused before any connection.
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let mismatched = ClientIdentity::from_pem(cert.as_bytes(), other.as_bytes()).unwrap();
        let mut config = ClientConfig::new("127.0.0.1:1", Trust::Fingerprint([0; 32]));
        config.identity = Some(mismatched);
        match crate::tls::quic_client_config(&config) {
            Err(Error::Tls(message)) => {
                assert!(message.contains("client certificate"), "{message}")
            }
            Err(other) => panic!("expected a TLS error, got {other:?}"),
            Ok(_) => panic!("a key that is not the certificate's must be refused"),
        }
        config.identity = Some(identity);
        assert!(crate::tls::quic_client_config(&config).is_ok());
    }

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
        assert_eq!(config.bootstrap_servers, vec!["127.0.0.1:9092".to_string()]);
        assert_eq!(config.metadata_max_age, Duration::from_secs(300));
        assert_eq!(config.retry_backoff, Duration::from_millis(100));
        assert_eq!(config.retry_backoff_max, Duration::from_secs(1));
        let mut bad = config.clone();
        bad.bootstrap_servers = Vec::new();
        assert!(bad.validate().is_err());
        let mut bad = config.clone();
        bad.retry_backoff_max = Duration::from_millis(10);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn bootstrap_lists_split_on_commas() {
        let check = |input: &str, expected: &[&str]| {
            assert_eq!(parse_bootstrap(input), expected, "{input}");
        };
        check("127.0.0.1:9092", &["127.0.0.1:9092"]);
        check("a:1,b:2", &["a:1", "b:2"]);
        check(" a:1 , b:2 ,", &["a:1", "b:2"]);
        check(
            "[::1]:9092,localhost:9093",
            &["[::1]:9092", "localhost:9093"],
        );
        check("", &[]);
        let config = ClientConfig::new("a:1, b:2", Trust::CaPem(Vec::new()));
        assert_eq!(config.bootstrap_list(), "a:1,b:2");
        assert!(ClientConfig::new(" , ", Trust::CaPem(Vec::new()))
            .validate()
            .is_err());
        let config = ClientConfig::with_bootstrap(["x:1", "y:2"], Trust::CaPem(Vec::new()));
        assert_eq!(config.bootstrap_servers, vec!["x:1", "y:2"]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let got: Vec<Duration> = (0..7).map(|a| backoff(ms(100), ms(1000), a)).collect();
        assert_eq!(
            got,
            vec![
                ms(100),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(backoff(ms(100), ms(1000), u32::MAX), ms(1000));
    }
}
