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
    collector_over(None)
}

/// [`collector`], over TLS with `tls`.
fn collector_over(tls: Option<Arc<rustls::ServerConfig>>) -> (String, Arc<Mutex<Vec<Export>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (kept, tls) = (kept.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                None => serve(stream, &kept),
                Some(tls) => {
                    let session = rustls::ServerConnection::new(tls).unwrap();
                    serve(rustls::StreamOwned::new(session, stream), &kept)
                }
            });
        }
    });
    (addr, received)
}

/// Answers the requests of one (keep-alive) connection with 200 and no body.
fn serve(stream: impl Read + Write, kept: &Mutex<Vec<Export>>) {
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
        let writer = reader.get_mut();
        if writer.write_all(answer.as_bytes()).is_err() || writer.flush().is_err() {
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

/// A broker exporting to a [`collector`] every 100 ms, with `env` besides.
fn exporting_broker(env: &[(&str, &str)]) -> (TestBroker, Arc<Mutex<Vec<Export>>>) {
    let (addr, received) = collector();
    let endpoint = format!("http://{addr}");
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // The collector is local even where a proxy is configured.
        ("NO_PROXY", "127.0.0.1"),
    ];
    all.extend_from_slice(env);
    (TestBroker::start_with_env(&[], &all), received)
}

/// Waits up to 20 s for the exports to satisfy `done`; `missing` says what did not
/// come.
fn await_exports(received: &Mutex<Vec<Export>>, done: impl Fn(&[Export]) -> bool, missing: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exports = received.lock().unwrap();
        if done(&exports) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} in 20 s ({} exports)",
            exports.len()
        );
        drop(exports);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_exports_one_trace_per_request_to_the_otlp_endpoint() {
    let (broker, received) = exporting_broker(&[("OTEL_SERVICE_NAME", "test-broker")]);
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
    await_exports(
        &received,
        |exports| {
            let all: Vec<u8> = exports.iter().flat_map(|e| e.body.clone()).collect();
            wanted.iter().all(|w| contains(&all, w))
        },
        "no Produce and CreateTopics spans of service test-broker exported",
    );
    for export in received.lock().unwrap().iter() {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/x-protobuf");
    }
}

#[test]
fn a_broker_whose_collector_is_gone_serves_as_before() {
    // Nothing listens there: exports fail (and are dropped), requests do not.
    let port = crate::harness::free_ports(1)[0];
    let endpoint = format!("http://127.0.0.1:{port}");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("broker.log");
    let broker = TestBroker::start_logging_to(
        &log,
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

    // The log says so, once, naming the endpoint, though several batches failed.
    crate::harness::await_log(&log, "exporting traces failed", 1);
    // Later batches fail too, without saying it again.
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("exporting traces failed").count(), 1, "{text}");
    assert!(text.contains(&endpoint), "{text}");
}

/// To an `https://` endpoint the broker exports over TLS, trusting the CA of
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` and presenting the client certificate of
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` to a collector that
/// requires one; a variable naming a file that is not there stops the broker at
/// start, naming it, and one of the pair without the other too.
#[test]
fn a_broker_exports_over_https_with_the_standard_tls_variables() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::tls::ca_with(&certs, &["broker-otel"]);
    let made = std::process::Command::new(crate::harness::meridian_bin())
        .args([
            "cert",
            "create",
            "collector",
            "--host",
            "127.0.0.1",
            "--dir",
        ])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let pem = |name: &str| std::fs::read(certs.join(name)).unwrap();
    use rustls::pki_types::pem::PemObject;
    let ca: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem("ca.pem"))
        .collect::<Result<_, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(ca);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&pem("collector.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem("collector.key")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
    let (addr, received) = collector_over(Some(Arc::new(tls)));
    let endpoint = format!("https://{addr}");
    let path = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (
        path("ca.pem"),
        path("broker-otel.pem"),
        path("broker-otel.key"),
    );
    let broker = TestBroker::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("NO_PROXY", "127.0.0.1"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ],
    );
    let (ok, out, err) = broker.cli(&["topic", "create", "secure"], "");
    assert!(ok, "{out} {err}");
    await_exports(
        &received,
        |exports| {
            exports
                .iter()
                .any(|e| contains(&e.body, &proto_string(5, "CreateTopics")))
        },
        "no CreateTopics span exported over HTTPS",
    );
    assert_eq!(received.lock().unwrap()[0].path, "/v1/traces");
    drop(broker);

    let start = |env: &[(&str, &str)]| {
        let data = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(crate::harness::meridian_bin())
            .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("nowhere.pem");
    let missing = missing.to_str().unwrap();
    let err = start(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", missing)]);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && err.contains(missing),
        "{err}"
    );
    let err = start(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert)]);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set without its pair"),
        "{err}"
    );
}

