//! Real broker processes for tests: the `meridian` binary on 127.0.0.1, a fresh data
//! dir each, stopped (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{Client, ClientConfig, Producer, ProducerRecord, RecordMetadata, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago, for brokers that
/// must listen (or come back after a restart) on a known port.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default), from a counter of this process: a port chosen by the kernel for a
/// `:0` bind (every client endpoint, every broker of another test started on `:0`)
/// never lands there, so no other test takes a port between its release here (or a
/// broker's stop) and the broker's bind.
/// Sends every record, then waits until each is acknowledged.
pub async fn send_all(
    producer: &Producer,
    records: impl IntoIterator<Item = ProducerRecord>,
) -> Vec<RecordMetadata> {
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.send(record).await.expect("send"));
    }
    let mut acknowledged = Vec::new();
    for delivery in deliveries {
        acknowledged.push(delivery.await.expect("acknowledged"));
    }
    acknowledged
}

/// The lines `child` prints on its (piped) stdout, on a channel, so that a test
/// waiting for a line can time out (`recv_timeout`) instead of hanging.
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `within` for `child` to end; its exit status, or `None` if it is
/// still running.
pub fn wait_for_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 20 s) until the log file at `log` says `text` at least `times`
/// times; returns the log.
pub fn await_log(log: &Path, text: &str, times: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        if logged.matches(text).count() >= times {
            return logged;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{text}` logged:\n{logged}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Different test processes start in different places.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < SPAN, "ran out of ports to give brokers");
        let port = (FIRST + (start + i) % SPAN) as u16;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// The `meridian` binary: `MERIDIAN_BIN`, else next to this test's target dir.
pub fn meridian_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MERIDIAN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> → target/<profile>/meridian
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("meridian");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bin meridian`) or set MERIDIAN_BIN",
        bin.display()
    );
    bin
}

pub struct TestBroker {
    child: Option<Child>,
    pub addr: String,
    pub fingerprint: String,
    pub data_dir: PathBuf,
    settings: Vec<String>,
    /// `--listen` (a port from [`free_ports`] unless a setting says otherwise) and
    /// `--config`, for cluster members.
    listen: String,
    config_file: Option<PathBuf>,
    /// Environment variables of the broker process (besides `RUST_LOG`).
    env: Vec<(String, String)>,
    /// Where the broker's stderr (its log) goes, else the test's own stderr.
    log_file: Option<PathBuf>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl TestBroker {
    pub fn start(settings: &[&str]) -> TestBroker {
        Self::start_with_env(settings, &[])
    }

    /// A broker whose process also gets the environment variables `env`.
    pub fn start_with_env(settings: &[&str], env: &[(&str, &str)]) -> TestBroker {
        Self::start_in_temp(settings, env, None)
    }

    /// [`start_with_env`](Self::start_with_env), the broker's log (stderr, at
    /// `MERIDIAN_TEST_BROKER_LOG` or warn) appended to `log_file`.
    pub fn start_logging_to(
        log_file: &Path,
        settings: &[&str],
        env: &[(&str, &str)],
    ) -> TestBroker {
        Self::start_in_temp(settings, env, Some(log_file.to_owned()))
    }

    fn start_in_temp(
        settings: &[&str],
        env: &[(&str, &str)],
        log_file: Option<PathBuf>,
    ) -> TestBroker {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = temp.path().join("data");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(&data_dir, settings, env, Some(temp), log_file)
    }

    pub fn start_in(
        data_dir: &Path,
        settings: &[&str],
        temp: Option<Arc<tempfile::TempDir>>,
    ) -> TestBroker {
        Self::launch(data_dir, settings, Vec::new(), temp, None)
    }

    fn launch(
        data_dir: &Path,
        settings: &[&str],
        env: Vec<(String, String)>,
        temp: Option<Arc<tempfile::TempDir>>,
        log_file: Option<PathBuf>,
    ) -> TestBroker {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        // A known port, so a restart comes back where clients knew the broker.
        let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
        let (child, addr, fingerprint) = spawn(
            data_dir,
            &listen,
            None,
            &settings,
            &env,
            log_file.as_deref(),
        );
        TestBroker {
            child: Some(child),
            addr,
            fingerprint,
            data_dir: data_dir.to_owned(),
            settings,
            listen,
            config_file: None,
            env,
            log_file,
            _temp: temp,
        }
    }

    /// A broker started with `--config config_file` on a fixed `listen` address (a
    /// cluster member: the voters name each other's addresses).
    pub fn start_configured(
        data_dir: &Path,
        config_file: &Path,
        listen: &str,
        settings: &[&str],
    ) -> TestBroker {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let (child, addr, fingerprint) =
            spawn(data_dir, listen, Some(config_file), &settings, &[], None);
        TestBroker {
            child: Some(child),
            addr,
            fingerprint,
            data_dir: data_dir.to_owned(),
            settings,
            listen: listen.to_string(),
            config_file: Some(config_file.to_owned()),
            env: Vec::new(),
            log_file: None,
            _temp: None,
        }
    }

    /// Whether the process is running (not killed or stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL (no clean shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the broker process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Stops with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success());
            let exit = child.wait().expect("wait");
            assert!(exit.success(), "broker exited with {exit} after SIGTERM");
        }
    }

    /// Starts again on the same data dir and address (after `kill9` or `stop`), so
    /// clients that knew it reconnect.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        if self.listen.ends_with(":0") {
            self.listen = self.addr.clone();
        }
        let (child, addr, fingerprint) = spawn(
            &self.data_dir,
            &self.listen,
            self.config_file.as_deref(),
            &self.settings,
            &self.env,
            self.log_file.as_deref(),
        );
        self.child = Some(child);
        self.addr = addr;
        self.fingerprint = fingerprint;
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.join("tls").join("cert.pem")
    }

    pub async fn client(&self) -> Client {
        self.client_with(|_| {}).await
    }

    pub async fn client_with(&self, adjust: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut config = ClientConfig::new(
            self.addr.clone(),
            Trust::parse_fingerprint(&self.fingerprint).unwrap(),
        );
        adjust(&mut config);
        Client::connect(config)
            .await
            .expect("connect to test broker")
    }

    /// A `meridian <args>` command aimed at this broker, to spawn as the test likes.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(meridian_bin());
        command
            .args(args)
            .arg("--broker")
            .arg(&self.addr)
            .arg("--fingerprint")
            .arg(&self.fingerprint);
        command
    }

    /// `meridian <args>` against this broker, with stdin; returns (status ok, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        run_with_stdin(self.cli_command(args), stdin)
    }

    /// A raw QUIC connection speaking ALPN meridian/1, for sending malformed frames.
    pub async fn raw_connection(&self) -> quinn::Connection {
        self.try_raw_connection().await.expect("raw QUIC connect")
    }

    pub async fn try_raw_connection(&self) -> Result<quinn::Connection, quinn::ConnectionError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(self.cert_path())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        raw_client_endpoint(certs[0].clone())
            .connect(self.addr.parse().unwrap(), "localhost")
            .unwrap()
            .await
    }
}

