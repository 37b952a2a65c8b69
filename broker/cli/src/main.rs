//! `meridian`: the broker (`broker`, `dev`) and its command-line client (`topic`,
//! `produce`, `consume`, `group`, `bench`) in one binary.

mod acl_cmds;
mod bench;
mod bench_failover;
mod bench_ratio;
mod cert_cmds;
mod client_cmds;
mod cluster_cmds;
mod dump_log;
mod group_bench;
mod group_cmds;
mod json_bytes;
mod log_fields;
mod otel;
mod partition_cmds;
mod pem;
mod plugin_cmds;
mod sasl_cmds;
mod table;
mod transport;
mod up;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian_client::{Client, ClientConfig, ClientIdentity, Trust};
use meridian_server::{Broker, BrokerConfig};

/// The Kafka listener decodes requests with kafka-protocol, which sets aside room
/// for an array's elements by the count on the wire before reading one: without
/// this allocator a frame of a few dozen bytes claiming billions of elements would
/// abort the broker (see `meridian_kafka::alloc`).
#[global_allocator]
static ALLOCATOR: meridian_kafka::alloc::LazyLargeAllocator =
    meridian_kafka::alloc::LazyLargeAllocator;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian event-streaming broker and CLI",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node broker for development: data in ./meridian-data, a
    /// self-signed certificate generated on first start, listening on 127.0.0.1:9092.
    Dev(ServeArgs),
    /// Run a broker from a config file, environment variables and flags.
    Broker(ServeArgs),
    /// Run every broker of a region file (e.g. regions/local-3.toml) on this machine
    /// as child processes; Ctrl-C stops them all.
    Up(up::UpArgs),
    /// Create, list, describe, alter, truncate and delete topics; attach and detach plugins.
    #[command(subcommand)]
    Topic(client_cmds::TopicCommand),
    /// Produce lines from stdin as records.
    Produce(client_cmds::ProduceArgs),
    /// Consume records and print them.
    Consume(client_cmds::ConsumeArgs),
    /// Where partitions' replicas live, and moving them to other brokers.
    #[command(subcommand)]
    Partition(partition_cmds::PartitionCommand),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group_cmds::GroupCommand),
    /// The cluster's brokers and its metadata quorum.
    #[command(subcommand)]
    Cluster(cluster_cmds::ClusterCommand),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// WebAssembly plugins: scaffold, build and test locally, deploy, list, describe, remove.
    #[command(subcommand)]
    Plugin(plugin_cmds::PluginCommand),
    /// Certificates: a CA, and certificates it signs for clients and brokers (mutual TLS).
    #[command(subcommand)]
    Cert(cert_cmds::CertCommand),
    /// Authorization rules (`acl_file`): check a file, and what it decides.
    #[command(subcommand)]
    Acl(acl_cmds::AclCommand),
    /// SASL users of the Kafka listener (`kafka_sasl_users_file`): add, remove, list.
    #[command(subcommand)]
    Sasl(sasl_cmds::SaslCommand),
    /// Print what a partition's files hold, read from disk (no broker needed):
    /// segments batch by batch (offsets, producer ids, epochs and sequences,
    /// compression, CRC), their indexes, snapshots of idempotent producers.
    DumpLog(dump_log::DumpLogArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML config file (keys as in README's configuration table).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// Directory for logs, topic metadata and the TLS identity.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`), e.g.
    /// `127.0.0.1:9644`; the `metrics_listen` key.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Serve Kafka clients on this TCP address, e.g. `127.0.0.1:9092` (TCP, beside
    /// the QUIC endpoint's UDP port); the `kafka_listen` key.
    #[arg(long, value_name = "ADDR")]
    kafka_listen: Option<String>,
    /// Any config key, e.g. `--set flush=always --set topic_defaults.retention_ms=3600000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// How CLI commands reach and trust the broker.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Brokers to bootstrap from: `host:port`, or several separated by commas (the
    /// first that answers is used; requests then go to each partition's leader).
    /// Also `MERIDIAN_BOOTSTRAP`, or the older `--broker` / `MERIDIAN_BROKER`.
    #[arg(
        long = "bootstrap",
        visible_alias = "broker",
        env = "MERIDIAN_BOOTSTRAP",
        default_value_t = default_bootstrap(),
        value_name = "HOST:PORT[,HOST:PORT…]"
    )]
    pub broker: String,
    /// Trust the broker certificate in this PEM file.
    #[arg(long, env = "MERIDIAN_CA")]
    pub ca: Option<PathBuf>,
    /// Pin the broker certificate by fingerprint (`sha256:…`, printed by the broker at start).
    #[arg(long, env = "MERIDIAN_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// TLS server name to verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The client certificate to present to brokers that require one (`tls_client_ca`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct IdentityArgs {
    /// Present this client certificate (PEM, e.g. from `meridian cert create`), for
    /// brokers that require one; with --key.
    #[arg(long, env = "MERIDIAN_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); with --cert.
    #[arg(long, env = "MERIDIAN_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl IdentityArgs {
    /// The identity to set on a `ClientConfig`, if --cert and --key name one.
    pub fn load(&self) -> anyhow::Result<Option<ClientIdentity>> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity::from_files(cert, key)?)),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--cert and --key go together"),
        }
    }
}

