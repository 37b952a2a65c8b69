//! `meridian bench`: throughput and latency, modelled on kafka-producer-perf-test and
//! the OpenMessaging Benchmark.
//!
//! Latency is measured from each record's *intended* send time (start + i / rate), so
//! a stalled broker shows up as latency instead of silently lowering the send rate
//! (no coordinated omission). Unless `--broker` is given, the bench starts its own
//! broker process (this same binary) on a fresh temporary data dir and stops it after.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use meridian_client::{
    Acks, Client, ClientConfig, Compression, ConsumerConfig, NewTopic, Offset, ProducerConfig,
    ProducerRecord, RecordMetadata, Trust,
};
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as possible (or at --rate) and report throughput and latency.
    Produce(LoadArgs),
    /// Fill a topic (untimed), then consume it from the start as fast as possible.
    Consume(LoadArgs),
    /// Produce at --rate while consuming; latency is produce-intent to consume.
    E2e(LoadArgs),
    /// Raw QUIC bulk throughput between two endpoints on this machine: the ceiling the
    /// broker is held against.
    Transport(TransportArgs),
    /// Sequential append + fdatasync every --write-bytes: the disk's own ceiling for
    /// `flush=always`; with --no-sync, what appending to the page cache alone costs.
    Disk(DiskArgs),
    /// Broker memory with many idle partitions.
    Idle(IdleArgs),
    /// Time for a broker to serve again after kill -9 with a large log.
    Recovery(RecoveryArgs),
    /// Consumer-group rebalance time after a member leaves cleanly and after one crashes.
    Rebalance(RebalanceArgs),
    /// Log compaction speed, in process against `meridian-log` (no broker): fills a
    /// partition with records over a fixed key set, then cleans it on one core.
    Compaction(CompactionArgs),
    /// Cost of a pass-through filter plugin on produce, bytes saved by a fetch filter,
    /// instantiation time.
    Plugin(plugin::PluginBenchArgs),
    /// A region of real brokers under acks=all load while leaders are killed (or a
    /// follower paused, or the cluster restarted): how fast writes resume, and a
    /// checker for lost, duplicated and reordered records.
    Failover(crate::bench_failover::FailoverArgs),
    /// Produce and consume throughput against the transport ceiling: interleaved
    /// rounds of `transport`, `consume` and `produce`, each as its own process, with
    /// medians and ratios.
    Ratio(crate::bench_ratio::RatioArgs),
    /// Produce over the Kafka protocol (TCP) to a broker's Kafka listener, as a Kafka
    /// client's producer does (`batch.size` batches per partition, one request per
    /// broker carrying a batch for each partition it leads, requests in flight):
    /// throughput, request latency and CPU, to set against `bench produce`.
    KafkaProduce(kafka::KafkaLoadArgs),
    /// Fill a topic over the Kafka protocol (untimed), then fetch it from the start
    /// as a Kafka consumer does (one fetch at a time to each leader, every batch's
    /// CRC checked and its records decoded), to set against `bench consume`.
    KafkaConsume(kafka::KafkaLoadArgs),
}

#[path = "bench_kafka.rs"]
mod kafka;
#[path = "bench_plugin.rs"]
mod plugin;

#[derive(Args, Clone)]
pub struct BrokerArgs {
    /// Use a running broker (or cluster: `host:port,host:port`) instead of starting one.
    #[arg(long, visible_alias = "bootstrap")]
    pub broker: Option<String>,
    /// With --broker: pin its certificate by fingerprint (`sha256:…`). Without it or
    /// --ca, the certificate `meridian dev` or `meridian up` wrote under
    /// ./meridian-data is trusted, as by the other commands.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// With --broker: trust the broker certificate in this PEM file.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// With --broker: the client certificate to present (`--cert`, `--key`).
    #[command(flatten)]
    pub identity: crate::IdentityArgs,
    /// Config for the broker the bench starts, repeatable: `--broker-set flush=always`.
    #[arg(long = "broker-set", value_name = "KEY=VALUE")]
    pub broker_set: Vec<String>,
    /// Data dir for the broker the bench starts (default: a fresh temporary dir).
    #[arg(long)]
    pub broker_data_dir: Option<PathBuf>,
    /// Start every broker of this region file (e.g. regions/local-3.toml), with data
    /// in a fresh temporary dir, instead of one broker.
    #[arg(long, conflicts_with = "broker")]
    pub region: Option<PathBuf>,
    /// Worker threads of the bench's own async runtime. Default: when the bench
    /// starts one broker, half the CPU cores (at least one), and that broker gets the
    /// rest as `worker_threads` (unless --broker-set sets it), so the load and the
    /// broker do not take turns on the same cores; otherwise one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub client_threads: Option<u16>,
}

impl BrokerArgs {
    /// Worker threads for the bench's runtime, and for the one broker it starts
    /// (`None` when it starts none, or a region).
    pub fn threads(&self, cores: usize) -> (usize, Option<usize>) {
        let starts_one = self.broker.is_none() && self.region.is_none();
        split_cores(starts_one, self.client_threads, cores)
    }
}

/// Worker threads for a bench's runtime (`client_threads` if given), and for the
/// one broker it starts, if it `starts_one`: half the cores each, so the load and
/// the broker do not take turns on the same cores; without a broker of its own,
/// every core for the bench.
pub(crate) fn split_cores(
    starts_one: bool,
    client_threads: Option<u16>,
    cores: usize,
) -> (usize, Option<usize>) {
    let client = match client_threads {
        Some(n) => usize::from(n),
        None if starts_one => (cores / 2).max(1),
        None => cores.max(1),
    };
    let broker = starts_one.then(|| cores.saturating_sub(client).max(1));
    (client, broker)
}

/// `broker_set` with the broker's share of the cores as `worker_threads`, unless
/// the user set that.
pub(crate) fn broker_settings(broker_set: &[String], workers: Option<usize>) -> Vec<String> {
    let mut settings = broker_set.to_vec();
    let set_by_user = settings.iter().any(|s| setting_key(s) == "worker_threads");
    if let (Some(workers), false) = (workers, set_by_user) {
        settings.push(format!("worker_threads={workers}"));
    }
    // A metrics listener on a free port, for what the broker's group commit did
    // (`meridian_log_fsyncs_total`, ...): the bench reports it under flush=always.
    if !settings.iter().any(|s| setting_key(s) == "metrics_listen") {
        settings.push("metrics_listen=127.0.0.1:0".into());
    }
    settings
}

fn setting_key(setting: &str) -> &str {
    setting.split('=').next().map_or("", str::trim)
}

/// Worker threads for the runtime `meridian bench` runs on (see
/// [`BrokerArgs::threads`]); benches that start no broker use every core.
pub fn client_threads(cmd: &BenchCommand, cores: usize) -> usize {
    match cmd {
        BenchCommand::Produce(args) | BenchCommand::Consume(args) | BenchCommand::E2e(args) => {
            args.broker.threads(cores).0
        }
        BenchCommand::Rebalance(args) => args.broker.threads(cores).0,
        BenchCommand::KafkaProduce(args) | BenchCommand::KafkaConsume(args) => {
            args.threads(cores).0
        }
        _ => cores.max(1),
    }
}

