//! SASL authentication of Kafka clients (sans-IO): the broker's side of
//! `SaslHandshake` and `SaslAuthenticate` for the mechanisms `PLAIN` (RFC 4616) and
//! `SCRAM-SHA-256` / `SCRAM-SHA-512` (RFC 5802, RFC 7677), as Kafka's
//! `SASL_PLAINTEXT` and `SASL_SSL` security protocols use them.
//!
//! Passwords are not kept: a user has SCRAM credentials per hash (a salt, an
//! iteration count, `StoredKey` and `ServerKey`), made by [`ScramCredential::new`].
//! SCRAM checks the client's proof against them; `PLAIN` derives the credential
//! from the password it is sent, with the stored salt and iterations, and compares.
//!
//! An [`Authenticator`] follows one connection's exchange: [`Authenticator::handshake`]
//! for the mechanism the client asks for, then [`Authenticator::authenticate`] for each
//! token, until it says who the client is or why it is refused (after which the
//! connection is closed, as a Kafka broker does).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// A SASL mechanism served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::Plain,
    ];

    /// The name clients ask for (`sasl.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM hashes; `PLAIN` has none of its own.
    pub const SCRAM: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    fn hash(self) -> Option<Hash> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(Hash::Sha256),
            Mechanism::ScramSha512 => Some(Hash::Sha512),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }

    fn sign(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), message)
            .as_ref()
            .to_vec()
    }
}

/// Fewest PBKDF2 iterations a credential may have (Kafka's floor too).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a credential may have: `PLAIN` runs them at each login.
pub const MAX_ITERATIONS: u32 = 16384;

/// Checks a credential's PBKDF2 iteration count against the bounds above.
pub fn check_iterations(iterations: u32) -> Result<(), String> {
    if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Ok(());
    }
    Err(format!(
        "{iterations} iterations: a credential has {MIN_ITERATIONS} to {MAX_ITERATIONS}"
    ))
}

/// One user's SCRAM credential for one hash (RFC 5802 section 3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential of `password` under `mechanism` (a SCRAM one), with `salt`.
    pub fn new(
        mechanism: Mechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramCredential, String> {
        let hash = mechanism
            .hash()
            .ok_or_else(|| format!("{mechanism} keeps no credential of its own"))?;
        check_iterations(iterations)?;
        if salt.is_empty() {
            return Err("an empty salt".into());
        }
        let salted = salted_password(hash, password, salt, iterations);
        let client_key = hash.sign(&salted, b"Client Key");
        Ok(ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(hash.digest(), &client_key).as_ref().to_vec(),
            server_key: hash.sign(&salted, b"Server Key"),
        })
    }

    /// Whether `password` is the one this credential (of `mechanism`) was made from.
    fn admits(&self, mechanism: Mechanism, password: &[u8]) -> bool {
        ScramCredential::new(mechanism, password, &self.salt, self.iterations)
            .is_ok_and(|made| same(&made.stored_key, &self.stored_key))
    }
}

fn salted_password(hash: Hash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; hash.len()];
    let iterations = NonZeroU32::new(iterations).expect("checked by callers");
    pbkdf2::derive(hash.pbkdf2(), iterations, salt, password, &mut out);
    out
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The users who may authenticate, with their credentials by mechanism.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    pub users: BTreeMap<String, BTreeMap<Mechanism, ScramCredential>>,
}