/// A bare QUIC client endpoint on 127.0.0.1 speaking ALPN meridian/1 that trusts
/// exactly `cert`.
pub fn raw_client_endpoint(cert: CertificateDer<'static>) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![meridian_wire::frame::ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(
    data_dir: &Path,
    listen: &str,
    config_file: Option<&Path>,
    settings: &[String],
    env: &[(String, String)],
    log_file: Option<&Path>,
) -> (Child, String, String) {
    let mut cmd = Command::new(meridian_bin());
    cmd.arg("broker")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(listen);
    if let Some(file) = config_file {
        cmd.arg("--config").arg(file);
    }
    for s in settings {
        cmd.arg("--set").arg(s);
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("MERIDIAN_TEST_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let stderr = match log_file {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the broker's log file"),
        ),
        None => Stdio::inherit(),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn broker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let line = lines
            .next()
            .expect("broker exited before printing its address")
            .expect("read stdout");
        if let Some(rest) = line.split(" listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(fp) = line.trim().strip_prefix("fingerprint:") {
            fingerprint = Some(fp.trim().to_owned());
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr.unwrap(), fingerprint.unwrap())
}

/// Sends raw bytes on a fresh stream and returns the response frame body, if any.
pub async fn raw_request(connection: &quinn::Connection, bytes: &[u8]) -> Option<Bytes> {
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    send.write_all(bytes).await.expect("write");
    let _ = send.finish();
    let response = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("response in time")
        .ok()?;
    if response.is_empty() {
        return None;
    }
    assert!(response.len() >= 4, "short response frame");
    Some(Bytes::from(response).slice(4..))
}

/// One uncompressed batch holding one record of `value_len` bytes.
pub fn batch(value_len: usize) -> Bytes {
    let record = meridian_wire::batch::NewRecord {
        timestamp: 1,
        key: None,
        value: Some(Bytes::from(vec![1u8; value_len])),
        headers: vec![],
    };
    meridian_wire::batch::encode_batch(
        &[record],
        meridian_wire::batch::Compression::None,
        meridian_wire::batch::ProducerIdentity::NONE,
    )
    .unwrap()
}

