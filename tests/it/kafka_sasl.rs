//! SASL on the Kafka listener (`kafka_sasl_users_file`): users made with `meridian
//! sasl add`, Kafka clients (kafka-python, and raw requests) authenticating with
//! SCRAM and PLAIN, refused with a wrong password or none, named to `acl_file` by
//! their user, and users changed by SIGHUP.

use std::path::Path;
use std::process::{Command, Stdio};

use kafka_protocol::messages::{self as k, ApiKey};
use kafka_protocol::protocol::StrBytes;

use crate::harness::{free_ports, meridian_bin, run_with_stdin, TestBroker};
use crate::kafka::{kafka_python, Raw};

/// `meridian sasl ARGS` with `stdin`; its stdout, after checking it succeeded.
fn sasl(args: &[&str], stdin: &str) -> String {
    let mut command = Command::new(meridian_bin());
    command.arg("sasl").args(args);
    let (ok, stdout, stderr) = run_with_stdin(command, stdin);
    assert!(ok, "{stdout}\n{stderr}");
    stdout
}

fn add_user(file: &Path, user: &str, password: &str, extra: &[&str]) {
    let mut args = vec!["add", user, "--file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let said = sasl(&args, &format!("{password}\n"));
    assert!(said.contains(&format!("user {user}")), "{said}");
}

/// A SaslAuthenticate request carrying `text`.
fn token(text: String) -> k::SaslAuthenticateRequest {
    k::SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from(text))
}

/// SCRAM-SHA-256's first steps as `user` on `raw`: the handshake, then the
/// client-first message (nonce `rawclientnonce`); the answer to it.
fn scram_first(raw: &mut Raw, user: &str) -> k::SaslAuthenticateResponse {
    let handshake = k::SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
    raw.send(ApiKey::SaslHandshake, 1, &handshake);
    let chosen: k::SaslHandshakeResponse = raw.receive(ApiKey::SaslHandshake, 1);
    assert_eq!(chosen.error_code, 0);
    raw.send(
        ApiKey::SaslAuthenticate,
        2,
        &token(format!("n,,n={user},r=rawclientnonce")),
    );
    raw.receive(ApiKey::SaslAuthenticate, 2)
}

/// A SCRAM-SHA-256 login as `user` that cannot succeed: the answer to the
/// client-first message, or with `to_the_end` the answer to a final message whose
/// proof is zeros; the broker must close the connection after it.
fn scram_attempt(addr: &str, user: &str, to_the_end: bool) -> k::SaslAuthenticateResponse {
    let mut raw = Raw::connect(addr);
    let mut answer = scram_first(&mut raw, user);
    if to_the_end {
        assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
        let server_first = String::from_utf8(answer.auth_bytes.to_vec()).unwrap();
        let nonce = server_first.split(',').next().unwrap();
        assert!(nonce.starts_with("r=rawclientnonce"), "{server_first}");
        let proof = format!("{}=", "A".repeat(43));
        raw.send(
            ApiKey::SaslAuthenticate,
            2,
            &token(format!("c=biws,{nonce},p={proof}")),
        );
        answer = raw.receive(ApiKey::SaslAuthenticate, 2);
    }
    assert!(raw.ends(), "a failed login closes the connection");
    answer
}

/// Logs `raw` in as `user` with SCRAM-SHA-256 and `password`, as a client does:
/// handshake, client-first, then the proof of RFC 5802. Returns the final answer.
fn scram_login(raw: &mut Raw, user: &str, password: &str) -> k::SaslAuthenticateResponse {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use ring::{digest, hmac, pbkdf2};
    let first = scram_first(raw, user);
    assert_eq!(first.error_code, 0, "{:?}", first.error_message);
    let bare = format!("n={user},r=rawclientnonce");
    let server_first = String::from_utf8(first.auth_bytes.to_vec()).unwrap();
    let fields: Vec<&str> = server_first.split(',').collect();
    let nonce = fields[0].strip_prefix("r=").unwrap();
    let salt = STANDARD
        .decode(fields[1].strip_prefix("s=").unwrap())
        .unwrap();
    let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations.try_into().unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let salted = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&salted, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let last = format!("{without_proof},p={}", STANDARD.encode(proof));
    raw.send(ApiKey::SaslAuthenticate, 2, &token(last));
    raw.receive(ApiKey::SaslAuthenticate, 2)
}