/// CPU cores this process may use (at least one).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Replication factor of the topic the bench creates.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u16,
    /// min.insync.replicas of the topic the bench creates (default: the brokers'
    /// default; 1 with --replication-factor 1).
    #[arg(long)]
    pub min_insync_replicas: Option<u32>,
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records to send (ignored when --duration is set).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Run for this many seconds instead of a record count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent producers (each with its own connection).
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Concurrent consumers (partitions are split between them).
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    #[arg(long, default_value_t = 256 * 1024)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2)]
    pub linger_ms: u64,
    /// Each producer's buffer for records not yet acknowledged (the SDK's
    /// `buffer_memory`, like Kafka's `buffer.memory`)
    #[arg(long, default_value_t = ProducerConfig::default().buffer_memory)]
    pub buffer_memory: usize,
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    #[arg(long, default_value = "1")]
    pub acks: Acks,
    /// Target records/s over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Fraction of each payload that is random (the rest compresses away).
    #[arg(long, default_value_t = 1.0)]
    pub randomness: f64,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Args)]
pub struct TransportArgs {
    /// Bytes to move.
    #[arg(long, default_value_t = 2 << 30)]
    pub bytes: u64,
    /// Concurrent streams.
    #[arg(long, default_value_t = 16)]
    pub streams: u32,
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_size: usize,
    /// Worker threads of each endpoint's own runtime (default: half the CPU cores, at
    /// least one), the split `bench produce` and `consume` make between themselves
    /// and the broker they start.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads_per_endpoint: Option<u16>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DiskArgs {
    /// Bytes appended between fdatasyncs.
    #[arg(long, default_value_t = 256 * 1024)]
    pub write_bytes: usize,
    #[arg(long, default_value_t = 1 << 30)]
    pub total_bytes: u64,
    /// Directory to write in (default: a temporary dir under the current dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Append without fdatasync: the CPU that writing into the page cache costs on
    /// this machine, a share of every produce that `bench transport` does not pay.
    #[arg(long)]
    pub no_sync: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 1000)]
    pub partitions: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RebalanceArgs {
    #[arg(long, default_value_t = 100)]
    pub partitions: u32,
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Member session timeout: a crashed member's partitions move after it.
    #[arg(long, default_value_t = 6_000)]
    pub session_timeout_ms: u64,
    /// Leave/rejoin and crash/rejoin rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// cooperative-sticky, range or roundrobin.
    #[arg(long, default_value = "cooperative-sticky")]
    pub assignor: String,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RecoveryArgs {
    /// GiB of log to write before the kill.
    #[arg(long, default_value_t = 10.0)]
    pub log_gib: f64,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CompactionArgs {
    /// Bytes of log to fill (and then clean).
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Distinct keys; each record gets one at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u32,
    /// Bytes of value per record.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, default_value_t = 100)]
    pub records_per_batch: usize,
    #[arg(long, default_value = "none")]
    pub compression: meridian_wire::batch::Compression,
    /// Segment size of the filled log (`segment.bytes`).
    #[arg(long, default_value_t = 128 << 20)]
    pub segment_bytes: u64,
    /// Directory to write in (default: a temporary dir under the current dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Runs a bench until it finishes, fails, or the bench is interrupted (Ctrl-C,
/// SIGTERM). Every broker a bench starts is owned by the bench's future, so on each of
/// these exits it is dropped and its process killed; a bench killed outright
/// (SIGKILL) takes its brokers along through their parent-death signal.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    tokio::select! {
        result = run_bench(cmd) => result,
        () = crate::shutdown_signal() => {
            bail!("interrupted; the brokers this bench started were killed")
        }
    }
}

async fn run_bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Produce(args) => produce_bench(args).await,
        BenchCommand::Consume(args) => consume_bench(args).await,
        BenchCommand::E2e(args) => e2e_bench(args).await,
        BenchCommand::Transport(args) => transport_bench(args).await,
        BenchCommand::Disk(args) => disk_bench(args),
        BenchCommand::Idle(args) => idle_bench(args).await,
        BenchCommand::Recovery(args) => recovery_bench(args).await,
        BenchCommand::Rebalance(args) => crate::group_bench::rebalance_bench(args).await,
        BenchCommand::Compaction(args) => compaction_bench(args),
        BenchCommand::Plugin(args) => plugin::run(args).await,
        BenchCommand::Failover(args) => crate::bench_failover::run(args).await,
        BenchCommand::Ratio(args) => crate::bench_ratio::run(args).await,
        BenchCommand::KafkaProduce(args) => kafka::produce(args).await,
        BenchCommand::KafkaConsume(args) => kafka::consume(args).await,
    }
}

// ---- broker under test --------------------------------------------------------------

/// A broker child process started by the bench; killed on drop.
pub struct ChildBroker {
    /// `None` when the bench runs a region (`region` holds its processes).
    child: Option<Child>,
    region: Option<crate::up::RegionRunner>,
    /// The broker's address, or the region's comma-separated bootstrap list.
    pub addr: String,
    pub fingerprint: String,
    /// The worker threads the broker said it runs with (one broker only).
    workers: Option<usize>,
    /// The one broker's data directory (its certificate is `tls/cert.pem` there).
    pub data_dir: Option<PathBuf>,
    /// The one broker's metrics listener, when it has one (`metrics_listen`).
    metrics: Option<String>,
    _temp: Option<tempfile::TempDir>,
}

impl ChildBroker {
    pub fn start(data_dir: Option<PathBuf>, settings: &[String]) -> anyhow::Result<ChildBroker> {
        let (temp, data_dir) = match data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("meridian-bench-")
                    .tempdir_in(".")?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        Self::spawn(data_dir, settings, temp)
    }