impl Users {
    fn credential(&self, user: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism)
    }

    /// Reads a users file (`kafka_sasl_users_file`, written by `meridian sasl`):
    /// a table per user, in it one per SCRAM mechanism with `salt`, `iterations`,
    /// `stored_key` and `server_key` (base64).
    pub fn from_toml(text: &str) -> Result<Users, String> {
        let file: BTreeMap<String, BTreeMap<String, CredentialEntry>> =
            toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = BTreeMap::new();
        for (name, entries) in file {
            check_user_name(&name).map_err(|e| format!("user `{name}`: {e}"))?;
            let mut credentials = BTreeMap::new();
            for (mechanism_name, entry) in entries {
                let in_user = |e: String| format!("user `{name}`, {mechanism_name}: {e}");
                let mechanism = Mechanism::from_name(&mechanism_name)
                    .filter(|m| m.hash().is_some())
                    .ok_or_else(|| {
                        in_user(format!(
                            "not a SCRAM mechanism (those are {})",
                            Mechanism::SCRAM.map(Mechanism::name).join(", ")
                        ))
                    })?;
                let credential = entry.credential(mechanism).map_err(in_user)?;
                credentials.insert(mechanism, credential);
            }
            if credentials.is_empty() {
                return Err(format!("user `{name}` has no credential"));
            }
            users.insert(name, credentials);
        }
        Ok(Users { users })
    }

    /// The users file's text, read back by [`Users::from_toml`].
    pub fn to_toml(&self) -> String {
        let file: BTreeMap<&str, BTreeMap<&str, CredentialEntry>> = self
            .users
            .iter()
            .map(|(name, credentials)| {
                let entries = credentials
                    .iter()
                    .map(|(m, c)| {
                        let entry = CredentialEntry {
                            salt: base64_encode(&c.salt),
                            iterations: c.iterations,
                            stored_key: base64_encode(&c.stored_key),
                            server_key: base64_encode(&c.server_key),
                        };
                        (m.name(), entry)
                    })
                    .collect();
                (name.as_str(), entries)
            })
            .collect();
        toml::to_string(&file).expect("a users file is plain strings and numbers")
    }
}

/// A credential as the users file keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialEntry {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

impl CredentialEntry {
    fn credential(self, mechanism: Mechanism) -> Result<ScramCredential, String> {
        let hash = mechanism.hash().expect("SCRAM mechanisms only");
        let decode = |what: &str, text: &str| {
            base64_decode(text).ok_or_else(|| format!("{what} is not base64"))
        };
        let credential = ScramCredential {
            salt: decode("salt", &self.salt)?,
            iterations: self.iterations,
            stored_key: decode("stored_key", &self.stored_key)?,
            server_key: decode("server_key", &self.server_key)?,
        };
        if credential.salt.is_empty() {
            return Err("an empty salt".into());
        }
        check_iterations(credential.iterations)?;
        for (what, key) in [
            ("stored_key", &credential.stored_key),
            ("server_key", &credential.server_key),
        ] {
            if key.len() != hash.len() {
                return Err(format!(
                    "{what} has {} bytes, not {mechanism}'s {}",
                    key.len(),
                    hash.len()
                ));
            }
        }
        Ok(credential)
    }
}

/// Random bytes: a salt for [`ScramCredential::new`], or a connection's part of
/// the SCRAM nonce.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system's random source works");
    out
}

/// Checks a user name: what SCRAM can carry and a log line can show plainly.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("a user name has 1 to 255 bytes".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "a user name has no spaces or control characters (found {c:?})"
        ));
    }
    Ok(())
}

/// What became of a connection's exchange after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More tokens to come.
    Continue,
    /// The client is this user.
    Authenticated(String),
    /// Refused: send the answer, then close the connection.
    Failed(String),
}

/// The answer to a `SaslHandshake`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeAnswer {
    /// 0, `UNSUPPORTED_SASL_MECHANISM` or `ILLEGAL_SASL_STATE`.
    pub error_code: i16,
    /// The mechanisms enabled, as the answer lists them.
    pub mechanisms: Vec<&'static str>,
}