/// `kafka_sasl_session_lifetime_ms` (KIP-368): a login's answer carries the
/// lifetime; a request after it ends closes the connection, unless the client
/// logged in again on the connection before, as the same user. A user removed
/// (and SIGHUP) is shut out of a connection it holds within the lifetime:
/// kafka-python, producing once a second, stops getting its records in.
#[test]
fn sasl_logins_expire_and_re_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    add_user(&users, "alice", "s3cret", &[]);
    add_user(&users, "bob", "hunter2", &[]);
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let log = dir.path().join("broker.log");
    let _broker = TestBroker::start_logging_to(
        &log,
        &[
            &format!("kafka_listen={addr}"),
            &format!("kafka_sasl_users_file={}", users.display()),
            "kafka_sasl_session_lifetime_ms=2000",
        ],
        &[("RUST_LOG", "info")],
    );
    let metadata = k::MetadataRequest::default();
    let mut expires = Raw::connect(&addr);
    let login = scram_login(&mut expires, "alice", "s3cret");
    assert_eq!(login.error_code, 0, "{:?}", login.error_message);
    assert_eq!(login.session_lifetime_ms, 2000);
    expires.send(ApiKey::Metadata, 9, &metadata);
    let _: k::MetadataResponse = expires.receive(ApiKey::Metadata, 9);

    let mut renews = Raw::connect(&addr);
    assert_eq!(scram_login(&mut renews, "alice", "s3cret").error_code, 0);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let again = scram_login(&mut renews, "alice", "s3cret");
    assert_eq!(again.error_code, 0, "{:?}", again.error_message);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // 2.4 s after the first logins: the one that logged in again is served...
    renews.send(ApiKey::Metadata, 9, &metadata);
    let _: k::MetadataResponse = renews.receive(ApiKey::Metadata, 9);
    // ...the other is closed.
    expires.send(ApiKey::Metadata, 9, &metadata);
    assert!(
        expires.ends(),
        "a request after the login expired closes the connection"
    );
    crate::harness::await_log(&log, "after its SASL login expired", 1);
    // Logging in again as someone else fails, and ends the connection.
    let mut switches = Raw::connect(&addr);
    assert_eq!(scram_login(&mut switches, "alice", "s3cret").error_code, 0);
    let bob = scram_login(&mut switches, "bob", "hunter2");
    assert_eq!(bob.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(switches.ends(), "re-authenticated as another user");

    // kafka-python logged in as bob keeps producing while bob is removed.
    let Some(python) = std::env::var_os("KAFKA_PYTHON_FOR_TESTS") else {
        println!("skipped the kafka-python half: KAFKA_PYTHON_FOR_TESTS is not set");
        return;
    };
    let mut running = Command::new(python);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/sasl.py");
    running
        .arg(script)
        .args([
            &addr,
            "-",
            "SCRAM-SHA-256",
            "bob",
            "hunter2",
            "keep-producing",
            "bob-topic",
        ])
        .stdout(Stdio::piped());
    let child = running.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    sasl(&["remove", "bob", "--file", users.to_str().unwrap()], "");
    _broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded kafka_sasl_users_file", 1);
    let out = child.wait_with_output().unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = seen["results"].as_array().unwrap();
    assert_eq!(results[0], "ok", "{seen}");
    assert_ne!(results[results.len() - 1], "ok", "bob is shut out: {seen}");
}

/// kafka-python with `sasl.py`: `ca` for SASL_SSL, `-` for SASL_PLAINTEXT.
fn python(
    addr: &str,
    ca: &str,
    (mechanism, user, password): (&str, &str, &str),
    action: &str,
    topic: &str,
) -> Option<serde_json::Value> {
    kafka_python(
        "sasl.py",
        &[addr, ca, mechanism, user, password, action, topic],
    )
}