    fn spawn(
        data_dir: PathBuf,
        settings: &[String],
        temp: Option<tempfile::TempDir>,
    ) -> anyhow::Result<ChildBroker> {
        let exe = std::env::current_exe().context("locating the meridian binary")?;
        let mut cmd = Command::new(exe);
        crate::up::die_with_parent(&mut cmd);
        cmd.arg("broker")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0");
        for s in settings {
            cmd.arg("--set").arg(s);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("MERIDIAN_BENCH_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting broker")?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint, mut workers, mut metrics) = (None, None, None, None);
        // The banner names the metrics listener after the fingerprint.
        let with_metrics = settings.iter().any(|s| setting_key(s) == "metrics_listen");
        while addr.is_none() || fingerprint.is_none() || (with_metrics && metrics.is_none()) {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                bail!("broker exited before it was ready");
            };
            let line = line?;
            if let Some(rest) = line.split(" listening on ").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(fp) = line.trim().strip_prefix("fingerprint:") {
                fingerprint = Some(fp.trim().to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("workers:") {
                workers = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
            if let Some(rest) = line.trim().strip_prefix("metrics:") {
                let url = rest.trim();
                let host = url.split("://").nth(1).unwrap_or(url);
                metrics = host.split('/').next().map(str::to_owned);
            }
        }
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(ChildBroker {
            child: Some(child),
            region: None,
            addr: addr.expect("checked above"),
            fingerprint: fingerprint.expect("checked above"),
            workers,
            data_dir: Some(data_dir),
            metrics,
            _temp: temp,
        })
    }

    /// The broker's group-commit counters now, from its metrics listener; `None`
    /// without one, or when it cannot be read (`metrics_tls`, say).
    async fn log_syncs(&self) -> Option<LogSyncs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics.as_deref()?;
        let scrape = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await?;
            std::io::Result::Ok(text)
        };
        let text = tokio::time::timeout(Duration::from_secs(5), scrape)
            .await
            .ok()?
            .ok()?;
        let sample = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some(LogSyncs {
            broker_sync_requests: sample("meridian_log_sync_requests_total")? as u64,
            broker_fsyncs: sample("meridian_log_fsyncs_total")? as u64,
            broker_fsync_seconds: sample("meridian_log_fsync_seconds_total")?,
        })
    }

    /// Process ids of the broker(s).
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.child.iter().map(Child::id).collect();
        if let Some(region) = &self.region {
            pids.extend(region.pids());
        }
        pids
    }

    /// Starts every broker of `region` with data in a fresh temporary directory and
    /// waits until all of them are registered.
    pub async fn start_region(region: &std::path::Path) -> anyhow::Result<ChildBroker> {
        let mut region = crate::up::RegionFile::load(region)?;
        let temp = tempfile::Builder::new()
            .prefix("meridian-bench-region-")
            .tempdir_in(".")?;
        region.region.data_dir = temp.path().to_owned();
        let mut runner = crate::up::RegionRunner::prepare(region, crate::up::Output::LogFiles)?;
        for id in runner.broker_ids() {
            runner.start(id)?;
        }
        let child = ChildBroker {
            child: None,
            addr: runner.region.bootstrap(),
            fingerprint: runner.fingerprint.clone(),
            workers: None,
            data_dir: None,
            metrics: None,
            region: Some(runner),
            _temp: Some(temp),
        };
        child.wait_for_region().await?;
        Ok(child)
    }

    async fn wait_for_region(&self) -> anyhow::Result<()> {
        let Some(runner) = &self.region else {
            return Ok(());
        };
        let want = runner.broker_ids().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            match Client::connect(self.client_config()?).await {
                Ok(client) => match client.metadata(None).await {
                    Ok(m) if m.brokers.len() >= want => return Ok(()),
                    Ok(m) => last = format!("{} of {want} brokers registered", m.brokers.len()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("the region's brokers did not all register within 60 s: {last}")
    }

    /// How to reach this broker (or region): its pinned certificate, and the
    /// region's identity for brokers that require a client certificate.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new(
            self.addr.clone(),
            Trust::parse_fingerprint(&self.fingerprint)?,
        );
        if let Some(region) = &self.region {
            config.identity = Some(region.identity()?);
        }
        Ok(config)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) async fn connect(
    args: &BrokerArgs,
    child: &Option<ChildBroker>,
) -> anyhow::Result<Client> {
    let config = match (child, &args.broker) {
        (Some(child), _) => child.client_config()?,
        (None, Some(addr)) => {
            let mut config = ClientConfig::new(
                addr,
                crate::trust(args.fingerprint.as_deref(), args.ca.as_deref())?,
            );
            config.identity = args.identity.load()?;
            config
        }
        (None, None) => unreachable!("a broker is started when none is given"),
    };
    Ok(Client::connect(config).await?)
}

pub(crate) async fn broker_for(args: &BrokerArgs) -> anyhow::Result<Option<ChildBroker>> {
    if args.broker.is_some() {
        return Ok(None);
    }
    if let Some(region) = &args.region {
        if !args.broker_set.is_empty() || args.broker_data_dir.is_some() {
            bail!("--broker-set and --broker-data-dir apply to a single broker; set broker options in the region file");
        }
        return Ok(Some(ChildBroker::start_region(region).await?));
    }
    let settings = broker_settings(&args.broker_set, args.threads(cores()).1);
    Ok(Some(ChildBroker::start(
        args.broker_data_dir.clone(),
        &settings,
    )?))
}

pub(crate) async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<()> {
    ensure_replicated_topic(client, topic, partitions, 1, None).await
}

pub(crate) async fn ensure_replicated_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: u16,
    min_insync_replicas: Option<u32>,
) -> anyhow::Result<()> {
    let mut new = NewTopic {
        replication_factor,
        ..NewTopic::new(topic, partitions)
    };
    // One replica is all an RF=1 topic can ever have in sync, whatever the brokers'
    // default (a region's is often 2, which the brokers refuse for RF=1).
    if let Some(n) = min_insync_replicas.or((replication_factor == 1).then_some(1)) {
        new = new.config("min.insync.replicas", n.to_string());
    }
    match client.admin().create_topic(new).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(meridian_client::ErrorCode::TopicAlreadyExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// ---- results ------------------------------------------------------------------------

#[derive(Serialize)]
struct LoadResult {
    bench: &'static str,
    records: u64,
    bytes: u64,
    seconds: f64,
    records_per_sec: f64,
    mib_per_sec: f64,
    latency_ms: Option<LatencySummary>,
    /// Produce requests the bench's producers sent (produce, e2e) or fetch
    /// requests its consumers sent (consume): with `records`, how many records
    /// one request carried, which is what CPU and latency at a fixed rate follow.
    requests: u64,
    #[serde(flatten)]
    cpu: Option<CpuUse>,
    /// What the broker's group commit did during the run, when it fsynced at all
    /// (`flush=always`, or a periodic flush that came round).
    #[serde(flatten)]
    syncs: Option<LogSyncs>,
}

/// The broker's group-commit counters (`meridian_log_*` in its metrics), or their
/// growth over a run.
#[derive(Clone, Copy, Debug, Serialize)]
struct LogSyncs {
    broker_sync_requests: u64,
    broker_fsyncs: u64,
    broker_fsync_seconds: f64,
}

impl LogSyncs {
    /// What grew from `before` to `after`; `None` when no fdatasync ran.
    fn during(before: Option<LogSyncs>, after: Option<LogSyncs>) -> Option<LogSyncs> {
        let (before, after) = (before?, after?);
        let grown = LogSyncs {
            broker_sync_requests: after
                .broker_sync_requests
                .saturating_sub(before.broker_sync_requests),
            broker_fsyncs: after.broker_fsyncs.saturating_sub(before.broker_fsyncs),
            broker_fsync_seconds: (after.broker_fsync_seconds - before.broker_fsync_seconds)
                .max(0.0),
        };
        (grown.broker_fsyncs > 0).then_some(grown)
    }
}

impl LoadResult {
    /// `records` of `bytes` in all moved in `seconds`, with their rates, the
    /// `requests` that carried them and the CPU `cpu` measured meanwhile.
    fn new(
        bench: &'static str,
        (records, bytes): (u64, u64),
        seconds: f64,
        latency: Option<&Histogram<u64>>,
        requests: u64,
        cpu: &CpuClock,
    ) -> LoadResult {
        LoadResult {
            bench,
            records,
            bytes,
            seconds,
            records_per_sec: records as f64 / seconds,
            mib_per_sec: bytes as f64 / seconds / (1024.0 * 1024.0),
            latency_ms: latency.map(summarize),
            requests,
            cpu: cpu.used(bytes),
            syncs: None,
        }
    }
}

/// CPU time (user and system) of the processes a bench measured, over its timed part:
/// on a machine where client and broker share the cores this is what decides the
/// throughput, and it moves much less from run to run than the throughput does.
#[derive(Serialize)]
struct CpuUse {
    cpu_seconds: f64,
    /// CPU seconds per GiB moved.
    cpu_seconds_per_gib: f64,
    /// Which processes: the bench and the brokers it started, or the bench only
    /// (a broker given with `--broker` is not measured), with their thread counts.
    cpu_of: String,
    /// CPU seconds the hypervisor gave to other guests meanwhile, summed over this
    /// machine's cores (the `steal` column of `/proc/stat`). On a shared VM the
    /// latency tail and the throughput follow it: a run with seconds stolen is not
    /// comparable with a quiet one.
    #[serde(skip_serializing_if = "Option::is_none")]
    stolen_seconds: Option<f64>,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU {:.2} s ({:.2} s per GiB) in {}",
            self.cpu_seconds, self.cpu_seconds_per_gib, self.cpu_of
        )?;
        if let Some(stolen) = self.stolen_seconds {
            write!(f, "; {stolen:.2} CPU s stolen by the hypervisor")?;
        }
        Ok(())
    }
}

