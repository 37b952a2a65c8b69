//! Clients trust the broker by pinned fingerprint or by its PEM certificate, and
//! refuse a wrong pin or a wrong name; brokers with `tls_client_ca` admit only
//! clients with a certificate from that CA (mutual TLS).

use meridian_client::{
    Client, ClientConfig, ClientIdentity, Error, NewTopic, ProducerConfig, ProducerRecord, Trust,
};

use crate::harness::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_by_fingerprint_or_certificate_and_refuse_impostors() {
    let broker = TestBroker::start(&[]);
    let pinned = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::parse_fingerprint(&broker.fingerprint).unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(
        pinned.broker_info().await.unwrap().cluster_id,
        "meridian-local"
    );

    let by_file = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::CaFile(broker.cert_path()),
    ))
    .await
    .unwrap();
    by_file.admin().list_topics().await.unwrap();
    let pem = std::fs::read(broker.cert_path()).unwrap();
    Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::CaPem(pem.clone()),
    ))
    .await
    .unwrap();

    let Trust::Fingerprint(mut wrong) = Trust::parse_fingerprint(&broker.fingerprint).unwrap()
    else {
        unreachable!()
    };
    wrong[0] ^= 1;
    let err = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::Fingerprint(wrong),
    ))
    .await
    .err();
    assert!(err.is_some(), "a wrong pin must be refused");

    let mut wrong_name = ClientConfig::new(broker.addr.clone(), Trust::CaPem(pem));
    wrong_name.server_name = "elsewhere.example".into();
    assert!(
        Client::connect(wrong_name).await.is_err(),
        "a certificate for another name must be refused"
    );
}

/// Runs `meridian cert ARGS`.
fn cert_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::harness::meridian_bin())
        .arg("cert")
        .args(args)
        .output()
        .expect("run meridian cert")
}

/// Runs `meridian cert ARGS` and insists it succeeds.
pub fn cert(args: &[&str]) {
    let out = cert_output(args);
    assert!(
        out.status.success(),
        "meridian cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made by `meridian cert create-ca` in `dir`, with certificates for `names`.
pub fn ca_with(dir: &std::path::Path, names: &[&str]) {
    let dir = dir.to_str().unwrap();
    cert(&["create-ca", "--dir", dir]);
    for name in names {
        cert(&["create", name, "--dir", dir]);
    }
}

/// With `tls_client_ca` set, the broker admits a client whose certificate that CA
/// signed, names it in its log, and refuses a client without a certificate or with
/// one from another CA, each with an error that says so; the CLI presents one with
/// `--cert` and `--key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, other) = (dir.path().join("certs"), dir.path().join("other"));
    ca_with(&certs, &["alice"]);
    ca_with(&other, &["mallory"]);
    let log = dir.path().join("broker.log");
    let client_ca = format!("tls_client_ca={}", certs.join("ca.pem").display());
    let metrics = format!("127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    let broker = TestBroker::start_logging_to(
        &log,
        &[&client_ca, &format!("metrics_listen={metrics}")],
        // Request spans are DEBUG.
        &[("RUST_LOG", "info,meridian_server=debug")],
    );
    let config = |identity: Option<&str>| {
        let mut config = ClientConfig::new(
            broker.addr.clone(),
            Trust::parse_fingerprint(&broker.fingerprint).unwrap(),
        );
        config.identity = identity.map(|name| {
            let base = if name == "mallory" { &other } else { &certs };
            ClientIdentity::from_files(
                base.join(format!("{name}.pem")),
                base.join(format!("{name}.key")),
            )
            .unwrap()
        });
        config
    };

    match Client::connect(config(None)).await {
        Err(Error::Tls(message)) => assert!(
            message.contains("requires a client certificate"),
            "{message}"
        ),
        other => panic!(
            "a client without a certificate must be refused: {:?}",
            other.err()
        ),
    }
    match Client::connect(config(Some("mallory"))).await {
        Err(Error::Tls(message)) => assert!(
            message.contains("refused the client certificate"),
            "{message}"
        ),
        other => panic!(
            "a certificate from another CA must be refused: {:?}",
            other.err()
        ),
    }

    let alice = Client::connect(config(Some("alice"))).await.unwrap();
    alice
        .admin()
        .create_topic(NewTopic::new("mtls", 1))
        .await
        .unwrap();
    let producer = alice.producer(ProducerConfig::default());
    producer
        .send(ProducerRecord::new("mtls", "hello"))
        .await
        .unwrap()
        .await
        .unwrap();

    // The CLI: --cert and --key, or MERIDIAN_CERT and MERIDIAN_KEY.
    let (alice_pem, alice_key) = (certs.join("alice.pem"), certs.join("alice.key"));
    let (alice_pem, alice_key) = (alice_pem.to_str().unwrap(), alice_key.to_str().unwrap());
    let (ok, out, err) = broker.cli(
        &[
            "consume", "mtls", "--from", "earliest", "-n", "1", "--cert", alice_pem, "--key",
            alice_key,
        ],
        "",
    );
    assert!(ok && out == "hello\n", "{out}{err}");
    let out = broker
        .cli_command(&["topic", "list"])
        .env("MERIDIAN_CERT", alice_pem)
        .env("MERIDIAN_KEY", alice_key)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("mtls"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = broker.cli(&["topic", "list"], "");
    assert!(
        !ok && err.contains("requires a client certificate") && err.contains("--cert"),
        "{err}"
    );
    let (ok, _, err) = broker.cli(&["topic", "list", "--cert", alice_pem], "");
    assert!(!ok && err.contains("--key"), "{err}");

    let logged = std::fs::read_to_string(&log).unwrap();
    // Her connection's span and each of her requests' spans (roots of their own,
    // for traces) name her.
    assert!(
        logged.lines().any(|l| l.contains("request{")
            && l.contains("client=\"alice\"")
            && l.contains("created topic")),
        "alice's requests carry her name:\n{logged}"
    );
    assert!(
        logged
            .lines()
            .any(|l| l.contains("connection{") && l.contains("client=\"alice\"")),
        "{logged}"
    );
    // The SDK without a certificate, mallory's, the CLI without one.
    assert_eq!(
        logged.matches("refused a client's certificate").count(),
        3,
        "{logged}"
    );
    let samples = crate::metrics::scrape(&metrics);
    assert_eq!(
        crate::metrics::value(&samples, "meridian_client_certificates_refused_total"),
        3.0
    );
}

/// `meridian cert` refuses to overwrite, and to sign without a CA.
#[test]
fn cert_refuses_to_overwrite_or_to_sign_without_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ca_with(&certs, &["alice"]);
    let before = std::fs::read(certs.join("alice.key")).unwrap();
    let run = cert_output;
    let certs_dir = certs.to_str().unwrap();
    for args in [
        vec!["create-ca", "--dir", certs_dir],
        vec!["create", "alice", "--dir", certs_dir],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} must not overwrite");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not overwriting"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(certs.join("alice.key")).unwrap(), before);
    let elsewhere = dir.path().join("empty");
    let out = run(&["create", "bob", "--dir", elsewhere.to_str().unwrap()]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("create the CA first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["create", "../escape", "--dir", certs_dir]);
    assert!(!out.status.success(), "a name is a file name, not a path");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "alice.key"] {
            let mode = std::fs::metadata(certs.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key} is private to its owner");
        }
    }
}

