//! Traces exported to an OpenTelemetry collector (OTLP over HTTP) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The collector here is a few lines of
//! HTTP/1.1 that keep what they are sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::TestBroker;

/// One export as the collector received it.
struct Export {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Accepts OTLP/HTTP exports on an ephemeral port: its address and what arrived.
fn collector() -> (String, Arc<Mutex<Vec<Export>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let kept = kept.clone();
            std::thread::spawn(move || serve(stream, &kept));
        }
    });
    (addr, received)
}

/// Answers the requests of one (keep-alive) connection with 200 and no body.
fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Export>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        kept.lock().unwrap().push(Export {
            path,
            content_type,
            body,
        });
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A protobuf string field as OTLP encodes a span's name (field 5) or a string
/// attribute value (field 1 of `AnyValue`).
fn proto_string(field: u8, text: &str) -> Vec<u8> {
    let mut bytes = vec![(field << 3) | 2, text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_broker_exports_one_trace_per_request_to_the_otlp_endpoint() {
    let (addr, received) = collector();
    let endpoint = format!("http://{addr}");
    let broker = TestBroker::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "test-broker"),
        ],
    );
    let (ok, out, err) = broker.cli(&["topic", "create", "traced"], "");
    assert!(ok, "{out} {err}");
    let (ok, out, err) = broker.cli(&["produce", "traced"], "one\ntwo\n");
    assert!(ok, "{out} {err}");

    let wanted = [
        proto_string(5, "CreateTopics"),
        proto_string(5, "Produce"),
        proto_string(1, "test-broker"),
        // The resource names the broker: service.instance.id is CLUSTER/ID.
        proto_string(1, "meridian-local/1"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exports = received.lock().unwrap();
        let all: Vec<u8> = exports.iter().flat_map(|e| e.body.clone()).collect();
        if wanted.iter().all(|w| contains(&all, w)) {
            for export in exports.iter() {
                assert_eq!(export.path, "/v1/traces");
                assert_eq!(export.content_type, "application/x-protobuf");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Produce and CreateTopics spans of service test-broker exported in 20 s ({} exports)",
            exports.len()
        );
        drop(exports);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_whose_collector_is_gone_serves_as_before() {
    // Nothing listens there: exports fail (and are dropped), requests do not.
    let port = crate::harness::free_ports(1)[0];
    let endpoint = format!("http://127.0.0.1:{port}");
    let broker = TestBroker::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let (ok, out, err) = broker.cli(&["topic", "create", "t"], "");
    assert!(ok, "{out} {err}");
    for round in 0..3 {
        let (ok, out, err) = broker.cli(&["produce", "t"], "x\n");
        assert!(ok, "round {round}: {out} {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = broker.cli(&["consume", "t", "--from", "earliest"], "");
    assert!(ok && out == "x\nx\nx\n", "{out} {err}");
}
