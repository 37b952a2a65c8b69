//! `acl_file`: a broker with mutual TLS lets each client (named by its certificate)
//! do only what the file's rules allow, per topic within a request, and re-reads
//! the file on SIGHUP.

use std::path::Path;
use std::time::{Duration, Instant};

use meridian_client::{
    AutoOffsetReset, Client, ClientConfig, ClientIdentity, ConsumerConfig, Error, GroupConfig,
    NewTopic, ProducerConfig, ProducerRecord, Trust,
};
use meridian_wire::cluster::{
    AlterPartitionRequest, BrokerHeartbeatRequest, ControlledShutdownRequest, RaftRequest, RaftRpc,
};
use meridian_wire::messages::Request;
use meridian_wire::ErrorCode;

use crate::harness::TestBroker;
use crate::tls::ca_with;

const RULES: &str = r#"
super_users = ["ops"]

[[allow]]
principals = ["writer"]
operations = ["write"]
topics = ["orders"]

[[allow]]
principals = ["reader"]
operations = ["read"]
topics = ["orders"]
groups = ["billing"]

[[allow]]
principals = ["creator"]
operations = ["create"]
cluster = true
"#;

fn code(error: &Error) -> Option<ErrorCode> {
    match error {
        Error::Broker { code, .. } => Some(*code),
        _ => None,
    }
}

/// How client `name` (`certs/NAME.pem`, `certs/NAME.key`) connects to `broker`.
pub(crate) fn config_of(broker: &TestBroker, certs: &Path, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new(
        broker.addr.clone(),
        Trust::parse_fingerprint(&broker.fingerprint).unwrap(),
    );
    config.identity = Some(
        ClientIdentity::from_files(
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}.key")),
        )
        .unwrap(),
    );
    config
}

async fn connect(broker: &TestBroker, certs: &Path, name: &str) -> Client {
    Client::connect(config_of(broker, certs, name))
        .await
        .unwrap()
}

