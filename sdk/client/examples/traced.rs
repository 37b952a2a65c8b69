//! An application that exports its spans over OTLP and talks to the broker inside
//! one of them. With the SDK's `otel` feature each request carries its span's trace
//! context, so a broker exporting to the same collector puts its spans in the same
//! trace: `place_order` → the client's `CreateTopics` and `ListOffsets` → the
//! broker's. The producer sends batches from its own task (a batch mixes records
//! of many application spans), so each produce request is a trace of its own,
//! from the client's `Produce` span down to the broker's.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 meridian dev
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=shop \
//!     cargo run -p meridian-client --features otel --example traced -- 127.0.0.1:9092 sha256:… [topic]
//! ```

mod common;

use meridian_client::{Client, ErrorCode, NewTopic, Offset, ProducerConfig, ProducerRecord};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

fn main() -> anyhow::Result<()> {
    // The exporter's HTTP client blocks: build it outside the async runtime. It
    // reads OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    // The SDK's request spans are DEBUG spans of target `meridian_client`: let them
    // through to the exporter, besides the application's own.
    tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("traced-example"))
                .with_filter(
                    Targets::new()
                        .with_target("traced", tracing::Level::INFO)
                        .with_target("meridian_client", tracing::Level::DEBUG),
                ),
        )
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let topic = args.get(2).cloned().unwrap_or_else(|| "orders".into());
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let client = common::connect(&args).await?;
        place_order(&client, &topic).await
    });
    // Sends the spans still queued.
    provider.shutdown()?;
    result
}

#[tracing::instrument(skip(client))]
async fn place_order(client: &Client, topic: &str) -> anyhow::Result<()> {
    match client.admin().create_topic(NewTopic::new(topic, 3)).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let producer = client.producer(ProducerConfig::default());
    let delivered = producer
        .send(ProducerRecord::new(topic, "order 42").key("customer-7"))
        .await?
        .await?;
    let end = client
        .admin()
        .list_offsets(topic, delivered.partition, Offset::Latest)
        .await?;
    let trace_id = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id();
    println!(
        "{}/{} offset {} (log end {end}): look for trace {trace_id} in the collector",
        delivered.topic, delivered.partition, delivered.offset
    );
    Ok(())
}