/// `kill -HUP` makes a broker re-read its certificate and `tls_client_ca`: new
/// connections see the new certificate and are held to the new CA, and a reload of
/// a broken file keeps what was loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    ca_with(&first, &["alice"]);
    ca_with(&second, &["bob"]);
    let second_dir = second.to_str().unwrap();
    cert(&[
        "create",
        "broker",
        "--dir",
        second_dir,
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    ]);
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::copy(first.join("ca.pem"), &client_ca).unwrap();
    let log = dir.path().join("broker.log");
    let broker = TestBroker::start_logging_to(
        &log,
        &[&format!("tls_client_ca={}", client_ca.display())],
        &[("RUST_LOG", "info")],
    );
    let connect = |trust: Trust, (base, name): (&std::path::Path, &str)| {
        let mut config = ClientConfig::new(broker.addr.clone(), trust);
        config.identity = Some(
            ClientIdentity::from_files(
                base.join(format!("{name}.pem")),
                base.join(format!("{name}.key")),
            )
            .unwrap(),
        );
        Client::connect(config)
    };
    let pinned = || Trust::parse_fingerprint(&broker.fingerprint).unwrap();
    let by_second_ca = || Trust::CaFile(second.join("ca.pem"));
    connect(pinned(), (&first, "alice")).await.unwrap();
    assert!(connect(pinned(), (&second, "bob")).await.is_err());

    // Rotate: the second CA's broker certificate, and the second CA for clients.
    let tls = broker.data_dir.join("tls");
    std::fs::copy(second.join("broker.pem"), tls.join("cert.pem")).unwrap();
    std::fs::copy(second.join("broker.key"), tls.join("key.pem")).unwrap();
    std::fs::copy(second.join("ca.pem"), &client_ca).unwrap();
    broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded", 1);
    connect(by_second_ca(), (&second, "bob")).await.unwrap();
    match connect(by_second_ca(), (&first, "alice")).await {
        Err(Error::Tls(message)) => {
            assert!(
                message.contains("refused the client certificate"),
                "{message}"
            )
        }
        other => panic!("alice's CA is no longer trusted: {:?}", other.err()),
    }
    assert!(
        connect(pinned(), (&second, "bob")).await.is_err(),
        "the broker no longer shows its first certificate"
    );

    // A broken client CA file: the reload fails and changes nothing.
    std::fs::write(&client_ca, "not a certificate").unwrap();
    broker.signal("HUP");
    let logged = crate::harness::await_log(&log, "TLS reload failed", 1);
    assert!(logged.contains("tls_client_ca"), "{logged}");
    connect(by_second_ca(), (&second, "bob")).await.unwrap();
    assert!(broker.is_running());
}