/// A produce request for one partition.
pub fn produce(
    topic: &str,
    partition: u32,
    acks: i8,
    records: Bytes,
) -> meridian_wire::messages::Request {
    use meridian_wire::messages::*;
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition { partition, records }],
        }],
    })
}

/// A fetch request for partition 0 of `topic`.
pub fn fetch(
    topic: &str,
    offset: i64,
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
) -> meridian_wire::messages::Request {
    use meridian_wire::messages::*;
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes,
        topics: vec![FetchTopic {
            name: topic.into(),
            id: meridian_wire::TopicId::NONE,
            partitions: vec![FetchPartition::new(0, offset, max_bytes)],
        }],
        filter: None,
        replica_id: CONSUMER_REPLICA_ID,
    })
}

/// A broker of a replicated cluster, in this process: `meridian_server::Broker` with
/// a broker id, `cluster_mode` on and the cluster's shared TLS identity, serving real
/// QUIC on 127.0.0.1. The test plays the controller through `manager` (the real
/// `ReplicaManager` API the control plane calls).
pub struct ClusterBroker {
    pub id: u32,
    pub addr: std::net::SocketAddr,
    pub fingerprint: String,
    pub manager: meridian_server::ReplicaManager,
    pub data_dir: PathBuf,
    config: meridian_server::BrokerConfig,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ClusterBroker {
    /// Starts broker `id` on `data_dir` with `settings` (`key=value`, as `--set`),
    /// using the certificate and key in `tls_dir` (generated by the first broker).
    pub async fn start(id: u32, data_dir: &Path, tls_dir: &Path, settings: &[&str]) -> Self {
        let mut overrides: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        overrides.push(format!("broker_id={id}"));
        overrides.push("cluster_mode=true".into());
        let mut config = meridian_server::BrokerConfig::load(None, vec![], &overrides)
            .expect("valid test broker settings");
        // A known port, so a restart comes back where its peers know it.
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
        config.data_dir = data_dir.to_owned();
        config.tls_cert = Some(tls_dir.join("cert.pem"));
        config.tls_key = Some(tls_dir.join("key.pem"));
        Self::start_with(id, config).await
    }

    async fn start_with(id: u32, config: meridian_server::BrokerConfig) -> Self {
        let broker = meridian_server::Broker::start(config.clone())
            .await
            .expect("start broker");
        let addr = broker.local_addr();
        let fingerprint = broker.fingerprint().to_owned();
        let manager = broker.replica_manager();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            broker
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .expect("broker serves and stops cleanly");
        });
        let mut config = config;
        // A restart comes back on the same port, where its peers know it.
        config.listen = addr;
        ClusterBroker {
            id,
            addr,
            fingerprint,
            manager,
            data_dir: config.data_dir.clone(),
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Stops the broker cleanly (its fetchers stop with it) and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("broker task");
        }
    }

    /// Starts again on the same data dir and port (after `stop`).
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "stop the broker first");
        let restarted = Self::start_with(self.id, self.config.clone()).await;
        *self = restarted;
    }

    pub async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(
            self.addr.to_string(),
            Trust::parse_fingerprint(&self.fingerprint).unwrap(),
        ))
        .await
        .expect("connect to cluster broker")
    }

    /// The bytes of the partition's first segment file.
    pub fn segment_bytes(&self, topic: &str, partition: u32) -> Vec<u8> {
        let path = self
            .data_dir
            .join("topics")
            .join(topic)
            .join(partition.to_string())
            .join(format!("{:020}.log", 0));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }
}

