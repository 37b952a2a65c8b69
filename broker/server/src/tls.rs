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

/// Writes a new file readable by its owner only; an existing one is an error.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
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

/// How client certificates are checked: against the CAs in `ca` (`tls_client_ca`),
/// and with `crl` (`tls_client_crl`) against the revocation lists in that PEM file.
#[derive(Clone, Copy, Debug)]
pub struct ClientCheck<'a> {
    pub ca: &'a Path,
    pub crl: Option<&'a Path>,
}

/// A QUIC server config speaking ALPN `meridian/1` with this identity. With
/// `client_check`, clients must present a certificate one of its CAs signed and
/// its revocation lists do not name.
pub fn server_crypto(
    identity: &Identity,
    client_check: Option<ClientCheck<'_>>,
) -> anyhow::Result<Arc<quinn::crypto::rustls::QuicServerConfig>> {
    let mut tls = server_tls(identity, client_check, &[&rustls::version::TLS13])?;
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    Ok(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(
        tls,
    )?))
}

/// The Kafka listener's TLS (`kafka_tls`): this identity, TLS 1.2 or 1.3 (Kafka's
/// clients speak either), no ALPN, and with `client_check` the same check of client
/// certificates as the QUIC endpoint's.
/// Whether a TLS handshake over TCP failed for the client's certificate (none,
/// or one `tls_client_ca` does not accept).
pub(crate) fn is_certificate_refusal(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// The TLS of the broker's TCP listeners (Kafka's, the metrics one): TLS 1.3 or
/// 1.2, the broker's certificate, and under `tls_client_ca` client certificates.
pub fn tcp_server_config(
    identity: &Identity,
    client_check: Option<ClientCheck<'_>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    Ok(Arc::new(server_tls(identity, client_check, &versions)?))
}

fn server_tls(
    identity: &Identity,
    client_check: Option<ClientCheck<'_>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match client_check {
        None => builder.with_no_client_auth(),
        Some(check) => builder.with_client_cert_verifier(client_verifier(check, provider)?),
    };
    builder
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .context("certificate and key do not match")
}

