//! Real broker processes for tests: the `meridian` binary on 127.0.0.1, a fresh data
//! dir each, stopped (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_client::{Client, ClientConfig, Trust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

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
    /// `--listen` (default `127.0.0.1:0`) and `--config`, for cluster members.
    listen: String,
    config_file: Option<PathBuf>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl TestBroker {
    pub fn start(settings: &[&str]) -> TestBroker {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = temp.path().join("data");
        Self::start_in(&data_dir, settings, Some(temp))
    }

    pub fn start_in(
        data_dir: &Path,
        settings: &[&str],
        temp: Option<Arc<tempfile::TempDir>>,
    ) -> TestBroker {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let listen = "127.0.0.1:0".to_string();
        let (child, addr, fingerprint) = spawn(data_dir, &listen, None, &settings);
        TestBroker {
            child: Some(child),
            addr,
            fingerprint,
            data_dir: data_dir.to_owned(),
            settings,
            listen,
            config_file: None,
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
        let (child, addr, fingerprint) = spawn(data_dir, listen, Some(config_file), &settings);
        TestBroker {
            child: Some(child),
            addr,
            fingerprint,
            data_dir: data_dir.to_owned(),
            settings,
            listen: listen.to_string(),
            config_file: Some(config_file.to_owned()),
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

    /// Starts again on the same data dir (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let (child, addr, fingerprint) = spawn(
            &self.data_dir,
            &self.listen,
            self.config_file.as_deref(),
            &self.settings,
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
        use std::io::Write;
        let mut child = self
            .cli_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meridian cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("cli output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
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
            .connect(self.addr.parse().unwrap(), "localhost")
            .unwrap()
            .await
    }
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
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
            partitions: vec![FetchPartition {
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: max_bytes,
            }],
        }],
        filter: None,
    })
}