/// The answer to a `SaslAuthenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticateAnswer {
    /// 0, `SASL_AUTHENTICATION_FAILED` or `ILLEGAL_SASL_STATE`.
    pub error_code: i16,
    pub error_message: Option<String>,
    pub auth_bytes: Vec<u8>,
    pub outcome: Outcome,
}

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// One connection's SASL exchange.
#[derive(Debug)]
pub struct Authenticator {
    users: Arc<Users>,
    enabled: Vec<Mechanism>,
    /// The server's part of the SCRAM nonce (printable, no commas).
    server_nonce: String,
    /// A re-authentication's: who the connection logged in as before, whom
    /// it must log in as again.
    expected_user: Option<String>,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitHandshake,
    AwaitFirst(Mechanism),
    /// SCRAM: the server-first message was sent.
    AwaitFinal {
        user: String,
        mechanism: Mechanism,
        credential: ScramCredential,
        /// client-first-message-bare "," server-first-message ",": the start of
        /// the AuthMessage.
        transcript: String,
        nonce: String,
        gs2_header: String,
    },
    Done,
}

impl Authenticator {
    /// `server_nonce`: random bytes of this connection's, for SCRAM.
    pub fn new(users: Arc<Users>, enabled: Vec<Mechanism>, server_nonce: &[u8]) -> Authenticator {
        Authenticator {
            users,
            enabled,
            server_nonce: base64_encode(server_nonce),
            expected_user: None,
            state: State::AwaitHandshake,
        }
    }

    /// A re-authentication (KIP-368) of a connection logged in as `user`: logging
    /// in as anyone else fails.
    pub fn reauthenticating(mut self, user: &str) -> Authenticator {
        self.expected_user = Some(user.to_string());
        self
    }

    /// A `SaslHandshake` asking for `mechanism`.
    pub fn handshake(&mut self, mechanism: &str) -> HandshakeAnswer {
        let mechanisms = self.enabled.iter().map(|m| m.name()).collect();
        if !matches!(self.state, State::AwaitHandshake) {
            return HandshakeAnswer {
                error_code: ILLEGAL_SASL_STATE,
                mechanisms,
            };
        }
        match Mechanism::from_name(mechanism).filter(|m| self.enabled.contains(m)) {
            Some(chosen) => {
                self.state = State::AwaitFirst(chosen);
                HandshakeAnswer {
                    error_code: 0,
                    mechanisms,
                }
            }
            None => HandshakeAnswer {
                error_code: UNSUPPORTED_SASL_MECHANISM,
                mechanisms,
            },
        }
    }

    /// A `SaslAuthenticate` carrying `token`.
    pub fn authenticate(&mut self, token: &[u8]) -> AuthenticateAnswer {
        let state = std::mem::replace(&mut self.state, State::Done);
        let used = state.mechanism();
        let mut step = match state {
            State::AwaitFirst(Mechanism::Plain) => self.plain(token),
            State::AwaitFirst(mechanism) => self.scram_first(mechanism, token),
            State::AwaitFinal {
                user,
                mechanism,
                credential,
                transcript,
                nonce,
                gs2_header,
            } => scram_final(
                token,
                &user,
                mechanism,
                &credential,
                (&transcript, &nonce, &gs2_header),
            ),
            State::AwaitHandshake | State::Done => {
                let why = "SaslAuthenticate without a SaslHandshake before it";
                return AuthenticateAnswer {
                    error_code: ILLEGAL_SASL_STATE,
                    error_message: Some(why.into()),
                    auth_bytes: Vec::new(),
                    outcome: Outcome::Failed(why.into()),
                };
            }
        };
        if let (Ok((_, Outcome::Authenticated(user), _)), Some(before), Some(used)) =
            (&step, &self.expected_user, used)
        {
            if user != before {
                let why = format!("logged in as `{before}`, re-authenticated as `{user}`");
                step = Err(Refusal::new(used, &why));
            }
        }
        match step {
            Ok((bytes, Outcome::Continue, next)) => {
                self.state = next;
                AuthenticateAnswer {
                    error_code: 0,
                    error_message: None,
                    auth_bytes: bytes,
                    outcome: Outcome::Continue,
                }
            }
            Ok((bytes, outcome, _)) => AuthenticateAnswer {
                error_code: 0,
                error_message: None,
                auth_bytes: bytes,
                outcome,
            },
            Err(reason) => AuthenticateAnswer {
                error_code: SASL_AUTHENTICATION_FAILED,
                // The client learns that it failed, not why: a reason such as
                // "unknown user" would tell a guesser which names exist.
                error_message: Some(format!(
                    "Authentication failed: invalid credentials with SASL mechanism {}",
                    reason.mechanism
                )),
                auth_bytes: Vec::new(),
                outcome: Outcome::Failed(reason.reason),
            },
        }
    }