impl Drop for ClusterBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Several in-process brokers sharing one TLS identity, and the AlterIsr proposals
/// their leaders send (the test answers them as the controller would).
pub struct Cluster {
    pub brokers: Vec<ClusterBroker>,
    pub isr_changes: tokio::sync::mpsc::UnboundedReceiver<meridian_server::IsrChange>,
    isr_sink: tokio::sync::mpsc::UnboundedSender<meridian_server::IsrChange>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Brokers 1..=n with `settings` each.
    pub async fn start(n: u32, settings: &[&str]) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let tls_dir = root.path().join("tls");
        let (isr_sink, isr_changes) = tokio::sync::mpsc::unbounded_channel();
        let mut brokers = Vec::new();
        for id in 1..=n {
            let data_dir = root.path().join(format!("broker-{id}"));
            let broker = ClusterBroker::start(id, &data_dir, &tls_dir, settings).await;
            broker
                .manager
                .set_alter_isr_sink(Arc::new(isr_sink.clone()));
            brokers.push(broker);
        }
        Cluster {
            brokers,
            isr_changes,
            isr_sink,
            _root: root,
        }
    }

    pub fn broker(&mut self, id: u32) -> &mut ClusterBroker {
        &mut self.brokers[id as usize - 1]
    }

    pub fn addrs(&self) -> std::collections::BTreeMap<u32, std::net::SocketAddr> {
        self.brokers.iter().map(|b| (b.id, b.addr)).collect()
    }

    /// Creates the topic's replicas on every broker.
    pub fn create_topic(&self, name: &str, partitions: u32, configs: &[(&str, &str)]) {
        let configs: Vec<(String, String)> = configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for b in &self.brokers {
            b.manager
                .create_topic(name, partitions, self.brokers.len() as u16, configs.clone())
                .expect("create topic replica");
        }
    }

    /// Sends a partition's record to every running broker, as the controller does.
    pub fn apply(
        &self,
        topic: &str,
        partition: u32,
        state: &meridian_core::replication::LeaderAndIsr,
    ) {
        let addrs = self.addrs();
        for b in self.brokers.iter().filter(|b| b.is_running()) {
            b.manager
                .apply(topic, partition, state.clone(), &addrs)
                .expect("apply LeaderAndIsr");
        }
    }

    /// Restarts a stopped broker with the cluster's ISR sink.
    pub async fn restart(&mut self, id: u32) {
        let sink = self.isr_sink.clone();
        let broker = self.broker(id);
        broker.restart().await;
        broker.manager.set_alter_isr_sink(Arc::new(sink));
    }

    /// Waits for the next ISR proposal (panics after `timeout`).
    pub async fn next_isr_change(&mut self, timeout: Duration) -> meridian_server::IsrChange {
        tokio::time::timeout(timeout, self.isr_changes.recv())
            .await
            .expect("an ISR proposal in time")
            .expect("sink open")
    }
}

/// Every record of `topic`/0 from its log start to its current end, through
/// `client` (from the partition's leader), in offset order; fails the test if that
/// takes longer than `within`.
pub async fn read_partition_0(
    client: &Client,
    topic: &str,
    within: Duration,
) -> Vec<meridian_client::ConsumerRecord> {
    use meridian_client::{ConsumerConfig, Offset};
    let end = client
        .admin()
        .list_offsets(topic, 0, Offset::Latest)
        .await
        .unwrap();
    let mut consumer = client.consumer(ConsumerConfig::default());
    consumer.assign(topic, &[0]).await.unwrap();
    consumer.seek(topic, 0, Offset::Earliest).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while consumer.position(topic, 0).unwrap() < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading {topic} stalled"
        );
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    out
}

/// CPU time (user plus system, all threads) process `pid` has used so far, from
/// `/proc/<pid>/stat` (fields 14 and 15, after the parenthesised command name).
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("command name") + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Runs `command` with `stdin` written to it; returns (status ok, stdout, stderr).
pub fn run_with_stdin(mut command: Command, stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("meridian's output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pseudo-random numbers from a fixed seed (xorshift64), for tests that change their
/// input at random and must fail the same way twice: each call gives one below its
/// argument.
pub fn seeded(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    }
}

/// `frame` changed at one place at or after `from`, picked by `next` (see
/// [`seeded`]): a byte set to an edge value, an INT32 or INT16 made extreme, the
/// varint 2^32 - 1 spliced in, or the frame cut short there.
pub fn mutate(frame: &mut Vec<u8>, from: usize, next: &mut impl FnMut(usize) -> usize) {
    let at = from + next(frame.len() - from);
    let overwrite = |frame: &mut Vec<u8>, bytes: &[u8]| {
        let end = (at + bytes.len()).min(frame.len());
        frame[at..end].copy_from_slice(&bytes[..end - at]);
    };
    match next(5) {
        0 => frame[at] = [0, 1, 0x7f, 0x80, 0xff][next(5)],
        1 => overwrite(
            frame,
            &[u32::MAX, 1 << 31, 0x7fff_ffff, 1 << 24][next(4)].to_be_bytes(),
        ),
        2 => overwrite(frame, &[0x8000u16, 0xffff, 0x7fff][next(3)].to_be_bytes()),
        3 => {
            frame.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ => frame.truncate(at),
    }
}

/// The value `meridian topic describe` printed for setting `key` (`(default)`
/// after it when it is the broker default), words joined by one space.
pub fn described_setting(out: &str, key: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key)).then(|| words.collect::<Vec<_>>().join(" "))
    })
}
