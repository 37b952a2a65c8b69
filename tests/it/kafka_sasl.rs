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

/// A SCRAM-SHA-256 login as `user` that cannot succeed: the answer to the
/// client-first message, or with `to_the_end` the answer to a final message whose
/// proof is zeros; the broker must close the connection after it.
fn scram_attempt(addr: &str, user: &str, to_the_end: bool) -> k::SaslAuthenticateResponse {
    let mut raw = Raw::connect(addr);
    let handshake = k::SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
    raw.send(ApiKey::SaslHandshake, 1, &handshake);
    let chosen: k::SaslHandshakeResponse = raw.receive(ApiKey::SaslHandshake, 1);
    assert_eq!(chosen.error_code, 0);
    let token = |text: String| {
        k::SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from(text))
    };
    raw.send(
        ApiKey::SaslAuthenticate,
        2,
        &token(format!("n,,n={user},r=testnonce")),
    );
    let mut answer: k::SaslAuthenticateResponse = raw.receive(ApiKey::SaslAuthenticate, 2);
    if to_the_end {
        assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
        let server_first = String::from_utf8(answer.auth_bytes.to_vec()).unwrap();
        let nonce = server_first.split(',').next().unwrap();
        assert!(nonce.starts_with("r=testnonce"), "{server_first}");
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
        let answer = scram_attempt(&addr, user, proof);
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