    fn plain(&self, token: &[u8]) -> Step {
        let refuse = |reason: &str| Refusal::new(Mechanism::Plain, reason);
        let mut parts = token.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("a PLAIN token is authzid NUL user NUL password"));
        };
        let user = std::str::from_utf8(authcid).map_err(|_| refuse("a user name not UTF-8"))?;
        if !authzid.is_empty() && authzid != authcid {
            return Err(refuse(&format!(
                "user `{user}` asked to act as another user"
            )));
        }
        // The first SCRAM credential the user has: PLAIN keeps none of its own.
        let Some((mechanism, credential)) = Mechanism::SCRAM.iter().find_map(|&m| {
            let credential = self.users.credential(user, m)?;
            Some((m, credential))
        }) else {
            return Err(refuse(&format!("unknown user `{user}`")));
        };
        if !credential.admits(mechanism, password) {
            return Err(refuse(&format!("wrong password for user `{user}`")));
        }
        Ok((
            Vec::new(),
            Outcome::Authenticated(user.to_string()),
            State::Done,
        ))
    }

    fn scram_first(&self, mechanism: Mechanism, token: &[u8]) -> Step {
        let refuse = |reason: &str| Refusal::new(mechanism, reason);
        let message =
            std::str::from_utf8(token).map_err(|_| refuse("client-first-message not UTF-8"))?;
        // gs2-header: a channel-binding flag, an optional authzid, then the bare
        // message.
        let mut fields = message.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(refuse("client-first-message without a gs2 header"));
        };
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => {
                return Err(refuse("channel binding is not supported"));
            }
            _ => return Err(refuse("client-first-message with a bad gs2 flag")),
        }
        let bare_fields: Vec<&str> = bare.split(',').collect();
        let (Some(name), Some(client_nonce)) = (
            bare_fields.first().and_then(|f| f.strip_prefix("n=")),
            bare_fields.get(1).and_then(|f| f.strip_prefix("r=")),
        ) else {
            return Err(refuse("client-first-message lacks n= and r="));
        };
        // Extensions (Kafka's `tokenauth` for delegation tokens) are not served.
        if bare_fields.len() > 2 {
            return Err(refuse("SCRAM extensions are not supported"));
        }
        let user = unescape_name(name).ok_or_else(|| refuse("a user name badly escaped"))?;
        if !authzid.is_empty()
            && authzid.strip_prefix("a=").and_then(unescape_name) != Some(user.clone())
        {
            return Err(refuse(&format!(
                "user `{user}` asked to act as another user"
            )));
        }
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(refuse("a client nonce that is empty or not printable"));
        }
        let Some(credential) = self.users.credential(&user, mechanism) else {
            return Err(refuse(&format!("unknown user `{user}` for {mechanism}")));
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            base64_encode(&credential.salt),
            credential.iterations
        );
        let gs2_header = format!("{flag},{authzid},");
        let next = State::AwaitFinal {
            user,
            mechanism,
            credential: credential.clone(),
            transcript: format!("{bare},{server_first},"),
            nonce,
            gs2_header,
        };
        Ok((server_first.into_bytes(), Outcome::Continue, next))
    }
}

impl State {
    /// The mechanism of the exchange under way, if one was chosen.
    fn mechanism(&self) -> Option<Mechanism> {
        match self {
            State::AwaitFirst(mechanism) | State::AwaitFinal { mechanism, .. } => Some(*mechanism),
            State::AwaitHandshake | State::Done => None,
        }
    }
}