/// The certificates `meridian dev` (`root/tls`) and `meridian up` (`root/REGION/tls`,
/// with the region files' default data dirs) generated under `root`: the dev one
/// first, then every region's, sorted.
fn local_certificates(root: &Path) -> Vec<PathBuf> {
    let mut regions: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("tls/cert.pem"))
        .filter(|cert| cert.exists())
        .collect();
    regions.sort();
    let dev = root.join("tls/cert.pem");
    if dev.exists() {
        regions.insert(0, dev);
    }
    regions
}

/// `MERIDIAN_BROKER` (the variable's name before clusters), else the dev broker.
fn default_bootstrap() -> String {
    std::env::var("MERIDIAN_BROKER")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_string())
}

impl ConnectArgs {
    /// See [`trust`].
    pub fn trust(&self) -> anyhow::Result<Trust> {
        trust(self.fingerprint.as_deref(), self.ca.as_deref())
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(&self.broker, self.trust()?);
        config.server_name = self.server_name.clone();
        config.identity = self.identity.load()?;
        Client::connect(config)
            .await
            .with_context(|| format!("connecting to {}", self.broker))
    }
}

/// Fingerprint, else CA file, else the certificate `meridian dev` or `meridian up`
/// wrote under ./meridian-data (so the tours need no flags). Every command that
/// connects to running brokers trusts them this way.
pub(crate) fn trust(fingerprint: Option<&str>, ca: Option<&Path>) -> anyhow::Result<Trust> {
    if let Some(fp) = fingerprint {
        return Trust::parse_fingerprint(fp).map_err(|e| anyhow::anyhow!("--fingerprint: {e}"));
    }
    if let Some(ca) = ca {
        return Ok(Trust::CaFile(ca.to_path_buf()));
    }
    match local_certificates(Path::new("meridian-data")).as_slice() {
        [] => anyhow::bail!(
            "don't know how to trust the broker: pass --fingerprint (printed by the broker at start) or --ca CERT.pem, \
             or run from the directory where `meridian dev` or `meridian up` keeps meridian-data/"
        ),
        [one] => Ok(Trust::CaFile(one.clone())),
        // The dev broker and regions started here: trust each of them, so
        // whichever `--bootstrap` names is reached without a flag.
        several => {
            let mut pem = Vec::new();
            for cert in several {
                pem.extend(std::fs::read(cert).with_context(|| cert.display().to_string())?);
                pem.push(b'\n');
            }
            Ok(Trust::CaPem(pem))
        }
    }
}

/// Appended to the log filter unless `RUST_LOG` names openraft. Its replication logs
/// every failed RPC to an unreachable voter (about five lines a second for each, on
/// the Raft leader), and its vote handling warns about routine races of an
/// election. The broker logs a peer lost and regained once each instead
/// (`cluster/peers.rs`), and openraft's errors outside replication still show, but
/// for those [`QuietVotes`] drops.
const QUIET_OPENRAFT: &str = "openraft=error,openraft::replication=off";