/// `meridian cert revoke NAME` writes the CA's revocation list; a broker with it as
/// `tls_client_crl` refuses that certificate at the handshake and admits the CA's
/// others, `kill -HUP` takes a new list (a client revoked while the broker runs is
/// refused from its next connection), and a broken list keeps the one loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ca_with(&certs, &["alice", "bob"]);
    let certs_dir = certs.to_str().unwrap();
    cert(&["revoke", "bob", "--dir", certs_dir]);
    let crl = certs.join("crl.pem");
    let log = dir.path().join("broker.log");
    let broker = TestBroker::start_logging_to(
        &log,
        &[
            &format!("tls_client_ca={}", certs.join("ca.pem").display()),
            &format!("tls_client_crl={}", crl.display()),
        ],
        &[("RUST_LOG", "info")],
    );
    let connect = |name: &str| {
        let config = crate::acl::config_of(&broker, &certs, name);
        async move {
            let client = Client::connect(config).await?;
            // The handshake's verdict on the certificate arrives with the first answer.
            client.broker_info().await.map(|_| ())
        }
    };
    connect("alice").await.unwrap();
    let refused = |result: Result<(), Error>| match result {
        // "… refused the client certificate: invalid peer certificate: Revoked"
        Err(Error::Tls(message)) => {
            message.contains("refused the client certificate")
                && message.to_lowercase().contains("revoked")
        }
        _ => false,
    };
    let bob = connect("bob").await;
    assert!(refused(bob.clone()), "bob is revoked: {bob:?}");

    // Revoked while the broker runs: refused once the broker reads the list again.
    cert(&["revoke", "alice", "--dir", certs_dir]);
    cert(&["create", "carol", "--dir", certs_dir]);
    broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded", 1);
    let alice = connect("alice").await;
    assert!(refused(alice.clone()), "alice is revoked now: {alice:?}");
    connect("carol").await.unwrap();

    // A broken list: the reload fails and the list loaded before stays.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n",
    )
    .unwrap();
    broker.signal("HUP");
    let logged = crate::harness::await_log(&log, "TLS reload failed", 1);
    assert!(logged.contains("tls_client_crl"), "{logged}");
    assert!(refused(connect("alice").await));
    connect("carol").await.unwrap();
    assert!(broker.is_running());
}

/// `meridian cert list` shows each certificate of the CA's directory with its
/// status: the CA, valid, revoked (by `crl.pem`) or signed by another CA; `cert
/// revoke` refuses a certificate another CA signed.
#[test]
fn cert_list_shows_what_is_valid_revoked_or_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, other) = (dir.path().join("certs"), dir.path().join("other"));
    ca_with(&certs, &["alice", "bob"]);
    ca_with(&other, &["eve"]);
    std::fs::copy(other.join("eve.pem"), certs.join("eve.pem")).unwrap();
    let certs_dir = certs.to_str().unwrap();
    let run = cert_output;
    let listed = run(&["list", "--dir", certs_dir]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("nothing revoked"), "{text}");
    cert(&["revoke", "bob", "--dir", certs_dir]);
    let foreign = run(&["revoke", "eve", "--dir", certs_dir]);
    let stderr = String::from_utf8_lossy(&foreign.stderr);
    assert!(
        !foreign.status.success() && stderr.contains("not by this CA"),
        "{stderr}"
    );
    let listed = run(&["list", "--dir", certs_dir, "--json"]);
    assert!(listed.status.success());
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let status = |file: &str| -> String {
        json["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["file"] == file)
            .unwrap_or_else(|| panic!("{file} not listed: {json}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("ca"), "CA");
    assert_eq!(status("alice"), "valid");
    assert!(status("bob").starts_with("revoked 20"), "{json}");
    assert!(
        status("eve").starts_with("signed by CN=Meridian CA"),
        "{json}"
    );
    assert_eq!(json["revoked"], 1);
    assert!(json["crl_next_update"].is_string(), "{json}");
    let days = json["certificates"][0]["days_left"].as_i64().unwrap();
    assert!((820..=825).contains(&days), "{json}");
}