/// Measures the CPU time processes use from its start, read from `/proc/<pid>/stat`
/// (Linux only: elsewhere nothing is reported).
struct CpuClock {
    pids: Vec<u32>,
    of: String,
    start: Option<Duration>,
    stolen_at_start: Option<Duration>,
}

impl CpuClock {
    /// Starts measuring this process and the brokers the bench started.
    fn start(child: &Option<ChildBroker>) -> CpuClock {
        let mut pids = vec![std::process::id()];
        let brokers = child.as_ref().map(ChildBroker::pids).unwrap_or_default();
        let threads = tokio::runtime::Handle::current().metrics().num_workers();
        let bench = format!("the bench ({threads} runtime thread{})", plural(threads));
        let of = match child.as_ref().and_then(|c| c.workers) {
            _ if brokers.is_empty() => format!("{bench} process"),
            Some(n) => format!("{bench} and broker ({n} worker{}) processes", plural(n)),
            None => format!("{bench} and broker processes"),
        };
        pids.extend(brokers);
        CpuClock::measuring(pids, of)
    }

    fn measuring(pids: Vec<u32>, of: impl Into<String>) -> CpuClock {
        let start = pids.iter().map(|&pid| process_cpu(pid)).sum();
        CpuClock {
            pids,
            of: of.into(),
            start,
            stolen_at_start: machine_stolen(),
        }
    }

    /// The CPU used since the start, for `bytes` moved.
    fn used(&self, bytes: u64) -> Option<CpuUse> {
        let now: Duration = self
            .pids
            .iter()
            .map(|&pid| process_cpu(pid))
            .sum::<Option<_>>()?;
        let used = now.checked_sub(self.start?)?.as_secs_f64();
        Some(CpuUse {
            cpu_seconds: used,
            cpu_seconds_per_gib: used / (bytes.max(1) as f64 / (1u64 << 30) as f64),
            cpu_of: self.of.clone(),
            stolen_seconds: machine_stolen()
                .zip(self.stolen_at_start)
                .and_then(|(now, start)| now.checked_sub(start))
                .map(|stolen| stolen.as_secs_f64()),
        })
    }
}

