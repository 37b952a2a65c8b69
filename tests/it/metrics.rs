//! The Prometheus metrics listener (`metrics_listen`) as a scraper sees it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{free_ports, raw_request, TestBroker};

/// Sends `request` as it is and returns the status line and body.
fn http(addr: &str, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let text = String::from_utf8(response).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// Scrapes `/metrics`: each sample line as `name{labels}` → value.
pub(crate) fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name and value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

pub(crate) fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no `{key}` in the scrape: {samples:#?}"))
}

#[test]
fn a_scrape_shows_requests_partitions_groups_and_refusals() {
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let setting = format!("metrics_listen={addr}");
    let broker = TestBroker::start(&[
        &setting,
        "metrics_scrape_timeout_ms=1000",
        "metrics_max_head_bytes=4096",
    ]);
    let ok = |args: &[&str], stdin: &str| {
        let (success, out, err) = broker.cli(args, stdin);
        assert!(success, "{args:?}: {out} {err}");
    };
    ok(&["topic", "create", "orders", "-p", "2"], "");
    ok(&["produce", "orders", "-p", "0"], &"x\n".repeat(10));
    ok(
        &["topic", "create", "small", "-c", "max.message.bytes=200"],
        "",
    );
    let (refused, _, err) = broker.cli(&["produce", "small"], &"y".repeat(500));
    assert!(!refused && err.contains("MessageTooLarge"), "{err}");
    ok(
        &[
            "consume", "orders", "--group", "billing", "--from", "earliest", "-n", "4",
        ],
        "",
    );
    // A malformed request frame (a length prefix and garbage).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let connection = broker.raw_connection().await;
        let answer = raw_request(&connection, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
        assert!(answer.is_some(), "a malformed frame is answered");
    });

    let samples = scrape(&addr);
    for (key, expected) in [
        (
            r#"meridian_partition_log_end_offset{topic="orders",partition="0"}"#,
            10.0,
        ),
        (
            r#"meridian_partition_high_watermark{topic="orders",partition="0"}"#,
            10.0,
        ),
        (
            r#"meridian_partition_log_end_offset{topic="orders",partition="1"}"#,
            0.0,
        ),
        (
            r#"meridian_group_committed_offset{group="billing",topic="orders",partition="0"}"#,
            4.0,
        ),
        (
            r#"meridian_group_lag{group="billing",topic="orders",partition="0"}"#,
            6.0,
        ),
        (r#"meridian_group_members{group="billing"}"#, 0.0),
        (r#"meridian_groups{state="Empty"}"#, 1.0),
        (
            r#"meridian_produce_errors_total{error="MessageTooLarge"}"#,
            1.0,
        ),
        ("meridian_request_frame_errors_total", 1.0),
        ("meridian_partitions_under_replicated", 0.0),
        // orders (2), small (1) and the 50 partitions of __consumer_offsets.
        ("meridian_partitions", 53.0),
    ] {
        assert_eq!(value(&samples, key), expected, "{key}");
    }
    assert!(
        value(
            &samples,
            r#"meridian_partition_size_bytes{topic="orders",partition="0"}"#
        ) > 0.0
    );
    assert!(value(&samples, "meridian_log_size_bytes") > 0.0);

    let produces = value(&samples, r#"meridian_requests_total{api="Produce"}"#);
    assert!(produces >= 2.0, "{produces}");
    assert_eq!(
        value(
            &samples,
            r#"meridian_request_duration_seconds_count{api="Produce"}"#
        ),
        produces
    );
    assert_eq!(
        value(
            &samples,
            r#"meridian_request_duration_seconds_bucket{api="Produce",le="+Inf"}"#
        ),
        produces
    );
    assert!(value(&samples, r#"meridian_request_bytes_total{api="Produce"}"#) > 500.0);
    assert!(value(&samples, r#"meridian_response_bytes_total{api="Fetch"}"#) > 0.0);
    assert!(value(&samples, "meridian_connections_accepted_total") >= 5.0);

    // Anything else gets a plain HTTP refusal, and the listener keeps serving.
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        (
            b"\x16\x03\x01 tls hello\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            // Over metrics_max_head_bytes (4096 here), under the 8 KiB default.
            &[b'a'; 5_000],
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ];
    for (request, expected) in cases {
        let (status, _) = http(&addr, request);
        assert_eq!(status, expected);
    }
    // A scraper that connects and says nothing holds the listener only until its
    // time is up (metrics_scrape_timeout_ms, 1 s here; a liveness bound with room
    // for a slow machine, under the 5 s default).
    let _silent = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    let samples = scrape(&addr);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(value(&samples, r#"meridian_requests_total{api="Produce"}"#) >= produces);
    ok(&["topic", "list"], "");
}

/// The group-commit thread's counters, under `flush=always` (a sync per produced
/// partition and per offset commit) and under the periodic flush.
#[test]
fn log_syncs_and_their_fdatasyncs_are_counted() {
    let syncs = |samples: &BTreeMap<String, f64>| {
        (
            value(samples, "meridian_log_sync_requests_total"),
            value(samples, "meridian_log_fsyncs_total"),
            value(samples, "meridian_log_fsync_seconds_total"),
        )
    };
    for flush in ["flush=always", "flush_interval_ms=50"] {
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let broker = TestBroker::start(&[&format!("metrics_listen={addr}"), flush]);
        let ok = |args: &[&str], stdin: &str| {
            let (success, out, err) = broker.cli(args, stdin);
            assert!(success, "{args:?}: {out} {err}");
        };
        let before = syncs(&scrape(&addr));
        ok(&["topic", "create", "orders", "-p", "2"], "");
        ok(&["produce", "orders", "-p", "0"], &"x\n".repeat(10));
        ok(&["produce", "orders", "-p", "1"], &"y\n".repeat(10));
        ok(
            &[
                "consume", "orders", "--group", "g", "--from", "earliest", "-n", "20",
            ],
            "",
        );
        // The periodic flush finds the written partitions within its interval.
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let after = syncs(&scrape(&addr));
            if after.0 >= before.0 + 3.0 || Instant::now() > deadline {
                break after;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Two produced partitions and at least one partition of committed offsets.
        assert!(
            after.0 >= before.0 + 3.0,
            "{flush}: {before:?} then {after:?}"
        );
        assert!(after.1 > before.1, "{flush}: {before:?} then {after:?}");
        assert!(after.1 <= after.0, "{flush}: {after:?}");
        assert!(after.2 > before.2, "{flush}: {before:?} then {after:?}");
    }
}

#[test]
fn a_bad_metrics_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::harness::meridian_bin())
        .args(["broker", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "localhost-ish",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metrics_listen"), "{stderr}");
}

/// An HTTPS request to the metrics listener trusting `ca`, presenting `client`
/// (certificate and key files) if given: the status line and body, or the error
/// that ended the exchange (a refused handshake).
fn https(
    addr: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    request: &[u8],
) -> std::io::Result<(String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream.write_all(request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8(response).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// `metrics_tls`: scrapes over HTTPS with the broker's own certificate (as curl
/// `--cacert` or Prometheus's `tls_config.ca_file` make them); under
/// `tls_client_ca` a scraper without a certificate the CA signed is refused at the
/// handshake, and counted; plain HTTP gets no answer.
#[test]
fn metrics_are_served_over_tls_to_scrapers_with_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &["prometheus"]);
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let broker = TestBroker::start(&[
        &format!("metrics_listen={addr}"),
        "metrics_tls=true",
        &format!("tls_client_ca={}", certs.join("ca.pem").display()),
    ]);
    let ca = broker.cert_path();
    let get = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    let refused = https(&addr, &ca, None, get);
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let prometheus = (certs.join("prometheus.pem"), certs.join("prometheus.key"));
    let client = Some((prometheus.0.as_path(), prometheus.1.as_path()));
    let (status, body) = https(&addr, &ca, client, get).unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let refusals = body
        .lines()
        .find_map(|l| l.strip_prefix("meridian_client_certificates_refused_total "))
        .expect("the refusal counter");
    assert!(refusals.parse::<u64>().unwrap() >= 1, "{refusals}");
    // A scrape that does not speak TLS gets no HTTP answer.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain.write_all(get).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}