/// The log filter: `RUST_LOG` if set (plus [`QUIET_OPENRAFT`]), else info for
/// Meridian and warnings from the transport.
fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(env) if names_openraft(Some(env)) => env.to_string(),
        Some(env) if !env.is_empty() => format!("{env},{QUIET_OPENRAFT}"),
        _ => format!("info,quinn=warn,quinn_proto=warn,rustls=warn,{QUIET_OPENRAFT}"),
    }
}

/// Logs to stderr, and spans to an OpenTelemetry collector when `tracer` is given
/// (see [`otel`]).
fn init_tracing(tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let rust_log = std::env::var("RUST_LOG").ok();
    let colors = log_colors(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
        std::env::var("CLICOLOR_FORCE").ok().as_deref(),
    );
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colors)
                .fmt_fields(log_fields::EscapedFields)
                .with_filter(log_filters(rust_log.as_deref())),
        )
        .with(tracer.map(|tracer| {
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::EnvFilter::new(otel::EXPORT_FILTER))
        }))
        .init();
}

/// Whether log lines carry ANSI colour codes: on a terminal, unless `NO_COLOR` is
/// set (no-color.org); anywhere when `CLICOLOR_FORCE` is set to anything but `0`
/// (which `meridian up` sets for its brokers when it writes to a terminal itself).
/// Logs going to a file, a pipe or a service manager's journal get none.
pub(crate) fn log_colors(
    stderr_is_terminal: bool,
    no_color: Option<&str>,
    force: Option<&str>,
) -> bool {
    if force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Whether `RUST_LOG` asks for openraft's logs, which then go unfiltered.
fn names_openraft(rust_log: Option<&str>) -> bool {
    rust_log.is_some_and(|env| env.contains("openraft"))
}

/// `RUST_LOG` (see [`log_filter`]) and [`QuietVotes`], as one filter. It keeps the
/// level hint of `RUST_LOG` (info by default): with none, every span and event of
/// quinn's packet handling would be checked at run time, which took 9 % of a
/// produce bench's CPU samples.
fn log_filters(
    rust_log: Option<&str>,
) -> impl tracing_subscriber::layer::Filter<tracing_subscriber::Registry> {
    use tracing_subscriber::filter::FilterExt;
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(rust_log)).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG ignored: {e}");
        tracing_subscriber::EnvFilter::new(log_filter(None))
    });
    filter.and(QuietVotes {
        on: !names_openraft(rust_log),
    })
}

/// Drops openraft's error lines for requests to a voter that failed as such
/// requests do while it is down, unless `RUST_LOG` names openraft: each vote request
/// that failed or timed out (`while requesting vote`, and `timeout` of a `Vote`), and
/// each voter that did not answer a new controller confirming its leadership. A voter that
/// is down, or not started yet (every `meridian up` starts its brokers one after
/// another), fails every vote request of every election, and the broker already
/// logs a peer lost and regained once each (`cluster/peers.rs`). openraft's other
/// errors still show.
struct QuietVotes {
    on: bool,
}