/// A step's answer bytes, outcome and the state after it; or why it failed.
type Step = Result<(Vec<u8>, Outcome, State), Refusal>;

#[derive(Debug)]
struct Refusal {
    mechanism: Mechanism,
    reason: String,
}

impl Refusal {
    fn new(mechanism: Mechanism, reason: &str) -> Refusal {
        Refusal {
            mechanism,
            reason: reason.to_string(),
        }
    }
}

fn scram_final(
    token: &[u8],
    user: &str,
    mechanism: Mechanism,
    credential: &ScramCredential,
    (transcript, nonce, gs2_header): (&str, &str, &str),
) -> Step {
    let hash = mechanism.hash().expect("SCRAM mechanisms only");
    let refuse = |reason: &str| Refusal::new(mechanism, reason);
    let message =
        std::str::from_utf8(token).map_err(|_| refuse("client-final-message not UTF-8"))?;
    let Some((without_proof, proof)) = message.rsplit_once(",p=") else {
        return Err(refuse("client-final-message without a proof"));
    };
    let mut fields = without_proof.split(',');
    let (Some(binding), Some(their_nonce)) = (
        fields.next().and_then(|f| f.strip_prefix("c=")),
        fields.next().and_then(|f| f.strip_prefix("r=")),
    ) else {
        return Err(refuse("client-final-message lacks c= and r="));
    };
    if base64_decode(binding).as_deref() != Some(gs2_header.as_bytes()) {
        return Err(refuse("channel binding differs from the gs2 header"));
    }
    if their_nonce != nonce {
        return Err(refuse("the nonce is not the one the server sent"));
    }
    let proof = base64_decode(proof).ok_or_else(|| refuse("a proof not in base64"))?;
    if proof.len() != hash.len() {
        return Err(refuse("a proof of the wrong length"));
    }
    let auth_message = format!("{transcript}{without_proof}");
    let client_signature = hash.sign(&credential.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let stored = digest::digest(hash.digest(), &client_key);
    if !same(stored.as_ref(), &credential.stored_key) {
        return Err(refuse(&format!("wrong password for user `{user}`")));
    }
    let server_signature = hash.sign(&credential.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", base64_encode(&server_signature));
    Ok((
        server_final.into_bytes(),
        Outcome::Authenticated(user.to_string()),
        State::Done,
    ))
}

/// A SCRAM `saslname`: `=2C` is a comma, `=3D` an equals sign, no other `=`.
fn unescape_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The bytes of standard, padded base64 (SCRAM's); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_with(name: &str, password: &str, iterations: u32) -> Arc<Users> {
        let mut users = Users::default();
        let mut credentials = BTreeMap::new();
        for m in Mechanism::SCRAM {
            let credential =
                ScramCredential::new(m, password.as_bytes(), b"pinch of salt", iterations).unwrap();
            credentials.insert(m, credential);
        }
        users.users.insert(name.to_string(), credentials);
        Arc::new(users)
    }

    fn authenticator(users: Arc<Users>) -> Authenticator {
        Authenticator::new(users, Mechanism::ALL.to_vec(), b"server nonce bytes")
    }

    /// RFC 7677 section 3: the SCRAM-SHA-256 exchange of user `user`, password
    /// `pencil`, byte for byte.
    #[test]
    fn the_rfc_7677_exchange() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential =
            ScramCredential::new(Mechanism::ScramSha256, b"pencil", &salt, 4096).unwrap();
        let mut users = Users::default();
        users.users.insert(
            "user".into(),
            BTreeMap::from([(Mechanism::ScramSha256, credential)]),
        );
        let mut auth = Authenticator::new(Arc::new(users), vec![Mechanism::ScramSha256], b"");
        auth.server_nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        assert_eq!(auth.handshake("SCRAM-SHA-256").error_code, 0);
        let first = auth.authenticate(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first.outcome, Outcome::Continue);
        assert_eq!(
            String::from_utf8(first.auth_bytes).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = auth.authenticate(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(last.error_code, 0, "{:?}", last.error_message);
        assert_eq!(last.outcome, Outcome::Authenticated("user".into()));
        assert_eq!(
            String::from_utf8(last.auth_bytes).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    /// A SCRAM client's side, to drive the server through whole exchanges.
    fn scram_client(
        auth: &mut Authenticator,
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> AuthenticateAnswer {
        let hash = mechanism.hash().unwrap();
        assert_eq!(auth.handshake(mechanism.name()).error_code, 0);
        let bare = format!("n={user},r=clientnonce");
        let first = auth.authenticate(format!("n,,{bare}").as_bytes());
        if first.error_code != 0 {
            return first;
        }
        let server_first = String::from_utf8(first.auth_bytes).unwrap();
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt = base64_decode(fields[1].strip_prefix("s=").unwrap()).unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let salted = salted_password(hash, password.as_bytes(), &salt, iterations);
        let client_key = hash.sign(&salted, b"Client Key");
        let stored_key = digest::digest(hash.digest(), &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hash.sign(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let last =
            auth.authenticate(format!("{without_proof},p={}", base64_encode(&proof)).as_bytes());
        if last.error_code == 0 {
            let server_key = hash.sign(&salted, b"Server Key");
            let expected = hash.sign(&server_key, auth_message.as_bytes());
            assert_eq!(
                String::from_utf8(last.auth_bytes.clone()).unwrap(),
                format!("v={}", base64_encode(&expected))
            );
        }
        last
    }

    #[test]
    fn scram_sha_512_and_256_admit_the_password_and_refuse_another() {
        let users = users_with("alice", "s3cret", 4096);
        for mechanism in Mechanism::SCRAM {
            let ok = scram_client(
                &mut authenticator(users.clone()),
                mechanism,
                "alice",
                "s3cret",
            );
            assert_eq!(
                ok.outcome,
                Outcome::Authenticated("alice".into()),
                "{mechanism}"
            );
            let wrong = scram_client(
                &mut authenticator(users.clone()),
                mechanism,
                "alice",
                "guess",
            );
            assert_eq!(wrong.error_code, SASL_AUTHENTICATION_FAILED);
            assert!(
                matches!(&wrong.outcome, Outcome::Failed(r) if r.contains("wrong password")),
                "{wrong:?}"
            );
            // The client is told it failed, not that the user exists.
            assert!(!wrong.error_message.unwrap().contains("alice"));
            let unknown = scram_client(
                &mut authenticator(users.clone()),
                mechanism,
                "bob",
                "s3cret",
            );
            assert_eq!(unknown.error_code, SASL_AUTHENTICATION_FAILED);
            assert!(matches!(&unknown.outcome, Outcome::Failed(r) if r.contains("unknown user")));
        }
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let users = users_with("alice", "s3cret", 4096);
        let mut auth = authenticator(users.clone());
        assert_eq!(auth.handshake("PLAIN").error_code, 0);
        assert_eq!(
            auth.authenticate(b"\0alice\0s3cret").outcome,
            Outcome::Authenticated("alice".into())
        );
        for (token, why) in [
            (&b"\0alice\0guess"[..], "wrong password"),
            (b"\0bob\0s3cret", "unknown user"),
            (b"bob\0alice\0s3cret", "act as another"),
            (b"alice\0s3cret", "authzid NUL user NUL password"),
        ] {
            let mut auth = authenticator(users.clone());
            auth.handshake("PLAIN");
            let answer = auth.authenticate(token);
            assert_eq!(answer.error_code, SASL_AUTHENTICATION_FAILED);
            assert!(
                matches!(&answer.outcome, Outcome::Failed(r) if r.contains(why)),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn a_re_authentication_must_be_the_same_users() {
        let mut users = (*users_with("alice", "a-pw", 4096)).clone();
        users
            .users
            .extend(users_with("bob", "b-pw", 4096).users.clone());
        let users = Arc::new(users);
        let again = |user: &str, password: &str| {
            let mut auth = authenticator(users.clone()).reauthenticating("alice");
            auth.handshake("PLAIN");
            auth.authenticate(format!("\0{user}\0{password}").as_bytes())
        };
        assert_eq!(
            again("alice", "a-pw").outcome,
            Outcome::Authenticated("alice".into())
        );
        let other = again("bob", "b-pw");
        assert_eq!(other.error_code, SASL_AUTHENTICATION_FAILED);
        assert!(
            matches!(&other.outcome, Outcome::Failed(r) if r.contains("re-authenticated as `bob`")),
            "{other:?}"
        );
    }

    #[test]
    fn handshakes_name_the_enabled_mechanisms_and_refuse_others() {
        let mut auth = Authenticator::new(Arc::default(), vec![Mechanism::ScramSha512], b"n");
        let refused = auth.handshake("PLAIN");
        assert_eq!(refused.error_code, UNSUPPORTED_SASL_MECHANISM);
        assert_eq!(refused.mechanisms, vec!["SCRAM-SHA-512"]);
        assert_eq!(
            auth.handshake("GSSAPI").error_code,
            UNSUPPORTED_SASL_MECHANISM
        );
        assert_eq!(auth.handshake("SCRAM-SHA-512").error_code, 0);
        assert_eq!(
            auth.handshake("SCRAM-SHA-512").error_code,
            ILLEGAL_SASL_STATE
        );
        // A token before any handshake.
        let mut auth = authenticator(Arc::default());
        let early = auth.authenticate(b"\0a\0b");
        assert_eq!(early.error_code, ILLEGAL_SASL_STATE);
        assert!(matches!(early.outcome, Outcome::Failed(_)));
    }

    #[test]
    fn malformed_scram_messages_are_refused() {
        let users = users_with("alice", "pw", 4096);
        for first in [
            &b"p=tls-unique,,n=alice,r=abc"[..],
            b"x,,n=alice,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=abc,ext=1",
            b"n,,n=al=ice,r=abc",
            b"n,a=bob,n=alice,r=abc",
            b"n,,n=alice,r=",
            b"\xff",
            b"",
        ] {
            let mut auth = authenticator(users.clone());
            auth.handshake("SCRAM-SHA-256");
            let answer = auth.authenticate(first);
            assert_eq!(answer.error_code, SASL_AUTHENTICATION_FAILED, "{first:?}");
        }
        // A final message with another nonce, or a proof that is not base64.
        for last in [
            "c=biws,r=othernonce,p=AAAA",
            "c=biws,r=NONCE,p=not base64",
            "c=eSws,r=NONCE,p=AAAA",
            "c=biws,r=NONCE",
        ] {
            let mut auth = authenticator(users.clone());
            auth.handshake("SCRAM-SHA-256");
            let first = auth.authenticate(b"n,,n=alice,r=abc");
            let server_first = String::from_utf8(first.auth_bytes).unwrap();
            let nonce = server_first
                .split(',')
                .next()
                .unwrap()
                .strip_prefix("r=")
                .unwrap();
            let answer = auth.authenticate(last.replace("NONCE", nonce).as_bytes());
            assert_eq!(answer.error_code, SASL_AUTHENTICATION_FAILED, "{last}");
        }
    }

    #[test]
    fn a_users_file_round_trips_and_bad_ones_say_why() {
        let users = users_with("alice", "s3cret", 4096);
        let text = users.to_toml();
        assert!(text.contains("[alice.SCRAM-SHA-256]"), "{text}");
        assert!(!text.contains("s3cret"));
        assert_eq!(Users::from_toml(&text).unwrap(), *users);
        for (bad, why) in [
            ("[alice.PLAIN]\nsalt = \"cw==\"\niterations = 4096\nstored_key = \"\"\nserver_key = \"\"\n", "not a SCRAM"),
            ("[alice]\n", "no credential"),
            ("[\"a b\".SCRAM-SHA-256]\nsalt = \"cw==\"\niterations = 4096\nstored_key = \"\"\nserver_key = \"\"\n", "no spaces"),
            ("[alice.SCRAM-SHA-256]\nsalt = \"cw==\"\niterations = 10\nstored_key = \"\"\nserver_key = \"\"\n", "10 iterations"),
            ("[alice.SCRAM-SHA-256]\nsalt = \"cw==\"\niterations = 4096\nstored_key = \"cw==\"\nserver_key = \"cw==\"\n", "has 1 bytes"),
            ("[alice.SCRAM-SHA-256]\nsalt = \"!\"\niterations = 4096\nstored_key = \"\"\nserver_key = \"\"\n", "not base64"),
            ("[alice.SCRAM-SHA-256]\npassword = \"x\"\n", "unknown field"),
        ] {
            let e = Users::from_toml(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn names_unescape_and_credentials_have_bounds() {
        assert_eq!(unescape_name("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape_name("a=2"), None);
        assert!(ScramCredential::new(Mechanism::ScramSha256, b"p", b"s", 100).is_err());
        assert!(ScramCredential::new(Mechanism::ScramSha256, b"p", b"", 4096).is_err());
        assert!(ScramCredential::new(Mechanism::Plain, b"p", b"s", 4096).is_err());
        assert!(check_user_name("alice").is_ok());
        assert!(check_user_name("al ice").is_err());
        assert!(check_user_name("").is_err());
    }

    /// Whatever a client sends, in any order, the exchange answers without
    /// panicking, and only the password's own proof authenticates.
    mod arbitrary_input {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..80),
                // Near-misses of the real messages.
                "(n|y|p=x|)?,(a=[a-z=,]{0,6})?,(n=[a-z=]{0,6})?(,r=[!-~]{0,8})?(,[a-z]=[!-~]{0,6}){0,3}"
                    .prop_map(String::into_bytes),
                "(c=[A-Za-z0-9+/=]{0,8})?(,r=[!-~]{0,12})?(,p=[A-Za-z0-9+/=]{0,48})?"
                    .prop_map(String::into_bytes),
                "[a-z]{0,4}\\x00[a-z]{0,6}\\x00[a-z]{0,6}".prop_map(String::into_bytes),
            ]
        }

        #[derive(Debug, Clone)]
        enum Step {
            Handshake(String),
            Token(Vec<u8>),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                prop::sample::select(vec![
                    "PLAIN",
                    "SCRAM-SHA-256",
                    "SCRAM-SHA-512",
                    "GSSAPI",
                    ""
                ])
                .prop_map(|m| Step::Handshake(m.to_string())),
                token().prop_map(Step::Token),
            ]
        }

        proptest! {
            #[test]
            fn any_sequence_is_answered_and_guesses_never_authenticate(
                steps in proptest::collection::vec(step(), 1..8),
            ) {
                let users = users_with("alice", "s3cret", 4096);
                let mut auth = authenticator(users);
                for step in steps {
                    match step {
                        Step::Handshake(m) => {
                            let answer = auth.handshake(&m);
                            prop_assert!([0, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE]
                                .contains(&answer.error_code));
                        }
                        Step::Token(t) => {
                            let answer = auth.authenticate(&t);
                            prop_assert!(
                                !matches!(answer.outcome, Outcome::Authenticated(_)),
                                "{:?} authenticated", String::from_utf8_lossy(&t)
                            );
                            if answer.error_code != 0 {
                                prop_assert!(matches!(answer.outcome, Outcome::Failed(_)));
                            }
                        }
                    }
                }
            }

            #[test]
            fn any_text_as_a_users_file_is_read_or_refused(text in "[\\[\\]a-zA-Z0-9=\".\\n -]{0,120}") {
                let _ = Users::from_toml(&text);
            }
        }
    }
}