/// Adds a bench's CPU figures (those it could read) to its `--json` summary object.
fn add_cpu(summary: &mut serde_json::Value, cpu: Option<&CpuUse>) -> anyhow::Result<()> {
    if let (Some(fields), Some(cpu)) = (summary.as_object_mut(), cpu) {
        if let serde_json::Value::Object(cpu) = serde_json::to_value(cpu)? {
            fields.extend(cpu);
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// User plus system time of process `pid` (all its threads), from fields 14 and 15
/// of `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(clock_ticks(cpu_ticks(&stat)?))
}

/// CPU time stolen from this machine by its hypervisor since boot, all cores, from
/// `/proc/stat`.
fn machine_stolen() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(clock_ticks(steal_ticks(&stat)?))
}

/// A count of the kernel's clock ticks (`/proc` CPU times) as a duration.
fn clock_ticks(ticks: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The `steal` column (the 8th value) of the all-cores `cpu` line of `/proc/stat`;
/// `None` on kernels too old to have it.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// utime + stime, in clock ticks, from a `/proc/<pid>/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (14) and stime (15) are 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[derive(Serialize)]
struct LatencySummary {
    avg: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        avg: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

fn report(result: &LoadResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
        return Ok(());
    }
    let mut line = format!(
        "{} records {}, {:.1} records/sec ({:.2} MiB/sec)",
        result.records,
        match result.bench {
            "consume" | "kafka-consume" => "consumed",
            _ => "sent",
        },
        result.records_per_sec,
        result.mib_per_sec
    );
    if let Some(l) = &result.latency_ms {
        line.push_str(&format!(
            ", {:.2} ms avg latency, {:.2} ms max latency, {:.2} ms 50th, {:.2} ms 95th, {:.2} ms 99th, {:.2} ms 99.9th.",
            l.avg, l.max, l.p50, l.p95, l.p99, l.p999
        ));
    }
    let kind = match result.bench {
        "consume" | "kafka-consume" => "fetch",
        _ => "produce",
    };
    if !line.ends_with('.') {
        line.push('.');
    }
    line.push_str(&format!(
        " {} {kind} requests ({:.1} records each).",
        result.requests,
        result.records as f64 / result.requests.max(1) as f64
    ));
    if let Some(cpu) = &result.cpu {
        line.push_str(&format!(" {cpu}."));
    }
    if let Some(syncs) = &result.syncs {
        // What `bench disk --write-bytes` should append between fdatasyncs to compare
        // at the same flush size.
        let fsyncs = syncs.broker_fsyncs;
        line.push_str(&format!(
            " The broker ran {fsyncs} fdatasyncs for {} syncs asked: {:.0} KiB of records and {:.2} ms each on average.",
            syncs.broker_sync_requests,
            result.bytes as f64 / fsyncs as f64 / 1024.0,
            syncs.broker_fsync_seconds * 1e3 / fsyncs as f64
        ));
    }
    println!("{line}");
    Ok(())
}

fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template =
        format!("{what} {{bar:40}} {{pos}}/{{len}} records {{per_sec}} [{{elapsed_precise}}]");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// Payloads with the requested share of random bytes, reused round-robin.
fn payloads(size: usize, randomness: f64) -> Vec<Bytes> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let random = ((size as f64) * randomness.clamp(0.0, 1.0)) as usize;
    (0..64)
        .map(|_| {
            let mut v = vec![0u8; size];
            rng.fill(&mut v[..random]);
            Bytes::from(v)
        })
        .collect()
}

// ---- produce ------------------------------------------------------------------------

struct ProduceOutcome {
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Produce requests sent (`ProducerMetrics::requests`, summed).
    requests: u64,
}

/// Each record's latency, read in its delivery callback when its batch is
/// acknowledged, as kafka-producer-perf-test's callback does. (Awaited in send
/// order instead, a record would be charged with the slowest request of the records
/// sent before it, other partitions' batches included.) A callback costs a producer
/// less than a delivery future per record does: no waker, no task to wake.
struct LatencyCollector {
    latency: std::sync::Mutex<Histogram<u64>>,
    /// The first record that failed for good.
    failure: std::sync::OnceLock<meridian_client::Error>,
}

impl LatencyCollector {
    fn new() -> LatencyCollector {
        LatencyCollector {
            latency: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ),
            failure: std::sync::OnceLock::new(),
        }
    }

    /// The callback of a record meant to be sent at `intended`.
    fn on_delivery(
        this: &Arc<LatencyCollector>,
        intended: Instant,
    ) -> impl FnOnce(meridian_client::Result<RecordMetadata>) + Send + 'static {
        let this = this.clone();
        move |delivered| match delivered {
            Ok(_) => {
                let micros = intended.elapsed().as_micros().max(1) as u64;
                let _ = this.lock().record(micros);
            }
            Err(e) => {
                let _ = this.failure.set(e);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// The latencies, or the first failure.
    fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        match self.failure.get() {
            Some(e) => Err(e.clone().into()),
            None => Ok(self.lock().clone()),
        }
    }
}

/// Runs `producers` producers; `stamp` puts the intended send time (µs since
/// `epoch`) in a header so an end-to-end consumer can measure latency too.
async fn run_producers(
    clients: &[Client],
    args: &LoadArgs,
    stamp: Option<Instant>,
    bar: &ProgressBar,
) -> anyhow::Result<ProduceOutcome> {
    let payloads = Arc::new(payloads(args.record_size, args.randomness));
    let start = Instant::now();
    let deadline = args.duration.map(|s| start + Duration::from_secs_f64(s));
    let per_producer = args.records / args.producers as u64;
    let per_producer_rate = args.rate / args.producers as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (producer_idx, client) in clients.iter().enumerate() {
        let producer = client.producer(ProducerConfig {
            batch_size: args.batch_size,
            linger: Duration::from_millis(args.linger_ms),
            compression: args.compression,
            acks: args.acks,
            buffer_memory: args.buffer_memory,
            // The bench exports no spans: no per-record look for one.
            propagate_trace_context: false,
            ..ProducerConfig::default()
        });
        let (topic, payloads, sent, bar) = (
            args.topic.clone(),
            payloads.clone(),
            sent.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let collector = Arc::new(LatencyCollector::new());
            let make_record = move |i: u64, intended: Instant| {
                let value = payloads[(i as usize + producer_idx) % payloads.len()].clone();
                let mut record = ProducerRecord::new(topic.clone(), value);
                if let Some(epoch) = stamp {
                    let micros = intended.duration_since(epoch).as_micros() as u64;
                    record = record.header(
                        "bench-intended-us",
                        Bytes::copy_from_slice(&micros.to_be_bytes()),
                    );
                }
                record
            };
            let count = move |i: u64| {
                sent.fetch_add(1, Ordering::Relaxed);
                if i.is_multiple_of(1024) {
                    bar.inc(1024);
                }
            };
            let i = if per_producer_rate > 0.0 {
                // Paced: the send loop runs on its own OS thread, because
                // std::thread::sleep wakes within tens of microseconds where tokio's
                // millisecond timer would add up to a millisecond of the bench's own
                // lateness to every record's measured latency.
                let runtime = tokio::runtime::Handle::current();
                let (send_producer, collector) = (producer.clone(), collector.clone());
                tokio::task::spawn_blocking(move || {
                    let mut i = 0u64;
                    loop {
                        let at = start + Duration::from_secs_f64(i as f64 / per_producer_rate);
                        if (deadline.is_none() && i >= per_producer)
                            || deadline.is_some_and(|d| at >= d)
                            || collector.failed()
                        {
                            break;
                        }
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let on_delivery = LatencyCollector::on_delivery(&collector, at);
                        runtime.block_on(
                            send_producer.send_with_callback(make_record(i, at), on_delivery),
                        )?;
                        i += 1;
                        count(i);
                    }
                    anyhow::Ok(i)
                })
                .await??
            } else {
                let mut i = 0u64;
                loop {
                    let now = Instant::now();
                    if (deadline.is_none() && i >= per_producer)
                        || deadline.is_some_and(|d| now >= d)
                        || collector.failed()
                    {
                        break;
                    }
                    let on_delivery = LatencyCollector::on_delivery(&collector, now);
                    producer
                        .send_with_callback(make_record(i, now), on_delivery)
                        .await?;
                    i += 1;
                    count(i);
                }
                i
            };
            // Every callback has run once `flush` returns.
            producer.flush().await?;
            anyhow::Ok((i, collector.histogram()?, producer.metrics().requests))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut records, mut requests) = (0, 0);
    for task in tasks {
        let (n, h, sent) = task.await??;
        records += n;
        requests += sent;
        latency.add(&h)?;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(ProduceOutcome {
        records,
        bytes: records * args.record_size as u64,
        elapsed,
        latency,
        requests,
    })
}

async fn producer_clients(
    args: &LoadArgs,
    child: &Option<ChildBroker>,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..args.producers.max(1) {
        clients.push(connect(&args.broker, child).await?);
    }
    Ok(clients)
}

async fn produce_bench(args: LoadArgs) -> anyhow::Result<()> {
    let child = broker_for(&args.broker).await?;
    let clients = producer_clients(&args, &child).await?;
    ensure_replicated_topic(
        &clients[0],
        &args.topic,
        args.partitions,
        args.replication_factor,
        args.min_insync_replicas,
    )
    .await?;
    let bar = progress(args.duration.is_none().then_some(args.records), "produce");
    let syncs = match &child {
        Some(child) => child.log_syncs().await,
        None => None,
    };
    let cpu = CpuClock::start(&child);
    let outcome = run_producers(&clients, &args, None, &bar).await?;
    let seconds = outcome.elapsed.as_secs_f64();
    let mut result = LoadResult::new(
        "produce",
        (outcome.records, outcome.bytes),
        seconds,
        Some(&outcome.latency),
        outcome.requests,
        &cpu,
    );
    if let Some(child) = &child {
        result.syncs = LogSyncs::during(syncs, child.log_syncs().await);
    }
    report(&result, args.json)
}

// ---- consume ------------------------------------------------------------------------

async fn consume_bench(args: LoadArgs) -> anyhow::Result<()> {
    let child = broker_for(&args.broker).await?;
    let clients = producer_clients(&args, &child).await?;
    ensure_replicated_topic(
        &clients[0],
        &args.topic,
        args.partitions,
        args.replication_factor,
        args.min_insync_replicas,
    )
    .await?;
    let admin = clients[0].admin();
    let mut available = 0;
    for p in 0..args.partitions {
        available += admin.list_offsets(&args.topic, p, Offset::Latest).await?
            - admin.list_offsets(&args.topic, p, Offset::Earliest).await?;
    }
    if (available as u64) < args.records {
        let mut fill = args.clone();
        fill.records = args.records - available as u64;
        fill.duration = None;
        fill.rate = 0.0;
        let bar = progress(Some(fill.records), "fill   ");
        run_producers(&clients, &fill, None, &bar).await?;
    }
    let n_consumers = args.consumers.clamp(1, args.partitions);
    let target = args.records;
    let bar = progress(Some(target), "consume");
    let consumed = Arc::new(AtomicU64::new(0));
    let consumed_bytes = Arc::new(AtomicU64::new(0));
    let cpu = CpuClock::start(&child);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..n_consumers {
        let client = connect(&args.broker, &child).await?;
        let partitions: Vec<u32> = (0..args.partitions)
            .filter(|p| p % n_consumers == c)
            .collect();
        let (topic, consumed, consumed_bytes, bar) = (
            args.topic.clone(),
            consumed.clone(),
            consumed_bytes.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut consumer = client.consumer(ConsumerConfig::default());
            consumer.assign(&topic, &partitions).await?;
            for &p in &partitions {
                consumer.seek(&topic, p, Offset::Earliest).await?;
            }
            while consumed.load(Ordering::Relaxed) < target {
                let records = consumer.poll(Duration::from_millis(200)).await?;
                let bytes: usize = records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
                    .sum();
                consumed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
                bar.inc(records.len() as u64);
                if records.is_empty()
                    && partitions.iter().all(|p| {
                        consumer
                            .position(&topic, *p)
                            .zip(consumer.high_watermark(&topic, *p))
                            .is_some_and(|(a, b)| a >= b)
                    })
                {
                    break; // This consumer's share is exhausted.
                }
            }
            anyhow::Ok(consumer.metrics().fetch_requests)
        }));
    }
    let mut requests = 0;
    for task in tasks {
        requests += task.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let records = consumed.load(Ordering::Relaxed);
    let bytes = consumed_bytes.load(Ordering::Relaxed);
    report(
        &LoadResult::new("consume", (records, bytes), seconds, None, requests, &cpu),
        args.json,
    )
}

// ---- end to end ---------------------------------------------------------------------

async fn e2e_bench(args: LoadArgs) -> anyhow::Result<()> {
    let child = broker_for(&args.broker).await?;
    let clients = producer_clients(&args, &child).await?;
    ensure_replicated_topic(
        &clients[0],
        &args.topic,
        args.partitions,
        args.replication_factor,
        args.min_insync_replicas,
    )
    .await?;
    let epoch = Instant::now();
    let consumer_client = connect(&args.broker, &child).await?;
    let mut consumer = consumer_client.consumer(ConsumerConfig {
        fetch_max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    });
    let partitions = consumer.assign_all(&args.topic).await?;
    for &p in &partitions {
        consumer.seek(&args.topic, p, Offset::Latest).await?;
    }
    let expected = if args.duration.is_some() {
        None
    } else {
        Some(args.records)
    };
    let done = Arc::new(AtomicU64::new(u64::MAX));
    let consumer_task = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut n = 0u64;
            loop {
                let target = done.load(Ordering::Relaxed);
                if n >= target || expected.is_some_and(|e| n >= e) {
                    break;
                }
                for record in consumer.poll(Duration::from_millis(200)).await? {
                    let Some(stamp) = record.headers.iter().find(|h| h.key == "bench-intended-us")
                    else {
                        continue;
                    };
                    let Some(raw) = stamp
                        .value
                        .as_ref()
                        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                    else {
                        continue;
                    };
                    let intended = Duration::from_micros(u64::from_be_bytes(raw));
                    let now = epoch.elapsed();
                    let _ = latency.record(now.saturating_sub(intended).as_micros().max(1) as u64);
                    n += 1;
                }
            }
            anyhow::Ok((n, latency))
        })
    };
    let bar = progress(expected, "e2e    ");
    let cpu = CpuClock::start(&child);
    let outcome = run_producers(&clients, &args, Some(epoch), &bar).await?;
    done.store(outcome.records, Ordering::Relaxed);
    let (n, latency) = tokio::time::timeout(Duration::from_secs(60), consumer_task)
        .await
        .context("consumer did not receive every record within 60 s")???;
    let seconds = outcome.elapsed.as_secs_f64();
    report(
        &LoadResult::new(
            "e2e",
            (n, n * args.record_size as u64),
            seconds,
            Some(&latency),
            outcome.requests,
            &cpu,
        ),
        args.json,
    )
}