/// The check of client certificates against the CAs in `tls_client_ca` and the
/// revocation lists in `tls_client_crl`. A certificate of a CA the lists do not
/// cover passes (a region may revoke for one CA and not another).
fn client_verifier(
    check: ClientCheck<'_>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let path = check.ca;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading tls_client_ca {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("parsing tls_client_ca {}", path.display()))?;
        roots.add(cert).with_context(|| {
            format!(
                "an unusable certificate in tls_client_ca {}",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        anyhow::bail!("tls_client_ca {} holds no certificate", path.display());
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl) = check.crl {
        let lists = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(crl)
            .with_context(|| format!("reading tls_client_crl {}", crl.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing tls_client_crl {}", crl.display()))?;
        if lists.is_empty() {
            anyhow::bail!(
                "tls_client_crl {} holds no revocation list (`-----BEGIN X509 CRL-----`)",
                crl.display()
            );
        }
        builder = builder.with_crls(lists).allow_unknown_revocation_status();
    }
    let verifier = builder.build().with_context(|| match check.crl {
        Some(crl) => format!(
            "tls_client_ca {} with tls_client_crl {}",
            path.display(),
            crl.display()
        ),
        None => format!("tls_client_ca {}", path.display()),
    })?;
    Ok(verifier)
}

/// A self-signed identity for `localhost` in a fresh directory, for tests (the
/// directory goes when the returned handle does).
#[cfg(test)]
pub(crate) fn generated_identity() -> (tempfile::TempDir, Identity) {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = load_or_generate(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        &[],
    )
    .expect("a self-signed identity");
    (dir, identity)
}

/// How a broker connects to its peers: what it trusts of their certificates
/// (`cluster.peer_trust`) and the certificate it presents to them (its own, which
/// peers with `tls_client_ca` require), replaced when it reloads its TLS files.
/// Cheap to clone; every clone sees a reload.
#[derive(Clone)]
pub struct PeerTls {
    trust: meridian_client::Trust,
    identity: Arc<parking_lot::RwLock<meridian_client::ClientIdentity>>,
}

impl PeerTls {
    pub(crate) fn new(trust: meridian_client::Trust, identity: &Identity) -> anyhow::Result<Self> {
        Ok(PeerTls {
            trust,
            identity: Arc::new(parking_lot::RwLock::new(identity.as_client()?)),
        })
    }

    /// A client configuration for the peer at `address`, presenting the current
    /// certificate.
    pub(crate) fn client_config(&self, address: impl AsRef<str>) -> meridian_client::ClientConfig {
        let mut config = meridian_client::ClientConfig::new(address, self.trust.clone());
        config.identity = Some(self.identity.read().clone());
        config
    }

    /// Presents `identity` from now on.
    pub(crate) fn replace_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        *self.identity.write() = identity.as_client()?;
        Ok(())
    }
}

impl Identity {
    /// This identity as a client certificate, for connections to peers.
    fn as_client(&self) -> anyhow::Result<meridian_client::ClientIdentity> {
        meridian_client::ClientIdentity::from_der(self.certs.clone(), self.key.clone_key())
            .context("this broker's certificate as a client certificate for its peers")
    }
}

/// Who a client's certificate names: its subject's common name (else the whole
/// subject), and its fingerprint.
pub fn client_name(leaf: &CertificateDer<'_>) -> (String, String) {
    let name = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            match subject.iter_common_name().next().map(|cn| cn.as_str()) {
                Some(Ok(cn)) => cn.to_string(),
                _ => subject.to_string(),
            }
        }
        Err(_) => "?".to_string(),
    };
    (name, fingerprint(leaf))
}

/// `meridian cert create-ca`: a CA certificate and key that sign brokers' and
/// clients' certificates (`meridian cert create`), valid for `days`.
/// Without a `name`, "Meridian CA" and a tag of its key: two CAs made this way never
/// share a name (a certificate names its issuer by name only).
pub fn create_ca(name: Option<&str>, days: u32) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let name = match name {
        Some(name) => name.to_string(),
        None => {
            let digest = Sha256::digest(key.public_key_raw());
            let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("Meridian CA {tag}")
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = common_name(&name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    valid_for(&mut params, days);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `meridian cert create`: a certificate for `name` signed by the CA (its PEM
/// certificate and key), usable by a broker (for `hosts`, names and IP addresses
/// clients connect to) and by a client alike. Returns the certificate, followed
/// by the CA's so the chain is complete, and the new key.
pub fn create_signed(
    name: &str,
    hosts: &[String],
    days: u32,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> anyhow::Result<(String, String)> {
    let (ca, ca_key) = load_ca(ca_cert_pem, ca_key_pem)?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .context("a host is neither an IP address nor a DNS name")?;
    params.distinguished_name = common_name(name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    valid_for(&mut params, days);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    // The CA's own certificate, as written by `create_ca`, completes the chain.
    let chain = format!("{}{}", cert.pem(), ca_cert_pem.trim_start());
    Ok((chain, key.serialize_pem()))
}

/// The CA of `meridian cert`, read back from its PEM certificate and key.
fn load_ca(
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).context("parsing the CA key")?;
    let ca_params = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem)
        .context("parsing the CA certificate")?;
    if ca_params.is_ca == rcgen::IsCa::NoCa {
        anyhow::bail!("that certificate is not a CA (no CA basic constraint)");
    }
    let ca = ca_params.self_signed(&ca_key)?;
    Ok((ca, ca_key))
}

/// What [`revoke`] made.
pub struct Revoked {
    /// The new revocation list, PEM.
    pub crl_pem: String,
    /// The certificate's serial number, as hex.
    pub serial: String,
    /// Whether the list it replaces named the certificate already.
    pub already: bool,
    /// How many certificates the new list names.
    pub listed: usize,
}

/// `meridian cert revoke`: a certificate revocation list signed by the CA, naming
/// the certificate in `cert_pem` (the first of its chain) and every certificate
/// `existing_crl_pem` named, valid for `days`; brokers check client certificates
/// against it (`tls_client_crl`).
pub fn revoke(
    cert_pem: &str,
    existing_crl_pem: Option<&str>,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    days: u32,
) -> anyhow::Result<Revoked> {
    let (ca, ca_key) = load_ca(ca_cert_pem, ca_key_pem)?;
    let leaf = leaf_of(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let ca_der = leaf_of(ca_cert_pem).context("the CA file")?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the CA certificate: {e}"))?;
    if cert.issuer() != ca_cert.subject() {
        anyhow::bail!(
            "the certificate was signed by `{}`, not by this CA (`{}`)",
            cert.issuer(),
            ca_cert.subject()
        );
    }
    let serial = cert.raw_serial().to_vec();
    let now = time::OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    if let Some(pem) = existing_crl_pem {
        for r in revocation_list(pem)?.revoked {
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&r.serial),
                revocation_time: r.revoked_at,
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let already = revoked
        .iter()
        .any(|r| r.serial_number == rcgen::SerialNumber::from_slice(&serial));
    if !already {
        revoked.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let listed = revoked.len();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(i64::from(days)),
        // Seconds since the epoch: each new list numbers above the one before.
        crl_number: rcgen::SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca, &ca_key)?;
    Ok(Revoked {
        crl_pem: crl.pem()?,
        serial: hex(&serial),
        already,
        listed,
    })
}

/// One certificate of a PEM file, as `meridian cert list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name (else the whole subject).
    pub name: String,
    /// The subject's and the issuer's distinguished names (`CN=…`).
    pub subject: String,
    pub issuer: String,
    /// The serial number, as hex.
    pub serial: String,
    /// The last day it is valid, `YYYY-MM-DD`, and the days from now to then
    /// (negative once it has expired).
    pub expires: String,
    pub days_left: i64,
    pub is_ca: bool,
}

/// The first certificate of `pem` (a chain's leaf).
pub fn certificate_info(pem: &str) -> anyhow::Result<CertificateInfo> {
    let leaf = leaf_of(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let not_after = cert.validity().not_after.to_datetime();
    let now = time::OffsetDateTime::now_utc();
    Ok(CertificateInfo {
        name: client_name(&leaf).0,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        expires: not_after.date().to_string(),
        days_left: (not_after - now).whole_days(),
        is_ca: cert.is_ca(),
    })
}

/// A certificate a revocation list names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub serial: Vec<u8>,
    pub revoked_at: time::OffsetDateTime,
}

/// What a revocation list (`meridian cert revoke`'s `crl.pem`) names, and its next
/// update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    pub revoked: Vec<Revocation>,
    pub next_update: Option<time::OffsetDateTime>,
}

pub fn revocation_list(pem: &str) -> anyhow::Result<RevocationList> {
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("parsing the revocation list: {e}"))?;
    let (_, list) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the revocation list: {e}"))?;
    let revoked = list
        .iter_revoked_certificates()
        .map(|r| Revocation {
            serial: r.raw_serial().to_vec(),
            revoked_at: r.revocation_date.to_datetime(),
        })
        .collect();
    Ok(RevocationList {
        revoked,
        next_update: list.next_update().map(|t| t.to_datetime()),
    })
}

/// Bytes (a serial number) as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first certificate of `pem` (a chain's leaf).
fn leaf_of(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .context("no certificate in the file")?
        .context("parsing the certificate")
}

fn common_name(name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn
}

/// From a day ago (clocks drift) to `days` from now.
fn valid_for(params: &mut rcgen::CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(pem: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    /// A revocation list keeps what the one before it named; a certificate of
    /// another CA cannot be revoked by this one.
    #[test]
    fn revocation_lists_grow_and_name_only_their_cas_certificates() {
        let (ca_pem, ca_key) = create_ca(None, 30).unwrap();
        let (other_pem, other_key) = create_ca(None, 30).unwrap();
        let (alice, _) = create_signed("alice", &[], 30, &ca_pem, &ca_key).unwrap();
        let (bob, _) = create_signed("bob", &[], 30, &ca_pem, &ca_key).unwrap();
        let (mallory, _) = create_signed("mallory", &[], 30, &other_pem, &other_key).unwrap();
        let first = revoke(&alice, None, &ca_pem, &ca_key, 30).unwrap();
        assert_eq!((first.already, first.listed), (false, 1));
        let again = revoke(&alice, Some(&first.crl_pem), &ca_pem, &ca_key, 30).unwrap();
        assert_eq!((again.already, again.listed), (true, 1));
        let both = revoke(&bob, Some(&again.crl_pem), &ca_pem, &ca_key, 30).unwrap();
        assert_eq!((both.already, both.listed), (false, 2));
        let serials: Vec<String> = revocation_list(&both.crl_pem)
            .unwrap()
            .revoked
            .iter()
            .map(|r| hex(&r.serial))
            .collect();
        assert_eq!(serials, [first.serial, both.serial]);
        let refused = revoke(&mallory, None, &ca_pem, &ca_key, 30).err().unwrap();
        assert!(
            format!("{refused:#}").contains("not by this CA"),
            "{refused:#}"
        );
    }

    #[test]
    fn certificates_signed_by_a_new_ca_name_their_holder_and_chain_to_it() {
        let (ca_pem, ca_key) = create_ca(None, 30).unwrap();
        let (ca_name, _) = client_name(&leaf(&ca_pem));
        assert!(ca_name.starts_with("Meridian CA "), "{ca_name}");
        let (other_ca, other_key) = create_ca(None, 30).unwrap();
        assert_ne!(
            client_name(&leaf(&other_ca)).0,
            ca_name,
            "two CAs, two names"
        );

        let (chain, key) =
            create_signed("alice", &["127.0.0.1".into()], 30, &ca_pem, &ca_key).unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 2, "the certificate, then the CA's");
        let (name, fingerprint_shown) = client_name(&certs[0]);
        assert_eq!(name, "alice");
        assert_eq!(fingerprint_shown, fingerprint(&certs[0]));
        assert!(key.contains("PRIVATE KEY"));

        // The broker's verifier with the CA as tls_client_ca accepts it.
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let check = ClientCheck {
            ca: &ca_file,
            crl: None,
        };
        let verifier =
            client_verifier(check, Arc::new(rustls::crypto::ring::default_provider())).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        assert!(verifier
            .verify_client_cert(&certs[0], &certs[1..], now)
            .is_ok());
        // Not one from another CA.
        let (mallory, _) = create_signed("mallory", &[], 30, &other_ca, &other_key).unwrap();
        assert!(verifier
            .verify_client_cert(&leaf(&mallory), &[], now)
            .is_err());
        // And only a CA signs.
        let refused = create_signed("bob", &[], 30, &chain, &key).unwrap_err();
        assert!(refused.to_string().contains("not a CA"), "{refused}");
    }
}