impl QuietVotes {
    fn is_failed_vote(event: &tracing::Event<'_>) -> bool {
        #[derive(Default)]
        struct Fields {
            message: String,
            error: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "error" => self.error = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        if event.metadata().target() != "openraft::core::raft_core" {
            return false;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        match fields.message.as_str() {
            "while requesting vote" => true,
            "timeout" => fields.error.contains("when Vote"),
            // Per voter, whether the majority confirmed or not; the controller says
            // when it could not (`cluster/controller.rs`).
            "timeout while confirming leadership for read request" => true,
            _ => false,
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for QuietVotes {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    /// Only openraft's core events are looked at one by one; every other callsite
    /// keeps whatever interest the level filter gives it.
    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.on && meta.is_event() && meta.target() == "openraft::core::raft_core" {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    /// No level of its own: the level filter's hint stands.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !(self.on && Self::is_failed_vote(event))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Topic(_)
            | Command::Partition(_)
            | Command::Group(_)
            | Command::Cluster(_)
            | Command::Plugin(_)
    ) {
        end_quietly_on_closed_pipe();
    }
    // A broker's runtime is sized by its config, so the config is read first (it
    // logs nothing: errors go to stderr by `fail`).
    let config = match &cli.command {
        Command::Dev(args) | Command::Broker(args) => match serve_config(args) {
            Ok(config) => Some(config),
            Err(e) => return fail(e),
        },
        _ => None,
    };
    // Brokers export their spans when the environment names an OTLP endpoint.
    let (exporting, tracer) = match (otel::endpoint(|k| std::env::var(k).ok()), &config) {
        (Some(endpoint), Some(config)) => match otel::Exporting::start(config, endpoint) {
            Ok((exporting, tracer)) => (Some(exporting), Some(tracer)),
            Err(e) => return fail(e),
        },
        _ => (None, None),
    };
    init_tracing(tracer);
    let cores = bench::cores();
    let workers = match (&cli.command, &config) {
        (_, Some(config)) => config.worker_threads_for(cores),
        (Command::Bench(cmd), None) => bench::client_threads(cmd, cores),
        _ => cores,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    if let Some(exporting) = exporting {
        exporting.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // What read the output (`| head`) has had enough: not a failure.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {e:#}");
    std::process::ExitCode::FAILURE
}

/// Admin commands print their answer and end. When what reads it goes away
/// (`meridian topic describe t | head -3`), they end too, quietly, as Unix tools do,
/// instead of panicking in `println!` (Rust ignores SIGPIPE, which turns such a
/// write into an error). Not for the broker, `up` and `bench` (they stop their
/// brokers on the way out), nor for `produce`/`consume` (a closed pipe is a write
/// error there, after which they finish: see `is_broken_pipe`; a group member
/// commits what it printed before and leaves; a consumer waiting for records asks
/// `stdout_reader_gone` between polls).
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists; it only
    // sets one signal's disposition back to the default.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Whether the error is a write to a pipe whose reader has gone.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Whether what reads stdout has gone: a pipe without a reader (`| head` has ended)
/// or a hung-up terminal. A consumer that waits for records writes nothing, so a
/// write error would tell it only when the next record comes, perhaps never; it asks
/// this between polls instead, as GNU `tail -f` does. A poll(2) of stdout that asks
/// for no events and does not wait: the kernel reports POLLERR and POLLHUP anyway.
pub(crate) fn stdout_reader_gone() -> bool {
    #[cfg(unix)]
    {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use std::os::fd::AsFd;
        let stdout = std::io::stdout();
        let fd = stdout.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::empty())];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
            && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
    }
    #[cfg(not(unix))]
    false
}

/// Runs `command`; `config` is the broker config `main` read for `dev` and `broker`.
async fn run(command: Command, config: Option<BrokerConfig>) -> anyhow::Result<()> {
    let serving = |args: &ServeArgs| config.map_or_else(|| serve_config(args), Ok);
    match command {
        Command::Dev(args) => serve(serving(&args)?, None).await,
        Command::Broker(args) => serve(serving(&args)?, Some(args)).await,
        Command::Up(args) => up::run(args).await,
        Command::Topic(cmd) => client_cmds::topic(cmd).await,
        Command::Produce(args) => client_cmds::produce(args).await,
        Command::Consume(args) => client_cmds::consume(args).await,
        Command::Group(cmd) => group_cmds::group(cmd).await,
        Command::Partition(cmd) => partition_cmds::run(cmd).await,
        Command::Cluster(cmd) => cluster_cmds::run(cmd).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Plugin(cmd) => plugin_cmds::run(cmd).await,
        Command::Cert(cmd) => cert_cmds::run(cmd),
        Command::Acl(cmd) => acl_cmds::run(cmd),
        Command::Sasl(cmd) => sasl_cmds::run(cmd),
        Command::DumpLog(args) => dump_log::run(args),
    }
}

/// The config of `meridian dev`/`broker`: file, environment, then flags.
fn serve_config(args: &ServeArgs) -> anyhow::Result<BrokerConfig> {
    let mut overrides = Vec::new();
    if let Some(listen) = &args.listen {
        overrides.push(format!("listen={listen}"));
    }
    if let Some(dir) = &args.data_dir {
        overrides.push(format!("data_dir={}", dir.display()));
    }
    if let Some(addr) = &args.metrics_listen {
        overrides.push(format!("metrics_listen={addr}"));
    }
    if let Some(addr) = &args.kafka_listen {
        overrides.push(format!("kafka_listen={addr}"));
    }
    overrides.extend(args.overrides.iter().cloned());
    Ok(BrokerConfig::load(
        args.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

/// Runs a broker; `broker_args` are `meridian broker`'s arguments (`None`: `meridian
/// dev`), from which SIGHUP reads the configuration again.
async fn serve(config: BrokerConfig, broker_args: Option<ServeArgs>) -> anyhow::Result<()> {
    let dev = broker_args.is_none();
    let broker = Broker::start(config.clone()).await?;
    let addr = broker.local_addr();
    println!(
        "meridian broker {} listening on {addr} (QUIC, ALPN meridian/1)",
        config.broker_id
    );
    println!("  data dir:    {}", config.data_dir.display());
    println!(
        "  workers:     {} async worker threads (worker_threads)",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    println!(
        "  certificate: {}{}",
        broker.cert_path().display(),
        if broker.generated_cert() {
            " (generated, self-signed)"
        } else {
            ""
        }
    );
    println!("  fingerprint: {}", broker.fingerprint());
    if let Some(metrics) = broker.metrics_addr() {
        println!("  metrics:     http://{metrics}/metrics");
    }
    if let Some(kafka) = broker.kafka_addr() {
        let sasl = config.kafka_sasl_users_file.is_some();
        let over = match (config.kafka_tls, &config.tls_client_ca, sasl) {
            (false, _, false) => "TCP".to_string(),
            (true, None, false) => "TLS (security.protocol=SSL)".to_string(),
            (true, Some(_), false) => {
                "TLS with client certificates (security.protocol=SSL)".to_string()
            }
            (tls, _, true) => {
                let mechanisms = config.sasl_mechanisms().unwrap_or_default();
                let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
                let (over, protocol) = if tls {
                    ("TLS", "SASL_SSL")
                } else {
                    ("TCP", "SASL_PLAINTEXT")
                };
                format!(
                    "{over} with SASL {} (security.protocol={protocol})",
                    names.join(", ")
                )
            }
        };
        println!("  kafka:       {kafka} (Kafka protocol over {over}, for Kafka clients)");
    }
    if dev {
        println!();
        println!("Try, from this directory:");
        for line in dev_tour(addr, broker.cert_path(), config.tls_client_ca.as_deref()) {
            println!("  {line}");
        }
        println!(
            "From elsewhere: --bootstrap {} --fingerprint {}{}",
            reachable(addr),
            broker.fingerprint(),
            match config.tls_client_ca.as_deref() {
                Some(ca) => {
                    let (cert, key) = cert_cmds::client_certificate_beside(ca, broker.cert_path());
                    format!(" --cert {cert} --key {key}")
                }
                None => String::new(),
            }
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    // A daemon's convention. `meridian dev` keeps SIGHUP's default, so closing its
    // terminal still stops it.
    #[cfg(unix)]
    if let Some(args) = broker_args {
        tokio::spawn(reload_on_sighup(broker.reloader(), args));
    }
    broker.serve(shutdown_signal()).await
}

/// The commands `meridian dev` suggests, preceded by the `export` that makes them
/// reach this broker from the current directory when the CLI's defaults would not:
/// a listener other than 127.0.0.1:9092, a certificate outside ./meridian-data, a
/// broker that requires client certificates.
fn dev_tour(addr: SocketAddr, cert: &Path, client_ca: Option<&Path>) -> Vec<String> {
    let mut env = Vec::new();
    let default_port = addr.port() == 9092
        && matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified());
    if !default_port {
        env.push(format!("MERIDIAN_BOOTSTRAP={}", reachable(addr)));
    }
    let found_here = local_certificates(Path::new("meridian-data"))
        .iter()
        .filter_map(|found| found.canonicalize().ok())
        .any(|found| cert.canonicalize().is_ok_and(|cert| cert == found));
    if !found_here {
        let cert = cert.canonicalize().unwrap_or_else(|_| cert.to_path_buf());
        env.push(format!("MERIDIAN_CA={}", cert.display()));
    }
    let mut lines = Vec::new();
    if let Some(ca) = client_ca {
        let (cert, key) = cert_cmds::client_certificate_beside(ca, cert);
        lines.push(format!(
            "# tls_client_ca: present a certificate signed by {} (`meridian cert create NAME --dir {}` makes one)",
            ca.display(),
            cert_cmds::ca_dir(ca).display()
        ));
        env.push(format!("MERIDIAN_CERT={cert} MERIDIAN_KEY={key}"));
    }
    if !env.is_empty() {
        lines.push(format!("export {}", env.join(" ")));
    }
    lines.extend(
        [
            "meridian topic create demo --partitions 3",
            "seq 1 5 | meridian produce demo -v",
            "meridian consume demo --from earliest --format json",
        ]
        .map(String::from),
    );
    lines
}

/// An address a client on this machine can connect to: `addr`, or loopback for a
/// listener on every interface.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `kill -HUP` of `meridian broker` re-reads `tls_cert`, `tls_key`, `tls_client_ca`,
/// `tls_client_crl`, `kafka_sasl_users_file`, `acl_file` and, from the
/// configuration read again, the client quotas
/// ([`meridian_server::Reloader`]); a failed reload keeps what was loaded.
#[cfg(unix)]
async fn reload_on_sighup(reloader: meridian_server::Reloader, args: ServeArgs) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files and acl_file are read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match reloader.reload_tls() {
            Ok(fingerprint) => tracing::info!(
                %fingerprint,
                "SIGHUP: reloaded the TLS certificate, key, tls_client_ca and tls_client_crl"
            ),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "SIGHUP: TLS reload failed; keeping the certificate, CAs and revocation lists loaded before"
            ),
        }
        match reloader.reload_sasl_users() {
            Ok(Some(users)) => tracing::info!(users, "SIGHUP: reloaded kafka_sasl_users_file"),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "SIGHUP: kafka_sasl_users_file reload failed; keeping the users loaded before"
            ),
        }
        match reloader.reload_acl() {
            Ok(Some(rules)) => tracing::info!(rules, "SIGHUP: reloaded acl_file"),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "SIGHUP: acl_file reload failed; keeping the rules loaded before"
            ),
        }
        match serve_config(&args) {
            Ok(config) => {
                reloader.reload_quotas(&config);
                tracing::info!(
                    producer_byte_rate = config.producer_byte_rate,
                    consumer_byte_rate = config.consumer_byte_rate,
                    overrides = config.client_quotas.len(),
                    "SIGHUP: reloaded the client quotas"
                );
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "SIGHUP: reading the configuration failed; keeping the client quotas"
            ),
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_tour_sets_only_what_the_defaults_miss() {
        let cert = Path::new("/nonexistent/tls/cert.pem");
        let tour = |addr: &str| dev_tour(addr.parse().unwrap(), cert, None);
        // Every interface on the default port: 127.0.0.1:9092 reaches it.
        assert_eq!(
            tour("0.0.0.0:9092")[0],
            "export MERIDIAN_CA=/nonexistent/tls/cert.pem"
        );
        assert_eq!(
            tour("0.0.0.0:9300")[0],
            "export MERIDIAN_BOOTSTRAP=127.0.0.1:9300 MERIDIAN_CA=/nonexistent/tls/cert.pem"
        );
        assert_eq!(
            tour("[::]:9092")[0],
            "export MERIDIAN_BOOTSTRAP=[::1]:9092 MERIDIAN_CA=/nonexistent/tls/cert.pem"
        );
        assert_eq!(tour("127.0.0.1:9092").len(), 4);
    }

    #[test]
    fn the_cli_finds_the_dev_and_region_certificates() {
        let root = tempfile::tempdir().unwrap();
        let cert = |dir: &str| {
            let path = root.path().join(dir).join("tls/cert.pem");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "pem").unwrap();
            path
        };
        assert!(local_certificates(root.path()).is_empty());
        assert!(local_certificates(&root.path().join("missing")).is_empty());
        let east = cert("east");
        std::fs::create_dir_all(root.path().join("broker-1")).unwrap();
        assert_eq!(local_certificates(root.path()), std::slice::from_ref(&east));
        let west = cert("west");
        assert_eq!(
            local_certificates(root.path()),
            [east.clone(), west.clone()]
        );
        let dev = cert("");
        assert_eq!(local_certificates(root.path()), [dev, east, west]);
    }

    #[test]
    fn logs_are_coloured_on_a_terminal_only_unless_told() {
        assert!(log_colors(true, None, None));
        assert!(!log_colors(false, None, None), "a file or a pipe");
        assert!(!log_colors(true, Some("1"), None), "NO_COLOR");
        assert!(
            log_colors(true, Some(""), None),
            "an empty NO_COLOR is unset"
        );
        assert!(log_colors(false, None, Some("1")), "CLICOLOR_FORCE");
        assert!(log_colors(false, Some("1"), Some("1")));
        assert!(!log_colors(false, None, Some("0")));
    }

    #[test]
    fn failed_vote_requests_are_dropped_and_other_errors_kept() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        struct Count(Arc<AtomicUsize>);
        impl<S: tracing::Subscriber> Layer<S> for Count {
            fn on_event(
                &self,
                _: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let shown = |on: bool| {
            let count = Arc::new(AtomicUsize::new(0));
            let subscriber = tracing_subscriber::registry()
                .with(Count(count.clone()).with_filter(QuietVotes { on }));
            tracing::subscriber::with_default(subscriber, || {
                let unreachable = "Unreachable node: broker 2 did not answer in time";
                tracing::error!(target: "openraft::core::raft_core", error = %unreachable, "while requesting vote");
                let vote_timeout = "timeout after 1s when Vote 1->2";
                tracing::error!(target: "openraft::core::raft_core", error = %vote_timeout, "timeout");
                let confirming = "timeout while confirming leadership for read request";
                tracing::error!(target: "openraft::core::raft_core", error = %unreachable, "{confirming}");
                let late = "timeout after 1s when AppendEntries 1->2";
                tracing::error!(target: "openraft::core::raft_core", error = %late, "{confirming}");
                // Kept: a timeout of another RPC, another error, the same words elsewhere.
                let append_timeout = "timeout after 1s when AppendEntries 1->2";
                tracing::error!(target: "openraft::core::raft_core", error = %append_timeout, "timeout");
                tracing::error!(target: "openraft::core::raft_core", "storage error");
                tracing::error!(target: "meridian_server", "while requesting vote");
            });
            count.load(Ordering::SeqCst)
        };
        assert_eq!(shown(true), 3);
        assert_eq!(shown(false), 7, "RUST_LOG naming openraft shows them all");
    }

    #[test]
    fn the_log_filters_keep_the_level_hint_of_rust_log() {
        use tracing::level_filters::LevelFilter;
        use tracing_subscriber::layer::Filter;
        let hint = |rust_log| {
            Filter::<tracing_subscriber::Registry>::max_level_hint(&log_filters(rust_log))
        };
        assert_eq!(hint(None), Some(LevelFilter::INFO));
        assert_eq!(hint(Some("warn")), Some(LevelFilter::WARN));
        assert_eq!(
            hint(Some("meridian_server=debug")),
            Some(LevelFilter::DEBUG)
        );
    }

    #[test]
    fn openraft_is_quiet_unless_rust_log_names_it() {
        assert!(log_filter(None).ends_with(QUIET_OPENRAFT));
        assert_eq!(log_filter(Some("  ")), log_filter(None));
        assert_eq!(log_filter(Some("debug")), format!("debug,{QUIET_OPENRAFT}"));
        assert_eq!(
            log_filter(Some("warn,openraft=debug")),
            "warn,openraft=debug"
        );
        for rust_log in [None, Some("debug"), Some("warn,openraft=info")] {
            tracing_subscriber::EnvFilter::try_new(log_filter(rust_log)).expect("valid filter");
        }
    }
}