// ---- transport ----------------------------------------------------------------------

async fn transport_bench(args: TransportArgs) -> anyhow::Result<()> {
    let identity = crate::transport::identity()?;
    let bar = ProgressBar::new(args.bytes);
    bar.set_style(
        ProgressStyle::with_template("transport {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    // Each endpoint on its own runtime, as the bench's client and its broker are.
    let threads = args
        .threads_per_endpoint
        .map_or((cores() / 2).max(1), usize::from);
    let (server_rt, client_rt) = (worker_runtime(threads)?, worker_runtime(threads)?);
    let outcome = transport_run(&args, &identity, &server_rt, &client_rt, &bar).await;
    // Dropping a runtime may block, which an async context must not.
    server_rt.shutdown_background();
    client_rt.shutdown_background();
    let (received, seconds, cpu) = outcome?;
    bar.finish_and_clear();
    let mib_per_sec = received as f64 / seconds / (1024.0 * 1024.0);
    if args.json {
        let mut result = serde_json::json!({"bench": "transport", "bytes": received, "seconds": seconds, "mib_per_sec": mib_per_sec});
        add_cpu(&mut result, cpu.as_ref())?;
        println!("{result}");
    } else {
        let cpu = cpu.map_or(String::new(), |cpu| format!(", {cpu}"));
        println!(
            "{received} bytes over {} QUIC streams in {seconds:.2} s: {mib_per_sec:.2} MiB/sec{cpu}",
            args.streams
        );
    }
    Ok(())
}

fn worker_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// Connects the endpoints, then times moving the bytes: from the first write to
/// the receiver's count (connection set-up and the wait for the close to finish
/// are not counted, as before the endpoints had runtimes of their own). Returns
/// the bytes received, the seconds and the CPU used meanwhile.
async fn transport_run(
    args: &TransportArgs,
    identity: &meridian_server::tls::Identity,
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, f64, Option<CpuUse>)> {
    let server = {
        let _in = server_rt.enter();
        crate::transport::server(identity)?
    };
    let client = {
        let _in = client_rt.enter();
        crate::transport::client(identity)?
    };
    let addr = server.local_addr()?;
    let receiving = server_rt.spawn(receive_all(server));
    // Connected from the client's runtime, which then drives the connection.
    let endpoint = client.clone();
    let connection = client_rt
        .spawn(async move { anyhow::Ok(endpoint.connect(addr, "localhost")?.await?) })
        .await??;
    let cpu = CpuClock::measuring(vec![std::process::id()], "both endpoints (this process)");
    let start = Instant::now();
    let sending = client_rt.spawn(send_all(
        connection.clone(),
        args.streams,
        args.bytes,
        args.chunk_size,
        bar.clone(),
    ));
    sending.await??;
    // The receiver counts until the connection closes.
    connection.close(0u32.into(), b"done");
    let received = receiving.await??;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu.used(received);
    client_rt
        .spawn(async move { client.wait_idle().await })
        .await?;
    Ok((received, seconds, cpu))
}

/// Accepts one connection and reads every unidirectional stream to its end.
async fn receive_all(server: quinn::Endpoint) -> anyhow::Result<u64> {
    let Some(incoming) = server.accept().await else {
        return Ok(0);
    };
    let connection = incoming.await?;
    let mut readers = Vec::new();
    while let Ok(mut recv) = connection.accept_uni().await {
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, false).await? {
                n += chunk.bytes.len() as u64;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0u64;
    for r in readers {
        total += r.await??;
    }
    Ok(total)
}

/// Sends `bytes` over `streams` unidirectional streams of `connection`, each until
/// the peer has it all.
async fn send_all(
    connection: quinn::Connection,
    streams: u32,
    bytes: u64,
    chunk_size: usize,
    bar: ProgressBar,
) -> anyhow::Result<()> {
    let per_stream = bytes / streams as u64;
    let chunk = Bytes::from(vec![0xA5u8; chunk_size]);
    let mut writers = Vec::new();
    for _ in 0..streams {
        let mut send = connection.open_uni().await?;
        let (chunk, bar) = (chunk.clone(), bar.clone());
        writers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < per_stream {
                let n = (per_stream - sent).min(chunk.len() as u64) as usize;
                send.write_chunk(chunk.slice(..n)).await?;
                sent += n as u64;
                bar.inc(n as u64);
            }
            send.finish()?;
            send.stopped().await?;
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    Ok(())
}

// ---- disk ---------------------------------------------------------------------------

fn disk_bench(args: DiskArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let temp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::Builder::new()
            .prefix("meridian-disk-")
            .tempdir_in(".")?,
    };
    let mut file = std::fs::File::create(temp.path().join("append.log"))?;
    let chunk = vec![0x5Au8; args.write_bytes.max(1)];
    let mut written = 0u64;
    let mut syncs = 0u64;
    let cpu = CpuClock::measuring(vec![std::process::id()], "the bench process");
    let start = Instant::now();
    while written < args.total_bytes {
        file.write_all(&chunk)?;
        if !args.no_sync {
            file.sync_data()?;
            syncs += 1;
        }
        written += chunk.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu.used(written);
    let mib_per_sec = written as f64 / seconds / (1024.0 * 1024.0);
    if args.json {
        let mut summary = serde_json::json!({"bench": "disk", "bytes": written, "fsyncs": syncs, "seconds": seconds, "mib_per_sec": mib_per_sec, "write_bytes": chunk.len(), "sync": !args.no_sync});
        add_cpu(&mut summary, cpu.as_ref())?;
        println!("{summary}");
    } else {
        let how = if args.no_sync {
            format!("in writes of {} bytes, without fdatasync", chunk.len())
        } else {
            format!(
                "with fdatasync every {} bytes ({syncs} fsyncs)",
                chunk.len()
            )
        };
        let cpu = cpu.map(|cpu| format!(". {cpu}")).unwrap_or_default();
        println!("{written} bytes appended {how} in {seconds:.2} s: {mib_per_sec:.2} MiB/sec{cpu}");
    }
    Ok(())
}

// ---- idle memory --------------------------------------------------------------------

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?)
}

async fn idle_bench(args: IdleArgs) -> anyhow::Result<()> {
    let child = ChildBroker::start(None, &[])?;
    let client = Client::connect(ClientConfig::new(
        child.addr.clone(),
        Trust::parse_fingerprint(&child.fingerprint)?,
    ))
    .await?;
    let before = rss_kib(child.pid())?;
    client
        .admin()
        .create_topic(NewTopic::new("idle", args.partitions))
        .await?;
    // One record in each partition, so every log is open with a segment and indexes.
    let producer = client.producer(ProducerConfig::default());
    for p in 0..args.partitions {
        producer
            .send(ProducerRecord::new("idle", Bytes::from_static(b"x")).partition(p))
            .await?;
    }
    producer.flush().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.pid())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bench": "idle", "partitions": args.partitions, "rss_mib_before": before as f64 / 1024.0, "rss_mib": after as f64 / 1024.0})
        );
    } else {
        println!(
            "broker RSS with {} idle partitions: {:.1} MiB (before creating them: {:.1} MiB)",
            args.partitions,
            after as f64 / 1024.0,
            before as f64 / 1024.0
        );
    }
    Ok(())
}