/// Writer may write `orders` and nothing else (within one producer, its records to
/// `orders` land while those to `audit` fail); reader may read `orders` in group
/// `billing` and sees no other topic; ops (a super user) may do everything; the CLI
/// says why it was refused; SIGHUP re-reads the rules, and a broken file keeps the
/// old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_does_only_what_the_acl_file_allows() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ca_with(&certs, &["ops", "writer", "reader", "creator"]);
    let acl_file = dir.path().join("acl.toml");
    std::fs::write(&acl_file, RULES).unwrap();
    let log = dir.path().join("broker.log");
    let metrics = format!("127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    let broker = TestBroker::start_logging_to(
        &log,
        &[
            &format!("tls_client_ca={}", certs.join("ca.pem").display()),
            &format!("acl_file={}", acl_file.display()),
            &format!("metrics_listen={metrics}"),
        ],
        &[("RUST_LOG", "info")],
    );
    crate::harness::await_log(&log, "authorization rules from", 1);

    let ops = connect(&broker, &certs, "ops").await;
    for topic in ["orders", "audit"] {
        ops.admin()
            .create_topic(NewTopic::new(topic, 2))
            .await
            .unwrap();
    }

    // Writer: `orders` yes, `audit` no, in the same producer at the same time.
    let writer = connect(&broker, &certs, "writer").await;
    let producer = writer.producer(ProducerConfig::default());
    let to_orders = producer
        .send(ProducerRecord::new("orders", "paid").key("o-1"))
        .await
        .unwrap();
    let to_audit = producer.send(ProducerRecord::new("audit", "x")).await;
    let to_audit = match to_audit {
        Ok(delivery) => delivery.await.map(|_| ()),
        Err(e) => Err(e),
    };
    to_orders.await.unwrap();
    let err = to_audit.unwrap_err();
    assert_eq!(
        code(&err),
        Some(ErrorCode::TopicAuthorizationFailed),
        "{err}"
    );
    let err = writer
        .admin()
        .create_topic(NewTopic::new("mine", 1))
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        Some(ErrorCode::TopicAuthorizationFailed),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("client `writer` may not create topic `mine`"),
        "{err}"
    );
    let err = writer.admin().describe_cluster().await.unwrap_err();
    assert_eq!(
        code(&err),
        Some(ErrorCode::ClusterAuthorizationFailed),
        "{err}"
    );
    // The brokers' own requests: a client cannot pose as a broker.
    for request in [
        Request::BrokerHeartbeat(BrokerHeartbeatRequest {
            broker_id: 7,
            incarnation: 1,
            host: "127.0.0.1".into(),
            port: 1,
            rack: None,
            wants_shutdown: false,
            kafka: None,
        }),
        Request::Raft(RaftRequest {
            rpc: RaftRpc::Vote,
            from: 7,
            payload: bytes::Bytes::from_static(b"{}"),
        }),
        Request::AlterPartition(AlterPartitionRequest {
            broker_id: 7,
            topic: "orders".into(),
            partition: 0,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![7],
        }),
        Request::ControlledShutdown(ControlledShutdownRequest {
            broker_id: 7,
            incarnation: 1,
        }),
    ] {
        let err = writer.request(request).await.unwrap_err();
        assert_eq!(
            code(&err),
            Some(ErrorCode::ClusterAuthorizationFailed),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("client `writer` may not cluster action the cluster"),
            "{err}"
        );
    }

    // Reader: consumes `orders` in group `billing` and commits; sees only `orders`.
    let reader = connect(&broker, &certs, "reader").await;
    assert_eq!(reader.admin().list_topics().await.unwrap(), ["orders"]);
    let mut consumer = reader.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    consumer
        .subscribe(
            GroupConfig {
                enable_auto_commit: false,
                ..GroupConfig::new("billing")
            },
            &["orders"],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut values = Vec::new();
    while values.is_empty() {
        assert!(Instant::now() < deadline, "reader got nothing from orders");
        for record in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            values.push(record.value.clone());
        }
    }
    assert_eq!(values, [Some(bytes::Bytes::from("paid"))]);
    consumer.commit().await.unwrap();
    consumer.close().await.unwrap();
    // Joining happens in the background; `poll` reports why it failed.
    let mut elsewhere = reader.consumer(ConsumerConfig::default());
    elsewhere
        .subscribe(GroupConfig::new("payroll"), &["orders"])
        .await
        .unwrap();
    let err = loop {
        assert!(Instant::now() < deadline, "reader joined group payroll");
        if let Err(e) = elsewhere.poll(Duration::from_millis(100)).await {
            break e;
        }
    };
    assert_eq!(
        code(&err),
        Some(ErrorCode::GroupAuthorizationFailed),
        "{err}"
    );
    let reader_producer = reader.producer(ProducerConfig::default());
    let refused = match reader_producer
        .send(ProducerRecord::new("orders", "no"))
        .await
    {
        Ok(delivery) => delivery.await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "reader may not write");

    // The CLI says who may not do what.
    let (writer_pem, writer_key) = (certs.join("writer.pem"), certs.join("writer.key"));
    let (ok, _, err) = broker.cli(
        &[
            "produce",
            "audit",
            "--cert",
            writer_pem.to_str().unwrap(),
            "--key",
            writer_key.to_str().unwrap(),
        ],
        "x\n",
    );
    assert!(!ok && err.contains("TopicAuthorizationFailed"), "{err}");
    // The metadata answer says why (version 1), as the other refusals do.
    assert!(
        err.contains("client `writer` may not describe topic `audit` (acl_file)"),
        "{err}"
    );
    let (ok, out, err) = broker.cli(
        &[
            "topic",
            "list",
            "--cert",
            certs.join("reader.pem").to_str().unwrap(),
            "--key",
            certs.join("reader.key").to_str().unwrap(),
        ],
        "",
    );
    assert!(
        ok && out.contains("orders") && !out.contains("audit"),
        "{out}{err}"
    );
    // A client that may create topics but not describe them: the CLI creates and
    // says so, without the figures it may not read.
    let creator = [
        "--cert",
        certs.join("creator.pem").to_str().unwrap(),
        "--key",
        certs.join("creator.key").to_str().unwrap(),
    ]
    .map(str::to_owned);
    let as_creator = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(creator.iter().map(String::as_str));
        broker.cli(&all, "")
    };
    let (ok, out, err) = as_creator(&["topic", "create", "fresh", "-p", "3"]);
    assert!(
        ok && out.contains("created topic fresh (this client may not describe it"),
        "{out}{err}"
    );
    let (ok, out, err) = as_creator(&["topic", "create", "fresh", "--if-not-exists"]);
    assert!(
        ok && out.contains("topic fresh already exists; left as it is"),
        "{out}{err}"
    );
    let fresh = ops.admin().describe_topic("fresh").await.unwrap();
    assert_eq!(fresh.partitions.len(), 3);

    let samples = crate::metrics::scrape(&metrics);
    assert!(
        crate::metrics::value(&samples, "meridian_authorization_denied_total") >= 5.0,
        "{samples:?}"
    );

    // SIGHUP: writer may now write `audit` too.
    std::fs::write(
        &acl_file,
        RULES.replace(
            "topics = [\"orders\"]\n\n[[allow]]\nprincipals = [\"reader\"]",
            "topics = [\"orders\", \"audit\"]\n\n[[allow]]\nprincipals = [\"reader\"]",
        ),
    )
    .unwrap();
    broker.signal("HUP");
    crate::harness::await_log(&log, "SIGHUP: reloaded acl_file", 1);
    let writer = connect(&broker, &certs, "writer").await;
    let producer = writer.producer(ProducerConfig::default());
    producer
        .send(ProducerRecord::new("audit", "now allowed"))
        .await
        .unwrap()
        .await
        .unwrap();

    // A broken file: the reload fails, the rules stay.
    std::fs::write(&acl_file, "[[allow]]\nprincipals = [\"writer\"]\n").unwrap();
    broker.signal("HUP");
    let logged = crate::harness::await_log(&log, "acl_file reload failed", 1);
    assert!(logged.contains("missing field `operations`"), "{logged}");
    producer
        .send(ProducerRecord::new("audit", "still allowed"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(broker.is_running());
}

/// `meridian acl check` parses a file as a broker would and says which rule decides
/// for a client, an operation and a resource, failing when the rules refuse.
#[test]
fn acl_check_says_which_rule_decides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acl.toml");
    let rules = format!("{RULES}\n[[deny]]\nprincipals = [\"*\"]\noperations = [\"read\"]\ntopics = [\"orders\"]\ngroups = [\"billing\"]\n");
    std::fs::write(&file, rules).unwrap();
    let acl = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::meridian_bin())
            .args(["acl", "check"])
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = acl(&[]);
    assert!(
        ok && out.contains("3 allow rules, 1 deny rule, 1 super user"),
        "{out}{err}"
    );
    let (ok, out, err) = acl(&[
        "--client",
        "writer",
        "--operation",
        "write",
        "--topic",
        "orders",
    ]);
    assert!(
        ok && out.contains("client `writer` write topic `orders`: allowed by [[allow]] number 1"),
        "{out}{err}"
    );
    let (ok, _, err) = acl(&[
        "--client",
        "writer",
        "--operation",
        "read",
        "--topic",
        "orders",
    ]);
    assert!(!ok && err.contains("denied by [[deny]] number 1"), "{err}");
    let (ok, _, err) = acl(&[
        "--client",
        "writer",
        "--operation",
        "write",
        "--topic",
        "audit",
    ]);
    assert!(!ok && err.contains("denied: no rule allows it"), "{err}");
    let (ok, out, _) = acl(&["--client", "ops", "--operation", "alter", "--cluster"]);
    assert!(ok && out.contains("allowed: a super user"), "{out}");
    let (ok, _, err) = acl(&["--client", "ops", "--operation", "fly", "--cluster"]);
    assert!(!ok && err.contains("unknown operation `fly`"), "{err}");

    std::fs::write(
        &file,
        "[[allow]]\nprincipals = [\"a\"]\noperations = [\"reed\"]\ntopics = [\"t\"]\n",
    )
    .unwrap();
    let (ok, _, err) = acl(&[]);
    assert!(
        !ok && err.contains("[[allow]] number 1: unknown operation `reed`"),
        "{err}"
    );
}
