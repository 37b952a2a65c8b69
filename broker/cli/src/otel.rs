//! Traces to an OpenTelemetry collector. A broker (`meridian dev`, `meridian broker`,
//! and the brokers `meridian up` starts) exports its spans over OTLP (HTTP,
//! protobuf) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless `OTEL_SDK_DISABLED=true`.
//! Every request is a trace of its own, named by its API (`Produce`, `Fetch`, …);
//! the SDK reads the other standard variables itself (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). Without the
//! endpoint nothing is installed and nothing is paid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use meridian_server::config::BrokerConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, Tracer};
use opentelemetry_sdk::Resource;

/// What is exported: the broker's request spans (debug level) and the events in
/// them, and the rest of Meridian's spans and events from info up.
pub(crate) const EXPORT_FILTER: &str = "warn,meridian_server=debug,meridian_log=info,meridian_metadata=info,meridian_wasm_host=info,meridian=info";

/// The OTLP endpoint the environment asks spans to go to (the traces-specific
/// variable first), or `None`: not set, empty, or `OTEL_SDK_DISABLED=true`.
pub(crate) fn endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|key| env(key).filter(|v| !v.trim().is_empty()))
}

/// Whether the environment names a service already (else it is `meridian`).
fn names_service(env: impl Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || names_attribute(env, "service.name")
}

/// Whether `OTEL_RESOURCE_ATTRIBUTES` sets `key`.
fn names_attribute(env: impl Fn(&str) -> Option<String>, key: &str) -> bool {
    env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
        v.split(',')
            .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == key))
    })
}

/// The exporting pipeline; [`Exporting::shutdown`] sends what is still queued.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Builds the exporter (a blocking HTTP client on the batch processor's own
    /// thread: call this outside the async runtime) and the tracer for the
    /// `tracing` layer. The resource names the broker (`meridian.broker.id`,
    /// `meridian.cluster.id`, and `service.instance.id` as `CLUSTER/ID` unless the
    /// environment sets it), so the brokers of a region tell apart.
    pub(crate) fn start(
        config: &BrokerConfig,
        endpoint: String,
    ) -> anyhow::Result<(Exporting, Tracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .context("configuring the OTLP trace exporter")?;
        let exporter = LoggedExporter {
            inner: exporter,
            endpoint,
            health: ExportHealth::default(),
        };
        let mut resource = Resource::builder();
        let env = |k: &str| std::env::var(k).ok();
        if !names_service(env) {
            resource = resource.with_service_name("meridian");
        }
        let mut attributes = vec![
            KeyValue::new("meridian.broker.id", i64::from(config.broker_id)),
            KeyValue::new("meridian.cluster.id", config.cluster_id.clone()),
        ];
        if !names_attribute(env, "service.instance.id") {
            attributes.push(KeyValue::new(
                "service.instance.id",
                format!("{}/{}", config.cluster_id, config.broker_id),
            ));
        }
        resource = resource.with_attributes(attributes);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("meridian");
        Ok((Exporting { provider }, tracer))
    }

    /// Exports the spans still queued and stops the exporter.
    pub(crate) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: exporting the last traces: {e}");
        }
    }
}

/// Whether exports work, to say so when that changes rather than at every batch.
#[derive(Debug, Default)]
struct ExportHealth {
    failing: AtomicBool,
    /// Spans dropped since exports started failing.
    dropped: AtomicU64,
}

#[derive(Debug, PartialEq, Eq)]
enum HealthChange {
    /// The first failure after exports worked (or at start).
    Failing,
    /// Exports work again, after this many spans were dropped.
    Recovered { dropped: u64 },
}

impl ExportHealth {
    /// Records an export of `spans` spans: its outcome, and what changed.
    fn record(&self, ok: bool, spans: usize) -> Option<HealthChange> {
        if !ok {
            self.dropped.fetch_add(spans as u64, Ordering::Relaxed);
        }
        match (self.failing.swap(!ok, Ordering::Relaxed), ok) {
            (false, false) => Some(HealthChange::Failing),
            (true, true) => Some(HealthChange::Recovered {
                dropped: self.dropped.swap(0, Ordering::Relaxed),
            }),
            _ => None,
        }
    }
}

/// The OTLP exporter, saying in the broker's log when exports start failing (a
/// collector gone, a wrong endpoint) and when they work again: once each, not at
/// every batch.
#[derive(Debug)]
struct LoggedExporter<E> {
    inner: E,
    endpoint: String,
    health: ExportHealth,
}

impl<E: SpanExporter> SpanExporter for LoggedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match (self.health.record(result.is_ok(), spans), &result) {
            (Some(HealthChange::Failing), Err(e)) => tracing::warn!(
                endpoint = %self.endpoint,
                "exporting traces failed: {e}; spans are dropped until exports work again (said once)"
            ),
            (Some(HealthChange::Recovered { dropped }), _) => tracing::info!(
                endpoint = %self.endpoint,
                dropped,
                "exporting traces works again"
            ),
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_failures_are_said_once_and_recovery_with_what_was_dropped() {
        let health = ExportHealth::default();
        assert_eq!(health.record(true, 3), None);
        assert_eq!(health.record(false, 4), Some(HealthChange::Failing));
        assert_eq!(health.record(false, 5), None);
        assert_eq!(
            health.record(true, 1),
            Some(HealthChange::Recovered { dropped: 9 })
        );
        assert_eq!(health.record(true, 1), None);
        // A second outage counts afresh.
        assert_eq!(health.record(false, 2), Some(HealthChange::Failing));
        assert_eq!(
            health.record(true, 1),
            Some(HealthChange::Recovered { dropped: 2 })
        );
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_endpoint_comes_from_the_standard_variables() {
        assert_eq!(endpoint(env(&[])), None);
        assert_eq!(endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), None);
        assert_eq!(
            endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).as_deref(),
            Some("http://c:4318")
        );
        assert_eq!(
            endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://t:4318/v1/traces"
                ),
            ]))
            .as_deref(),
            Some("http://t:4318/v1/traces")
        );
        assert_eq!(
            endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "TRUE"),
            ])),
            None
        );
    }

    #[test]
    fn resource_attributes_are_matched_by_whole_key() {
        let vars = [(
            "OTEL_RESOURCE_ATTRIBUTES",
            "a=1, service.instance.id = eu-1,service.instance.idx=2",
        )];
        assert!(names_attribute(env(&vars), "service.instance.id"));
        assert!(!names_attribute(env(&vars), "service.instance"));
        assert!(!names_attribute(env(&[]), "a"));
    }

    #[test]
    fn the_service_is_meridian_unless_the_environment_names_one() {
        assert!(!names_service(env(&[])));
        assert!(names_service(env(&[("OTEL_SERVICE_NAME", "eu-broker")])));
        assert!(names_service(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name=eu"
        )])));
        assert!(!names_service(env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.namespace=x"
        )])));
    }
}