// ---- recovery -----------------------------------------------------------------------

async fn recovery_bench(args: RecoveryArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("meridian-recovery-")
        .tempdir_in(".")?;
    let data_dir = temp.path().to_owned();
    let mut child = ChildBroker::start(Some(data_dir.clone()), &[])?;
    let client = Client::connect(ClientConfig::new(
        child.addr.clone(),
        Trust::parse_fingerprint(&child.fingerprint)?,
    ))
    .await?;
    client
        .admin()
        .create_topic(NewTopic::new("recovery", args.partitions))
        .await?;
    let record_size = 64 * 1024;
    let n_records = (args.log_gib * (1u64 << 30) as f64 / record_size as f64) as u64;
    let load = LoadArgs {
        topic: "recovery".into(),
        partitions: args.partitions,
        replication_factor: 1,
        min_insync_replicas: None,
        record_size,
        records: n_records,
        duration: None,
        producers: 1,
        consumers: 1,
        batch_size: 1 << 20,
        linger_ms: 5,
        buffer_memory: ProducerConfig::default().buffer_memory,
        compression: Compression::None,
        acks: Acks::Leader,
        rate: 0.0,
        randomness: 1.0,
        json: false,
        broker: BrokerArgs {
            broker: None,
            fingerprint: None,
            ca: None,
            identity: Default::default(),
            broker_set: vec![],
            broker_data_dir: None,
            region: None,
            client_threads: None,
        },
    };
    let bar = progress(Some(n_records), "fill   ");
    let filled = run_producers(std::slice::from_ref(&client), &load, None, &bar).await?;
    client.close();
    child.kill9();
    let started = Instant::now();
    let restarted = ChildBroker::spawn(data_dir, &[], None)?;
    let client = Client::connect(ClientConfig::new(
        restarted.addr.clone(),
        Trust::parse_fingerprint(&restarted.fingerprint)?,
    ))
    .await?;
    let admin = client.admin();
    let mut stored = admin.list_offsets("recovery", 0, Offset::Latest).await?;
    let seconds = started.elapsed().as_secs_f64();
    for p in 1..args.partitions {
        stored += admin.list_offsets("recovery", p, Offset::Latest).await?;
    }
    let gib = filled.bytes as f64 / (1u64 << 30) as f64;
    if (stored as u64) < filled.records {
        bail!(
            "after restart only {stored} of {} acknowledged records are in the log",
            filled.records
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bench": "recovery", "log_gib": gib, "restart_seconds": seconds, "records_acknowledged": filled.records, "records_after_restart": stored})
        );
    } else {
        println!(
            "restart after kill -9 with {gib:.2} GiB of log: serving again in {seconds:.3} s ({stored} records in the log, {} acknowledged before the kill)",
            filled.records
        );
    }
    drop(restarted);
    Ok(())
}