/// The fields of one span, as `Visit` saw them (values in their `Debug` or
/// `Display` form, strings bare).
#[derive(Default)]
struct SpanFields(std::collections::HashMap<String, String>);

impl tracing::field::Visit for SpanFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// A `tracing` layer that keeps every closed span's name and fields.
struct SpanRecorder(Arc<Mutex<Vec<SpanFields>>>);

impl<S> tracing_subscriber::Layer<S> for SpanRecorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        fields
            .0
            .insert("name".into(), attrs.metadata().name().to_string());
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(fields) = span.extensions_mut().remove::<SpanFields>() {
                self.0.lock().unwrap().push(fields);
            }
        }
    }
}

#[test]
fn the_client_traces_each_request_in_a_span() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let closed = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(
        SpanRecorder(closed.clone()).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("meridian_client", tracing::Level::DEBUG),
        ),
    );
    // For this thread only; the runtime below runs every task on it.
    let _default = tracing::subscriber::set_default(subscriber);
    let mut broker = TestBroker::start(&[]);
    let (ok, out, err) = broker.cli(&["topic", "create", "spans"], "");
    assert!(ok, "{out} {err}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let client = broker
            .client_with(|config| config.connect_timeout = Duration::from_millis(500))
            .await;
        let producer = client.producer(meridian_client::ProducerConfig::default());
        let delivery = producer
            .send(meridian_client::ProducerRecord::new("spans", "v"))
            .await
            .unwrap();
        delivery.await.unwrap();
        client
    });
    let spans = std::mem::take(&mut *closed.lock().unwrap());
    let produce = spans
        .iter()
        .find(|s| s.0.get("api").map(String::as_str) == Some("Produce"))
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| format!("{:?}", s.0)).collect();
            panic!("no Produce span among {names:?}")
        });
    let field = |name: &str| produce.0.get(name).cloned().unwrap_or_default();
    assert_eq!(field("name"), "request");
    assert_eq!(field("otel.name"), "Produce");
    assert_eq!(field("otel.kind"), "client");
    assert_eq!(field("broker"), "1");
    assert_eq!(field("peer"), broker.addr);
    assert!(!field("version").is_empty());
    assert!(!produce.0.contains_key("error"), "{:?}", produce.0);

    // A request that fails says why in its span.
    broker.stop();
    let failed = runtime.block_on(client.metadata(None));
    assert!(failed.is_err());
    let spans = std::mem::take(&mut *closed.lock().unwrap());
    let metadata = spans
        .iter()
        .find(|s| s.0.get("api").map(String::as_str) == Some("Metadata"))
        .expect("a Metadata span");
    assert_eq!(
        metadata.0.get("otel.status_code").map(String::as_str),
        Some("ERROR")
    );
    let error = metadata.0.get("error").cloned().unwrap_or_default();
    assert_eq!(error, failed.unwrap_err().to_string());
}