/// SASL_PLAINTEXT with SCRAM: alice, with credentials for both hashes, produces and
/// consumes with either; a wrong password, a user with no credential for the hash,
/// a user without a credential for the hash and an unknown user get nowhere; the
/// broker counts each login. A raw client gets ApiVersions (listing the SASL APIs)
/// before it authenticates, and its first other request closes the connection.
#[test]
fn kafka_clients_authenticate_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    add_user(&users, "alice", "s3cret", &[]);
    add_user(
        &users,
        "bob",
        "hunter2",
        &["--mechanism", "SCRAM-SHA-512", "--iterations", "4096"],
    );
    let listed = sasl(&["list", "--file", users.to_str().unwrap(), "--json"], "");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["bob"],
        serde_json::json!({"SCRAM-SHA-512": {"iterations": 4096}})
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("hunter2"),
        "{text}"
    );

    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let metrics = format!("127.0.0.1:{}", free_ports(1)[0]);
    let _broker = TestBroker::start(&[
        &format!("kafka_listen={addr}"),
        &format!("kafka_sasl_users_file={}", users.display()),
        &format!("metrics_listen={metrics}"),
        "kafka_sasl_failure_delay_ms=600",
    ]);

    let mut raw = Raw::connect(&addr);
    raw.send(ApiKey::ApiVersions, 3, &k::ApiVersionsRequest::default());
    let versions: k::ApiVersionsResponse = raw.receive(ApiKey::ApiVersions, 3);
    for api in [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate] {
        assert!(
            versions.api_keys.iter().any(|v| v.api_key == api as i16),
            "{api:?} not listed"
        );
    }
    raw.send(ApiKey::Metadata, 9, &k::MetadataRequest::default());
    assert!(raw.ends(), "a request before SASL closes the connection");
    // A handshake names what is offered; a token with no mechanism chosen fails.
    let mut raw = Raw::connect(&addr);
    let handshake =
        k::SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    raw.send(ApiKey::SaslHandshake, 1, &handshake);
    let refused: k::SaslHandshakeResponse = raw.receive(ApiKey::SaslHandshake, 1);
    assert_eq!(refused.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    assert_eq!(
        refused.mechanisms,
        ["SCRAM-SHA-256", "SCRAM-SHA-512"].map(StrBytes::from_static_str)
    );

    let alice = |mechanism| (mechanism, "alice", "s3cret");
    let Some(seen) = python(&addr, "-", alice("SCRAM-SHA-256"), "roundtrip", "sha256") else {
        return;
    };
    let expected = serde_json::json!({"produced": 100, "consumed": 100, "values_match": true});
    assert_eq!(seen, expected);
    let seen = python(&addr, "-", alice("SCRAM-SHA-512"), "roundtrip", "sha512").unwrap();
    assert_eq!(seen, expected);
    let bob = python(
        &addr,
        "-",
        ("SCRAM-SHA-512", "bob", "hunter2"),
        "produce",
        "sha512",
    );
    assert_eq!(bob.unwrap()["result"], "ok");
    let ok_logins = crate::metrics::scrape(&metrics)
        ["meridian_kafka_sasl_authentications_total{result=\"ok\"}"];
    assert!(ok_logins >= 3.0, "{ok_logins}");

    // A real client with a wrong password gets nowhere...
    let wrong = python(
        &addr,
        "-",
        ("SCRAM-SHA-256", "alice", "wrong"),
        "produce",
        "sha256",
    );
    assert_ne!(wrong.unwrap()["result"], "ok");
    // ...and, step by step: a proof that is not alice's, a user without a
    // credential for the hash, an unknown user. Each is told only that it failed,
    // then the connection closes.
    for (user, proof) in [("alice", true), ("bob", false), ("mallory", false)] {
        let started = std::time::Instant::now();
        let answer = scram_attempt(&addr, user, proof);
        // Not before kafka_sasl_failure_delay_ms.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(500),
            "{user}"
        );
        assert_eq!(answer.error_code, 58, "{user}: SASL_AUTHENTICATION_FAILED");
        let message = answer.error_message.unwrap().to_string();
        assert!(
            message.contains("invalid credentials") && !message.contains(user),
            "{message}"
        );
    }
    let failed = crate::metrics::scrape(&metrics)
        ["meridian_kafka_sasl_authentications_total{result=\"failed\"}"];
    assert!(failed >= 3.0, "{failed}");
}