// ---- compaction ---------------------------------------------------------------------

fn compaction_bench(args: CompactionArgs) -> anyhow::Result<()> {
    use meridian_log::{validate_batches, CleanupPolicy, LogConfig, PartitionLog};
    use meridian_wire::batch::{encode_batch, NewRecord, ProducerIdentity};
    if args.keys == 0 || args.records_per_batch == 0 {
        bail!("--keys and --records-per-batch must be at least 1");
    }
    let temp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::Builder::new()
            .prefix("meridian-compaction-")
            .tempdir_in(".")?,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::COMPACT,
        max_message_bytes: u32::MAX,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(temp.path(), config, now_ms)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let values = payloads(args.record_size, 1.0);
    let bar = progress(Some(args.bytes), "fill   ");
    let mut i = 0usize;
    while log.size_bytes() < args.bytes {
        let records: Vec<NewRecord> = (0..args.records_per_batch)
            .map(|_| {
                i += 1;
                NewRecord {
                    timestamp: now_ms,
                    key: Some(Bytes::from(format!(
                        "key-{:08}",
                        rng.gen_range(0..args.keys)
                    ))),
                    value: Some(values[i % values.len()].clone()),
                    headers: vec![],
                }
            })
            .collect();
        let batch = encode_batch(&records, args.compression, ProducerIdentity::NONE)?;
        let validated = validate_batches(&batch, u32::MAX)?;
        log.append(validated, 0, now_ms)?;
        bar.set_position(log.size_bytes());
    }
    log.flush()?;
    bar.finish_and_clear();
    let filled_bytes = log.size_bytes();
    let started = Instant::now();
    let stats = log
        .clean(now_ms, &mut |_| {})?
        .context("nothing to clean: --bytes must exceed --segment-bytes")?;
    let seconds = started.elapsed().as_secs_f64();
    let mb_per_sec = stats.bytes_read as f64 / seconds / 1e6;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"bench": "compaction", "filled_bytes": filled_bytes, "input_bytes": stats.bytes_read, "output_bytes": stats.bytes_written, "records_read": stats.records_read, "records_kept": stats.records_kept, "keys": args.keys, "record_size": args.record_size, "compression": args.compression.name(), "seconds": seconds, "mb_per_sec": mb_per_sec})
        );
    } else {
        println!(
            "cleaned {} bytes of sealed segments ({} records, {} distinct keys, {} compression) into {} bytes ({} records) in {seconds:.2} s: {mb_per_sec:.1} MB/s of input on one core",
            stats.bytes_read,
            stats.records_read,
            args.keys,
            args.compression.name(),
            stats.bytes_written,
            stats.records_kept,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_that_starts_one_broker_splits_the_cores_with_it() {
        let args = |broker: Option<&str>, region: Option<&str>, client: Option<u16>| BrokerArgs {
            broker: broker.map(String::from),
            fingerprint: None,
            ca: None,
            identity: Default::default(),
            broker_set: vec![],
            broker_data_dir: None,
            region: region.map(PathBuf::from),
            client_threads: client,
        };
        assert_eq!(args(None, None, None).threads(2), (1, Some(1)));
        assert_eq!(args(None, None, None).threads(8), (4, Some(4)));
        assert_eq!(args(None, None, None).threads(1), (1, Some(1)));
        assert_eq!(args(None, None, Some(3)).threads(8), (3, Some(5)));
        assert_eq!(args(None, None, Some(2)).threads(2), (2, Some(1)));
        // A running broker or a region: the bench takes every core.
        assert_eq!(args(Some("h:1"), None, None).threads(8), (8, None));
        assert_eq!(args(None, Some("r.toml"), None).threads(8), (8, None));
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime_whatever_the_command_name() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    123 45 0 0 20 0 3 0 100 2000000 500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(168));
        assert_eq!(cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn steal_is_the_eighth_value_of_the_all_cores_line() {
        let stat = "cpu  543052 0 59601 1739755 6053 0 5418 24218 0 0\n\
                    cpu0 271000 0 29000 869000 3000 0 2700 12100 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(steal_ticks(stat), Some(24218));
        // Kernels before 2.6.11 had no steal column; per-core lines are not the total.
        assert_eq!(steal_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(steal_ticks("cpu0 1 2 3 4 5 6 7 8 0 0\n"), None);
        assert_eq!(steal_ticks(""), None);
        if std::path::Path::new("/proc/stat").exists() {
            assert!(machine_stolen().is_some(), "/proc/stat has a steal column");
        }
    }

    #[test]
    fn this_process_cpu_grows_with_work() {
        let pid = std::process::id();
        let before = process_cpu(pid).expect("/proc/<pid>/stat of this process");
        // Work until the count moves by a few ticks; broken parsing never does.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while process_cpu(pid).unwrap() < before + Duration::from_millis(50) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(Instant::now() < deadline, "CPU time did not grow");
        }
        assert!(process_cpu(u32::MAX).is_none());
    }
}
