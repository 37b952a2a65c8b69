//! Traces to an OpenTelemetry collector. A broker (`meridian dev`, `meridian broker`,
//! and the brokers `meridian up` starts) exports its spans over OTLP (HTTP,
//! protobuf) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless `OTEL_SDK_DISABLED=true`.
//! Every request is a trace of its own, named by its API (`Produce`, `Fetch`, …);
//! the SDK reads the other standard variables itself (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). Without the
//! endpoint nothing is installed and nothing is paid.
//!
//! An `https://` endpoint is reached over TLS (rustls): the collector's certificate
//! is checked against `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM file of CA
//! certificates, the only ones trusted then) or else the system's roots, and the
//! broker presents `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` when
//! both are set (mutual TLS); each also as `OTEL_EXPORTER_OTLP_TRACES_…`, which
//! wins. `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` bounds one export (ms, default
//! 10000).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use meridian_server::config::BrokerConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
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

/// The traces-specific variable `OTEL_EXPORTER_OTLP_TRACES_{name}`, else
/// `OTEL_EXPORTER_OTLP_{name}`: its name and value, when set and not blank.
fn setting(env: impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|key| {
        let value = env(&key).filter(|v| !v.trim().is_empty())?;
        Some((key, value.trim().to_owned()))
    })
}

/// The exporter's HTTP client: the timeout, the CA and the client certificate the
/// environment names (see the module's text). Builds a blocking client, so call it
/// outside the async runtime.
fn http_client(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<reqwest::blocking::Client> {
    let timeout_ms = match setting(&env, "TIMEOUT") {
        Some((key, value)) => value
            .parse::<u64>()
            .with_context(|| format!("{key}: `{value}` is not a number of milliseconds"))?,
        None => 10_000,
    };
    // Proxies as the standard variables say (HTTPS_PROXY, NO_PROXY, …), as the
    // exporter's own client took them.
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .tls_backend_preconfigured(tls_config(&env)?)
        .build()
        .context("building the OTLP exporter's HTTP client")
}

/// TLS for an `https://` endpoint: the roots to trust and the certificate to show.
fn tls_config(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions for the OTLP exporter")?;
    let builder = match setting(&env, "CERTIFICATE") {
        Some((key, path)) => {
            let roots = crate::pem::roots(path.as_ref()).with_context(|| key.clone())?;
            if roots.is_empty() {
                anyhow::bail!("{key}: {path} holds no certificate");
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .context("loading the system's CA certificates for the OTLP exporter")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        }
    };
    let cert = setting(&env, "CLIENT_CERTIFICATE");
    let key = setting(&env, "CLIENT_KEY");
    Ok(match (cert, key) {
        (Some((cert_key, cert_path)), Some((key_key, key_path))) => {
            let (chain, private) = crate::pem::identity(cert_path.as_ref(), key_path.as_ref())
                .with_context(|| format!("{cert_key}, {key_key}"))?;
            builder
                .with_client_auth_cert(chain, private)
                .with_context(|| format!("{cert_key} and {key_key} do not go together"))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some((named, _)), None) | (None, Some((named, _))) => anyhow::bail!(
            "{named} is set without its pair: a client certificate needs both \
             OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
    })
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
        let env = |k: &str| std::env::var(k).ok();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(http_client(env)?)
            .build()
            .context("configuring the OTLP trace exporter")?;
        let exporter = LoggedExporter {
            inner: exporter,
            endpoint,
            health: ExportHealth::default(),
        };
        let mut resource = Resource::builder();
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
    fn the_traces_variable_wins_and_blank_ones_are_unset() {
        let both = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "all.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", " traces.pem "),
        ];
        assert_eq!(
            setting(env(&both), "CERTIFICATE"),
            Some((
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE".into(),
                "traces.pem".into()
            ))
        );
        let blank = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "all.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", " "),
        ];
        assert_eq!(
            setting(env(&blank), "CERTIFICATE").map(|(_, v)| v),
            Some("all.pem".into())
        );
        assert_eq!(setting(env(&[]), "CERTIFICATE"), None);
    }

    #[test]
    fn a_timeout_that_is_not_milliseconds_is_refused_by_name() {
        let bad = [("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")];
        let err = http_client(env(&bad)).unwrap_err();
        assert!(
            format!("{err:#}").contains("OTEL_EXPORTER_OTLP_TIMEOUT: `10s`"),
            "{err:#}"
        );
        assert!(http_client(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])).is_ok());
    }

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
