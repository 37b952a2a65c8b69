//! Prometheus metrics on `metrics_listen`: what the request path counts as it goes
//! (requests, their bytes and latency per API, refused frames, connections, produce
//! refusals) and gauges read when scraped (each local partition's offsets, size and
//! replicas; each coordinated group's members and committed offsets).
//!
//! The text format is built by plain functions ([`Exposition`], [`route`]); the HTTP
//! side is a small tokio loop that answers `GET /metrics` and nothing else, one
//! connection at a time, each within `metrics_scrape_timeout_ms`: a scraper on a
//! private interface, not a web server.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_log::SyncStats;
use meridian_wire::messages::ApiKey;
use meridian_wire::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Shared;

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Error codes counted for produce refusals (every code the wire defines is below).
const ERROR_CODE_SLOTS: usize = 128;

#[derive(Default)]
struct ApiStats {
    requests: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    duration_nanos: AtomicU64,
    /// Not cumulative: one count per bucket (the last one: above every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// Counters the request path bumps. Lock-free: a handful of relaxed atomic adds per
/// request.
pub(crate) struct Metrics {
    /// Indexed like [`ApiKey::ALL`].
    apis: Vec<ApiStats>,
    /// Request frames refused before a request was decoded (malformed, truncated,
    /// too large).
    frame_errors: AtomicU64,
    /// Indexed by [`Protocol`]: QUIC, Kafka.
    connections_accepted: [AtomicU64; 2],
    connections_refused: [AtomicU64; 2],
    /// Handshakes failed for the client's certificate (`tls_client_ca`).
    client_certificates_refused: AtomicU64,
    /// Requests and topics of requests refused by `acl_file`.
    authorization_denied: AtomicU64,
    /// SASL authentications on the Kafka listener: succeeded, failed.
    sasl_authentications: [AtomicU64; 2],
    /// Microseconds answers were held for clients over their quota: produce, fetch.
    throttled_micros: [AtomicU64; 2],
    connections_open: [AtomicI64; 2],
    /// Produce partition refusals by error code.
    produce_errors: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            apis: ApiKey::ALL.iter().map(|_| ApiStats::default()).collect(),
            frame_errors: AtomicU64::new(0),
            connections_accepted: Default::default(),
            connections_refused: Default::default(),
            client_certificates_refused: AtomicU64::new(0),
            authorization_denied: AtomicU64::new(0),
            sasl_authentications: Default::default(),
            throttled_micros: Default::default(),
            connections_open: Default::default(),
            produce_errors: (0..ERROR_CODE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Metrics {
    /// One request answered: its frame's size, its response's size and the time
    /// from decoding it to having its response encoded.
    pub(crate) fn request(
        &self,
        api: ApiKey,
        request_bytes: usize,
        response_bytes: usize,
        took: Duration,
    ) {
        let Some(stats) = ApiKey::ALL
            .iter()
            .position(|k| *k == api)
            .map(|i| &self.apis[i])
        else {
            return;
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .request_bytes
            .fetch_add(request_bytes as u64, Ordering::Relaxed);
        stats
            .response_bytes
            .fetch_add(response_bytes as u64, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        stats.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn frame_error(&self) {
        self.frame_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self, on: Protocol) {
        self.connections_refused[on as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn client_certificate_refused(&self) {
        self.client_certificates_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A Kafka client's SASL authentication succeeded, or failed.
    pub(crate) fn sasl_authentication(&self, succeeded: bool) {
        self.sasl_authentications[usize::from(!succeeded)].fetch_add(1, Ordering::Relaxed);
    }

    /// `acl_file` refused a request, or `topics` of its topics.
    pub(crate) fn authorization_denied(&self, topics: u64) {
        self.authorization_denied
            .fetch_add(topics, Ordering::Relaxed);
    }

    /// An answer was held `delay` for a client over its `flow` quota.
    pub(crate) fn throttled(&self, flow: crate::quotas::Flow, delay: Duration) {
        let slot = match flow {
            crate::quotas::Flow::Produce => 0,
            crate::quotas::Flow::Fetch => 1,
        };
        self.throttled_micros[slot].fetch_add(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// A connection was established; the guard counts it open until dropped.
    pub(crate) fn connection_opened(self: &Arc<Self>, on: Protocol) -> OpenConnection {
        self.connections_accepted[on as usize].fetch_add(1, Ordering::Relaxed);
        self.connections_open[on as usize].fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone(), on)
    }

    pub(crate) fn produce_refused(&self, code: ErrorCode) {
        if let Some(slot) = self.produce_errors.get(code as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, in the text exposition format.
    fn render_counters(&self, out: &mut Exposition) {
        self.per_api(
            out,
            "meridian_requests_total",
            "Requests answered, by API.",
            |s| &s.requests,
        );
        self.per_api(
            out,
            "meridian_request_bytes_total",
            "Bytes of request frames, by API.",
            |s| &s.request_bytes,
        );
        self.per_api(
            out,
            "meridian_response_bytes_total",
            "Bytes of response frames, by API.",
            |s| &s.response_bytes,
        );
        out.family(
            "meridian_request_duration_seconds",
            "histogram",
            "Time from a decoded request to its encoded response (acks=all and flush=always waits included), by API.",
        );
        for (api, stats) in ApiKey::ALL.iter().zip(&self.apis) {
            let count = stats.requests.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let name = api_name(*api);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += stats.buckets[i].load(Ordering::Relaxed);
                out.sample(
                    "meridian_request_duration_seconds_bucket",
                    &[("api", &name), ("le", &bound.to_string())],
                    cumulative,
                );
            }
            cumulative += stats.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            out.sample(
                "meridian_request_duration_seconds_bucket",
                &[("api", &name), ("le", "+Inf")],
                cumulative,
            );
            let seconds = stats.duration_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            out.sample(
                "meridian_request_duration_seconds_sum",
                &[("api", &name)],
                seconds,
            );
            out.sample(
                "meridian_request_duration_seconds_count",
                &[("api", &name)],
                cumulative,
            );
        }
        out.single(
            "meridian_request_frame_errors_total",
            "counter",
            "Request frames refused before decoding: malformed, truncated or over max_frame_bytes.",
            self.frame_errors.load(Ordering::Relaxed),
        );
        out.family(
            "meridian_produce_errors_total",
            "counter",
            "Partitions of produce requests refused, by error code.",
        );
        for (code, slot) in self.produce_errors.iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            if n > 0 {
                let name = ErrorCode::from_u16(code as u16).name();
                out.sample("meridian_produce_errors_total", &[("error", name)], n);
            }
        }
        for (on, prefix, whose) in [
            (
                Protocol::Quic,
                "meridian",
                "Client and peer connections (QUIC)",
            ),
            (
                Protocol::Kafka,
                "meridian_kafka",
                "Kafka clients' connections (kafka_listen)",
            ),
        ] {
            out.single(
                &format!("{prefix}_connections_accepted_total"),
                "counter",
                &format!("{whose} established."),
                self.connections_accepted[on as usize].load(Ordering::Relaxed),
            );
            out.single(
                &format!("{prefix}_connections_refused_total"),
                "counter",
                &format!("{whose} refused because max_connections were open."),
                self.connections_refused[on as usize].load(Ordering::Relaxed),
            );
            out.single(
                &format!("{prefix}_connections_open"),
                "gauge",
                &format!("{whose} open now."),
                self.connections_open[on as usize].load(Ordering::Relaxed),
            );
        }
        out.single(
            "meridian_client_certificates_refused_total",
            "counter",
            "TLS handshakes refused for the client's certificate (tls_client_ca): none, an unknown CA's, expired.",
            self.client_certificates_refused.load(Ordering::Relaxed),
        );
        out.family(
            "meridian_client_throttle_seconds_total",
            "counter",
            "Time answers were held for clients over their byte-rate quota, by flow.",
        );
        for (flow, slot) in ["produce", "fetch"].iter().zip(&self.throttled_micros) {
            let seconds = slot.load(Ordering::Relaxed) as f64 / 1e6;
            out.sample(
                "meridian_client_throttle_seconds_total",
                &[("flow", flow)],
                seconds,
            );
        }
        out.family(
            "meridian_kafka_sasl_authentications_total",
            "counter",
            "SASL authentications of Kafka clients (kafka_sasl_users_file), by result.",
        );
        for (result, slot) in ["ok", "failed"].iter().zip(&self.sasl_authentications) {
            out.sample(
                "meridian_kafka_sasl_authentications_total",
                &[("result", result)],
                slot.load(Ordering::Relaxed),
            );
        }
        out.single(
            "meridian_authorization_denied_total",
            "counter",
            "Requests refused by acl_file, counting a request that lost some of its topics once per topic.",
            self.authorization_denied.load(Ordering::Relaxed),
        );
    }

    /// A counter family with a sample per API asked at least once.
    fn per_api(
        &self,
        out: &mut Exposition,
        name: &str,
        help: &str,
        counter: impl Fn(&ApiStats) -> &AtomicU64,
    ) {
        out.family(name, "counter", help);
        for (api, stats) in ApiKey::ALL.iter().zip(&self.apis) {
            if stats.requests.load(Ordering::Relaxed) > 0 {
                let value = counter(stats).load(Ordering::Relaxed);
                out.sample(name, &[("api", &api_name(*api))], value);
            }
        }
    }
}

/// Which listener a connection came through: Meridian's QUIC one or the Kafka one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Protocol {
    Quic = 0,
    Kafka = 1,
}

/// Counts a connection open while it lives.
pub(crate) struct OpenConnection(Arc<Metrics>, Protocol);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open[self.1 as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

fn api_name(api: ApiKey) -> String {
    format!("{api:?}")
}

/// A Prometheus text exposition (format 0.0.4) being written.
#[derive(Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family: its help and type lines.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family of one unlabelled sample.
    pub(crate) fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Everything a scrape shows: the counters, then gauges read from the broker now.
pub(crate) fn render(shared: &Shared) -> String {
    let mut out = Exposition::default();
    out.family(
        "meridian_broker_info",
        "gauge",
        "This broker: its id, cluster and version (the value is always 1).",
    );
    let id = shared.config.broker_id.to_string();
    out.sample(
        "meridian_broker_info",
        &[
            ("broker_id", &id),
            ("cluster_id", &shared.config.cluster_id),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    shared.metrics.render_counters(&mut out);
    render_syncs(shared.group_commit.stats(), &mut out);
    let rows = partition_rows(shared);
    render_partitions(&rows, &mut out);
    render_groups(shared, &rows, &mut out);
    out.finish()
}

/// The group-commit thread's work: how many syncs each fdatasync covered, and what
/// they cost (Kafka's log flush rate and time).
fn render_syncs(stats: SyncStats, out: &mut Exposition) {
    out.single(
        "meridian_log_sync_requests_total",
        "counter",
        "Log syncs asked of the group-commit thread: under flush=always one per partition of each produce request and offset commit, otherwise one per partition each periodic flush (flush_interval_ms) finds written.",
        stats.asked,
    );
    out.single(
        "meridian_log_fsyncs_total",
        "counter",
        "fdatasyncs of log files the group-commit thread ran for those requests: one covers every request queued for its file before it.",
        stats.fsyncs,
    );
    out.single(
        "meridian_log_fsync_seconds_total",
        "counter",
        "Time spent in those fdatasyncs.",
        stats.fsync_seconds,
    );
}

/// One local partition's state at a scrape.
struct PartitionRow {
    topic: String,
    partition: String,
    log_start: i64,
    log_end: i64,
    high_watermark: i64,
    size_bytes: u64,
    segments: usize,
    /// `None` for a partition without replication (a single broker's).
    replicas: Option<ReplicaRow>,
}

struct ReplicaRow {
    leader: bool,
    replicas: usize,
    in_sync: usize,
}

fn partition_rows(shared: &Shared) -> Vec<PartitionRow> {
    let mut rows = Vec::new();
    let mut topics = shared.registry.all();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        for partition in &topic.partitions {
            let Ok(log) = partition.log() else { continue };
            let (log_start, log_end) = (log.log_start_offset(), log.log_end_offset());
            let (size_bytes, segments) = (log.size_bytes(), log.segment_count());
            drop(log);
            let replication = partition.replication.lock();
            let (high_watermark, replicas) = match replication.as_ref() {
                Some(entry) => (
                    entry.high_watermark(),
                    Some(ReplicaRow {
                        leader: entry.replica.is_leader(),
                        replicas: entry.record.as_ref().map_or(0, |r| r.replicas.len()),
                        in_sync: entry.replica.isr().len(),
                    }),
                ),
                None => (log_end, None),
            };
            drop(replication);
            rows.push(PartitionRow {
                topic: topic.name.clone(),
                partition: partition.index.to_string(),
                log_start,
                log_end,
                high_watermark,
                size_bytes,
                segments,
                replicas,
            });
        }
    }
    rows
}

/// Whether this broker leads the row's partition (holds it alone, or is its leader).
fn leads(row: &PartitionRow) -> bool {
    row.replicas.as_ref().is_none_or(|x| x.leader)
}

fn render_partitions(rows: &[PartitionRow], out: &mut Exposition) {
    let under_replicated = |r: &PartitionRow| {
        r.replicas
            .as_ref()
            .is_some_and(|x| x.leader && x.in_sync < x.replicas)
    };
    out.single(
        "meridian_partitions",
        "gauge",
        "Partitions with a log on this broker.",
        rows.len(),
    );
    out.single(
        "meridian_partitions_leader",
        "gauge",
        "Partitions this broker leads (every local one on a single broker).",
        rows.iter().filter(|r| leads(r)).count(),
    );
    out.single(
        "meridian_partitions_under_replicated",
        "gauge",
        "Partitions this broker leads with fewer in-sync replicas than replicas.",
        rows.iter().filter(|r| under_replicated(r)).count(),
    );
    out.single(
        "meridian_log_size_bytes",
        "gauge",
        "Bytes of all local partitions' segments.",
        rows.iter().map(|r| r.size_bytes).sum::<u64>(),
    );
    type Column = fn(&PartitionRow) -> Option<i64>;
    let columns: [(&str, &str, Column); 8] = [
        (
            "meridian_partition_log_start_offset",
            "The partition's first offset.",
            |r| Some(r.log_start),
        ),
        (
            "meridian_partition_log_end_offset",
            "The offset the next record will get.",
            |r| Some(r.log_end),
        ),
        (
            "meridian_partition_high_watermark",
            "The offset consumers read up to (committed records).",
            |r| Some(r.high_watermark),
        ),
        (
            "meridian_partition_size_bytes",
            "Bytes of the partition's segments.",
            |r| i64::try_from(r.size_bytes).ok(),
        ),
        (
            "meridian_partition_segments",
            "Segment files of the partition.",
            |r| i64::try_from(r.segments).ok(),
        ),
        (
            "meridian_partition_leader",
            "1 where this broker leads the partition (replicated partitions only).",
            |r| r.replicas.as_ref().map(|x| i64::from(x.leader)),
        ),
        (
            "meridian_partition_replicas",
            "Replicas the partition has (replicated partitions only).",
            |r| {
                r.replicas
                    .as_ref()
                    .and_then(|x| i64::try_from(x.replicas).ok())
            },
        ),
        (
            "meridian_partition_in_sync_replicas",
            "In-sync replicas as this broker knows them (replicated partitions only).",
            |r| {
                r.replicas
                    .as_ref()
                    .and_then(|x| i64::try_from(x.in_sync).ok())
            },
        ),
    ];
    for (name, help, column) in columns {
        if !rows.iter().any(|r| column(r).is_some()) {
            continue;
        }
        out.family(name, "gauge", help);
        for row in rows {
            if let Some(value) = column(row) {
                out.sample(
                    name,
                    &[("topic", &row.topic), ("partition", &row.partition)],
                    value,
                );
            }
        }
    }
}

/// `rows`: the local partitions as this scrape read them (their high watermarks
/// give the lag of those this broker leads).
fn render_groups(shared: &Shared, rows: &[PartitionRow], out: &mut Exposition) {
    // Each group's state and commits, taken under the coordinator lock.
    let groups: Vec<_> = {
        let coordinator = shared.groups.coordinator.lock();
        coordinator
            .list()
            .into_iter()
            .map(|(id, state)| {
                let members = coordinator.describe(&id).map_or(0, |d| d.members.len());
                let committed = coordinator.committed(&id);
                (id, state, members, committed)
            })
            .collect()
    };
    out.family(
        "meridian_groups",
        "gauge",
        "Consumer groups this broker coordinates, by state.",
    );
    for state in ["Empty", "Reconciling", "Stable"] {
        let n = groups.iter().filter(|g| g.1.name() == state).count();
        out.sample("meridian_groups", &[("state", state)], n);
    }
    if groups.is_empty() {
        return;
    }
    out.family(
        "meridian_group_members",
        "gauge",
        "Members of each consumer group this broker coordinates.",
    );
    for (id, _, members, _) in &groups {
        out.sample("meridian_group_members", &[("group", id)], members);
    }
    out.family(
        "meridian_group_committed_offset",
        "gauge",
        "Each group's committed offset per partition.",
    );
    let led: std::collections::HashMap<(&str, &str), i64> = rows
        .iter()
        .filter(|r| leads(r))
        .map(|r| ((r.topic.as_str(), r.partition.as_str()), r.high_watermark))
        .collect();
    let mut lags = Vec::new();
    for (id, _, _, committed) in &groups {
        for (tp, offset) in committed {
            let partition = tp.partition.to_string();
            let labels = [
                ("group", id.as_str()),
                ("topic", tp.topic.as_str()),
                ("partition", partition.as_str()),
            ];
            out.sample("meridian_group_committed_offset", &labels, offset.offset);
            if let Some(&end) = led.get(&(tp.topic.as_str(), partition.as_str())) {
                lags.push((
                    id.clone(),
                    tp.topic.clone(),
                    partition,
                    (end - offset.offset).max(0),
                ));
            }
        }
    }
    if lags.is_empty() {
        return;
    }
    out.family(
        "meridian_group_lag",
        "gauge",
        "Records between a group's committed offset and the high watermark, for partitions this broker leads.",
    );
    for (group, topic, partition, lag) in lags {
        out.sample(
            "meridian_group_lag",
            &[
                ("group", &group),
                ("topic", &topic),
                ("partition", &partition),
            ],
            lag,
        );
    }
}

/// What an HTTP request asks of the metrics listener.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`, the same without a body).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (its bytes up to the blank line).
pub(crate) fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    if path == "/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound
    }
}

/// Where a request head ends in `buffer` (just past its blank line), if it does.
fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Serves scrapes on `listener` until the task is aborted, one at a time; under
/// `metrics_tls` each over TLS, whose handshake counts in the scrape's time.
pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let timeout = Duration::from_millis(shared.config.metrics_scrape_timeout_ms);
        let max_head = shared.config.metrics_max_head_bytes as usize;
        let tls = shared.metrics_tls.as_ref().map(|c| c.read().clone());
        let scrape = async {
            let Some(tls) = tls else {
                let mut stream = stream;
                return answer(&shared, &mut stream, max_head).await;
            };
            let mut stream = match tokio_rustls::TlsAcceptor::from(tls).accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    if crate::tls::is_certificate_refusal(&e) {
                        shared.metrics.client_certificate_refused();
                    }
                    return Err(e);
                }
            };
            answer(&shared, &mut stream, max_head).await
        };
        match tokio::time::timeout(timeout, scrape).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics scrape failed"),
            Err(_) => tracing::debug!(%peer, "metrics scrape timed out"),
        }
    }
}

/// Answers one scrape whose request head may be up to `max_head` bytes (431 beyond).
async fn answer(
    shared: &Shared,
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    max_head: usize,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let route = loop {
        if head_end(&buffer).is_some() {
            break Some(route(&buffer));
        }
        if buffer.len() > max_head {
            break None;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let mut send_body = true;
    let (status, extra, body) = match route {
        None => (
            "431 Request Header Fields Too Large",
            "",
            format!("request head over {max_head} bytes (metrics_max_head_bytes)\n"),
        ),
        Some(Route::Metrics { head }) => {
            send_body = !head;
            ("200 OK", "", render(shared))
        }
        Some(Route::NotFound) => (
            "404 Not Found",
            "",
            "only /metrics is served here\n".to_string(),
        ),
        Some(Route::MethodNotAllowed) => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD are served here\n".to_string(),
        ),
        Some(Route::BadRequest) => ("400 Bad Request", "", "not an HTTP/1 request\n".to_string()),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    // HEAD: the length of the body a GET would get, and no body.
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
        body.len(),
        if send_body { body.as_str() } else { "" }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe garbage\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SSH-2.0\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut out = Exposition::default();
        out.family("m", "gauge", "a \\ b\nc");
        out.sample("m", &[("topic", "a\"b\\c\nd"), ("p", "0")], 3);
        out.sample("m", &[], 1.5);
        assert_eq!(
            out.finish(),
            "# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{topic=\"a\\\"b\\\\c\\nd\",p=\"0\"} 3\nm 1.5\n"
        );
    }

    #[test]
    fn latency_lands_in_cumulative_buckets_with_sum_and_count() {
        let metrics = Metrics::default();
        metrics.request(ApiKey::Produce, 100, 20, Duration::from_micros(300));
        metrics.request(ApiKey::Produce, 50, 20, Duration::from_millis(3));
        metrics.request(ApiKey::Produce, 50, 20, Duration::from_secs(9));
        metrics.frame_error();
        metrics.produce_refused(ErrorCode::MessageTooLarge);
        metrics.produce_refused(ErrorCode::MessageTooLarge);
        let mut out = Exposition::default();
        metrics.render_counters(&mut out);
        let text = out.finish();
        for line in [
            "meridian_requests_total{api=\"Produce\"} 3",
            "meridian_request_bytes_total{api=\"Produce\"} 200",
            "meridian_response_bytes_total{api=\"Produce\"} 60",
            "meridian_request_duration_seconds_bucket{api=\"Produce\",le=\"0.00025\"} 0",
            "meridian_request_duration_seconds_bucket{api=\"Produce\",le=\"0.0005\"} 1",
            "meridian_request_duration_seconds_bucket{api=\"Produce\",le=\"0.005\"} 2",
            "meridian_request_duration_seconds_bucket{api=\"Produce\",le=\"2.5\"} 2",
            "meridian_request_duration_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 3",
            "meridian_request_duration_seconds_sum{api=\"Produce\"} 9.0033",
            "meridian_request_duration_seconds_count{api=\"Produce\"} 3",
            "meridian_request_frame_errors_total 1",
            "meridian_produce_errors_total{error=\"MessageTooLarge\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // APIs never asked are left out rather than listed at zero.
        assert!(!text.contains("api=\"Fetch\""), "{text}");
    }

    #[test]
    fn open_connections_are_counted_until_their_guard_drops() {
        let metrics = Arc::new(Metrics::default());
        let a = metrics.connection_opened(Protocol::Quic);
        let b = metrics.connection_opened(Protocol::Quic);
        let kafka = metrics.connection_opened(Protocol::Kafka);
        drop(a);
        assert_eq!(metrics.connections_open[0].load(Ordering::Relaxed), 1);
        assert_eq!(metrics.connections_accepted[0].load(Ordering::Relaxed), 2);
        assert_eq!(metrics.connections_open[1].load(Ordering::Relaxed), 1);
        drop(b);
        drop(kafka);
        assert_eq!(metrics.connections_open[0].load(Ordering::Relaxed), 0);
        assert_eq!(metrics.connections_open[1].load(Ordering::Relaxed), 0);
        assert_eq!(metrics.connections_accepted[1].load(Ordering::Relaxed), 1);
        let mut out = Exposition::default();
        metrics.render_counters(&mut out);
        let text = out.finish();
        for line in [
            "meridian_connections_accepted_total 2",
            "meridian_kafka_connections_accepted_total 1",
            "meridian_kafka_connections_open 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