/// An OpenTelemetry exporter that keeps the spans the application (this test)
/// exports.
#[derive(Debug, Default, Clone)]
struct KeptSpans(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for KeptSpans {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

#[test]
fn the_brokers_span_of_a_request_joins_the_clients_trace() {
    use opentelemetry::trace::{SpanKind, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let (broker, received) = exporting_broker(&[]);
    let (ok, out, err) = broker.cli(&["topic", "create", "joined"], "");
    assert!(ok, "{out} {err}");

    // The application: the SDK's request spans exported through
    // tracing-opentelemetry, as a service using Meridian would.
    let kept = KeptSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(kept.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("app"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("meridian_client", tracing::Level::DEBUG),
            ),
    );
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = broker.client().await;
        let producer = client.producer(meridian_client::ProducerConfig::default());
        let delivery = producer
            .send(meridian_client::ProducerRecord::new("joined", "v"))
            .await
            .unwrap();
        delivery.await.unwrap();
    });
    let produce = kept
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.name == "Produce")
        .cloned()
        .expect("the client exported its Produce span");
    assert_eq!(produce.span_kind, SpanKind::Client);
    let trace_id = produce.span_context.trace_id().to_bytes();
    let span_id = produce.span_context.span_id().to_bytes();

    // The broker's Produce span: the client's trace id (OTLP `Span` field 1) and
    // the client's span as its parent (field 4).
    let mut same_trace = vec![0x0a, 16];
    same_trace.extend_from_slice(&trace_id);
    let mut child_of_client = vec![0x22, 8];
    child_of_client.extend_from_slice(&span_id);
    await_exports(
        &received,
        |exports| {
            exports.iter().any(|e| {
                contains(&e.body, &same_trace)
                    && contains(&e.body, &child_of_client)
                    && contains(&e.body, &proto_string(5, "Produce"))
            })
        },
        &format!("the broker exported no span of trace {trace_id:02x?} under the client's span"),
    );
}

#[test]
fn records_sent_in_an_exported_span_carry_its_trace_context() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let broker = TestBroker::start(&[]);
    let (ok, out, err) = broker.cli(&["topic", "create", "carried"], "");
    assert!(ok, "{out} {err}");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(KeptSpans::default())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("app"))
            .with_filter(
                tracing_subscriber::filter::Targets::new().with_target("app", tracing::Level::INFO),
            ),
    );
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let span = tracing::info_span!(target: "app", "place_order");
    let expected = span.context().span().span_context().clone();
    assert!(expected.is_valid());
    let records = runtime.block_on(async {
        let client = broker.client().await;
        let send = |config: meridian_client::ProducerConfig, value: &'static str| {
            let producer = client.producer(config);
            async move {
                producer
                    .send(meridian_client::ProducerRecord::new("carried", value))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        };
        let default = meridian_client::ProducerConfig::default();
        send(default.clone(), "in the span")
            .instrument(span.clone())
            .await;
        send(default.clone(), "outside any span").await;
        let off = meridian_client::ProducerConfig {
            propagate_trace_context: false,
            ..default
        };
        send(off, "in the span, propagation off")
            .instrument(span.clone())
            .await;
        let mut consumer = client.consumer(meridian_client::ConsumerConfig::default());
        consumer.assign_all("carried").await.unwrap();
        consumer
            .seek("carried", 0, meridian_client::Offset::Earliest)
            .await
            .unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while records.len() < 3 {
            assert!(Instant::now() < deadline, "{records:?}");
            records.extend(consumer.poll(Duration::from_secs(1)).await.unwrap());
        }
        records
    });
    let parent = records[0].trace_parent().expect("a traceparent header");
    assert_eq!(parent.trace_id, expected.trace_id().to_bytes());
    assert_eq!(parent.span_id, expected.span_id().to_bytes());
    assert_eq!(parent.flags, 1, "sampled");
    let header = records[0]
        .headers
        .iter()
        .find(|h| h.key == meridian_client::TRACEPARENT_HEADER)
        .unwrap();
    assert_eq!(
        header.value.as_deref(),
        Some(format!("00-{}-{}-01", expected.trace_id(), expected.span_id()).as_bytes())
    );
    assert_eq!(records[1].trace_parent(), None, "{:?}", records[1].headers);
    assert!(records[1].headers.is_empty());
    assert!(records[2].headers.is_empty(), "{:?}", records[2].headers);
}