/// SASL_SSL with PLAIN under `acl_file` (no client certificates): the user names
/// the client to the rules, so alice writes `alice.*` and is refused elsewhere.
/// SIGHUP re-reads the users: a user removed can no longer log in, one added can.
#[test]
fn sasl_users_are_named_to_acl_file_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    add_user(&users, "alice", "s3cret", &[]);
    add_user(&users, "bob", "hunter2", &[]);
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[allow]]\nprincipals = [\"alice\", \"bob\", \"carol\"]\noperations = [\"all\"]\ntopics = [\"alice.*\"]\n",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let log = dir.path().join("broker.log");
    let broker = TestBroker::start_logging_to(
        &log,
        &[
            &format!("kafka_listen={addr}"),
            "kafka_tls=true",
            &format!("kafka_sasl_users_file={}", users.display()),
            &format!("acl_file={}", acl.display()),
        ],
        &[("RUST_LOG", "info")],
    );
    let ca = broker.cert_path();
    let ca = ca.to_str().unwrap();
    let Some(seen) = python(
        &addr,
        ca,
        ("PLAIN", "alice", "s3cret"),
        "roundtrip",
        "alice.orders",
    ) else {
        return;
    };
    let expected = serde_json::json!({"produced": 100, "consumed": 100, "values_match": true});
    assert_eq!(seen, expected);
    let elsewhere = python(&addr, ca, ("PLAIN", "alice", "s3cret"), "produce", "orders").unwrap();
    assert_eq!(elsewhere["result"], "TopicAuthorizationFailedError");

    let file = users.to_str().unwrap();
    sasl(&["remove", "bob", "--file", file], "");
    add_user(&users, "carol", "pw-carol", &[]);
    broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded kafka_sasl_users_file", 1);
    let bob = python(
        &addr,
        ca,
        ("SCRAM-SHA-256", "bob", "hunter2"),
        "produce",
        "alice.orders",
    );
    assert_ne!(bob.unwrap()["result"], "ok");
    let carol = python(
        &addr,
        ca,
        ("SCRAM-SHA-512", "carol", "pw-carol"),
        "produce",
        "alice.orders",
    );
    assert_eq!(carol.unwrap()["result"], "ok");
}

/// The users file's bad cases: a broker will not start on a file it cannot read,
/// and `meridian sasl` refuses what it cannot keep.
#[test]
fn bad_users_files_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "[alice.SCRAM-SHA-256]\npassword = \"plain text\"\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let data = dir.path().join("data");
    let out = Command::new(meridian_bin())
        .args(["broker", "--set"])
        .arg(format!("kafka_listen={addr}"))
        .arg("--set")
        .arg(format!("kafka_sasl_users_file={}", users.display()))
        .arg("--set")
        .arg(format!("data_dir={}", data.display()))
        .arg("--set")
        .arg(format!("listen=127.0.0.1:{}", free_ports(1)[0]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kafka_sasl_users_file") && stderr.contains("unknown field `password`"),
        "{stderr}"
    );
    for (args, said) in [
        (vec!["add", "a b"], "no spaces"),
        (
            vec!["add", "alice", "--mechanism", "PLAIN"],
            "credentials are kept for",
        ),
        (vec!["add", "alice", "--iterations", "10"], "4096 to 16384"),
        (vec!["remove", "nobody"], "unknown field"),
    ] {
        let fresh = dir.path().join("fresh.toml");
        let file = if args[0] == "remove" { &users } else { &fresh };
        let out = Command::new(meridian_bin())
            .arg("sasl")
            .args(&args)
            .arg("--file")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
}
