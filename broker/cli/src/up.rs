//! `meridian up REGION.toml`: a whole region on this machine. Each broker of the
//! region file runs as a child process (`meridian broker --config …`) with its own
//! data directory; all of them share one generated TLS identity, so one fingerprint
//! reaches every broker and brokers trust each other. Ctrl-C (or SIGTERM) stops them
//! the way an operator would: SIGTERM to each (a controlled shutdown), then SIGKILL
//! for any still running after `--stop-timeout-secs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    /// Region file, e.g. regions/local-3.toml.
    pub region: PathBuf,
    /// Start only these brokers of the region (repeatable), e.g. to bring back one
    /// that was killed while the others kept running.
    #[arg(long = "broker", value_name = "ID")]
    pub only: Vec<u32>,
    /// After SIGTERM, how long each broker gets to move its leadership away and stop
    /// before it is killed.
    #[arg(long, default_value_t = 30)]
    pub stop_timeout_secs: u64,
}

/// A region file: the brokers of one region and the settings they share.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    pub region: RegionSection,
    /// Broker settings (any key of the broker configuration) every broker gets.
    #[serde(default)]
    pub broker_defaults: toml::Table,
    #[serde(rename = "broker")]
    pub brokers: Vec<RegionBroker>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    pub name: String,
    /// Every broker's data directory and the shared TLS identity go under here.
    /// A relative path is taken from the current directory.
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionBroker {
    pub id: u32,
    pub listen: SocketAddr,
    #[serde(default)]
    pub rack: Option<String>,
    /// Settings for this broker only, over `broker_defaults`.
    #[serde(default)]
    pub settings: toml::Table,
    /// Whether the broker votes in the metadata quorum. `false`: a broker added to
    /// the region later (`meridian up REGION --broker N` while the others run); it
    /// joins as a broker only, and partitions move onto it with
    /// `meridian partition reassign`.
    #[serde(default = "voter_by_default")]
    pub voter: bool,
}

impl RegionBroker {
    /// The broker's `kafka_listen` setting, if it has one.
    fn kafka_listen(&self) -> Option<&str> {
        self.settings
            .get("kafka_listen")
            .and_then(toml::Value::as_str)
    }
}

fn voter_by_default() -> bool {
    true
}

impl RegionFile {
    pub fn load(path: &Path) -> anyhow::Result<RegionFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading region file {}", path.display()))?;
        let region: RegionFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        region.validate()?;
        Ok(region)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.brokers.is_empty() {
            bail!("region {} has no [[broker]]", self.region.name);
        }
        if !self.brokers.iter().any(|b| b.voter) {
            bail!(
                "region {} has no voter: at least one [[broker]] must vote in the metadata quorum",
                self.region.name
            );
        }
        let mut ids = BTreeSet::new();
        let mut listens = BTreeSet::new();
        let mut kafka_listens = BTreeSet::new();
        for b in &self.brokers {
            if !ids.insert(b.id) {
                bail!("broker id {} appears twice", b.id);
            }
            if !listens.insert(b.listen) {
                bail!("two brokers listen on {}", b.listen);
            }
            if let Some(kafka) = b.kafka_listen() {
                if !kafka_listens.insert(kafka.to_string()) {
                    bail!("two brokers have kafka_listen = {kafka}");
                }
            }
        }
        if self.broker_defaults.contains_key("kafka_listen") {
            bail!(
                "[broker_defaults] may not set kafka_listen: each broker needs its own \
                 address (set it in each [[broker]]'s settings)"
            );
        }
        for key in [
            "broker_id",
            "listen",
            "data_dir",
            "tls_cert",
            "tls_key",
            "rack",
        ] {
            if self.broker_defaults.contains_key(key) {
                bail!("[broker_defaults] may not set {key}: `meridian up` sets it per broker");
            }
        }
        Ok(())
    }

    /// `1@127.0.0.1:9101` for each voter of the metadata quorum (every broker but
    /// those with `voter = false`).
    pub fn voters(&self) -> Vec<String> {
        self.brokers
            .iter()
            .filter(|b| b.voter)
            .map(|b| format!("{}@{}", b.id, b.listen))
            .collect()
    }

    /// The brokers' Kafka listeners, as Kafka clients' `bootstrap.servers`; `None`
    /// when no broker has one.
    pub fn kafka_bootstrap(&self) -> Option<String> {
        let addrs: Vec<&str> = self
            .brokers
            .iter()
            .filter_map(RegionBroker::kafka_listen)
            .collect();
        (!addrs.is_empty()).then(|| addrs.join(","))
    }

    /// The command `meridian up` suggests: a topic created with the flags that reach
    /// this region, a client certificate's among them when its brokers require one.
    pub fn try_line(&self, cert: &Path) -> String {
        let client_ca = std::iter::once(&self.broker_defaults)
            .chain(self.brokers.iter().map(|b| &b.settings))
            .find_map(|settings| settings.get("tls_client_ca")?.as_str());
        format!(
            "Try: meridian topic create demo --partitions 3 --replication-factor {} --bootstrap {} --ca {}{}",
            self.brokers.len().min(3),
            self.bootstrap(),
            cert.display(),
            match client_ca {
                Some(ca) => {
                    let (cert, key) =
                        crate::cert_cmds::client_certificate_beside(Path::new(ca), cert);
                    format!(" --cert {cert} --key {key} (a client certificate signed by {ca})")
                }
                None => String::new(),
            }
        )
    }

    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.brokers.iter().map(|b| b.listen.to_string()).collect();
        addrs.join(",")
    }

    pub fn tls_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self.region.data_dir.join("tls");
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// The broker configuration file for `broker`, as TOML.
    pub fn broker_config(&self, broker: &RegionBroker) -> anyhow::Result<String> {
        let mut table = self.broker_defaults.clone();
        for (k, v) in &broker.settings {
            table.insert(k.clone(), v.clone());
        }
        let (cert, key) = self.tls_paths();
        let data_dir = self.region.data_dir.join(format!("broker-{}", broker.id));
        table.insert("broker_id".into(), toml::Value::Integer(broker.id.into()));
        table.insert("listen".into(), broker.listen.to_string().into());
        table.insert("data_dir".into(), path_value(&data_dir)?);
        table.insert("tls_cert".into(), path_value(&cert)?);
        table.insert("tls_key".into(), path_value(&key)?);
        if let Some(rack) = &broker.rack {
            table.insert("rack".into(), rack.clone().into());
        }
        let cluster = table
            .entry("cluster")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(cluster) = cluster.as_table_mut() else {
            bail!("`cluster` in the broker settings must be a table");
        };
        cluster.insert(
            "voters".into(),
            toml::Value::Array(self.voters().into_iter().map(Into::into).collect()),
        );
        Ok(toml::to_string(&table)?)
    }
}

fn path_value(path: &Path) -> anyhow::Result<toml::Value> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    Ok(absolute.display().to_string().into())
}

struct Running {
    child: Child,
    exited: bool,
}

/// Where a region's broker processes write their output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// To this process's stdout/stderr, each line prefixed with `[broker-N]`.
    Prefixed,
    /// Appended to `<data_dir>/broker-N.log` (benchmarks keep the terminal quiet).
    LogFiles,
}

/// The broker processes of one region on this machine.
pub struct RegionRunner {
    pub region: RegionFile,
    pub cert: PathBuf,
    pub fingerprint: String,
    exe: PathBuf,
    output: Output,
    children: std::collections::BTreeMap<u32, Running>,
}

impl RegionRunner {
    /// Process ids of the brokers running.
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .values()
            .filter(|running| !running.exited)
            .filter_map(|running| running.child.id())
            .collect()
    }

    /// Creates the region's directory and its TLS identity (once); starts nothing.
    pub fn prepare(region: RegionFile, output: Output) -> anyhow::Result<RegionRunner> {
        std::fs::create_dir_all(&region.region.data_dir)
            .with_context(|| format!("creating {}", region.region.data_dir.display()))?;
        let (cert, key) = region.tls_paths();
        let hosts: Vec<String> = region
            .brokers
            .iter()
            .map(|b| b.listen.ip().to_string())
            .collect();
        let identity = meridian_server::tls::load_or_generate(&cert, &key, &hosts)?;
        Ok(RegionRunner {
            region,
            cert,
            fingerprint: identity.fingerprint,
            exe: std::env::current_exe().context("locating the meridian binary")?,
            output,
            children: Default::default(),
        })
    }

    /// The region's TLS identity as a client certificate: the bench's clients show
    /// it to brokers that require one (`tls_client_ca` in `[broker_defaults]`).
    pub fn identity(&self) -> anyhow::Result<meridian_client::ClientIdentity> {
        let (cert, key) = self.region.tls_paths();
        Ok(meridian_client::ClientIdentity::from_files(cert, key)?)
    }

    pub fn broker_ids(&self) -> Vec<u32> {
        self.region.brokers.iter().map(|b| b.id).collect()
    }

    /// Starts broker `id` (again, if it ran before).
    pub fn start(&mut self, id: u32) -> anyhow::Result<()> {
        if self.children.get(&id).is_some_and(|r| !r.exited) {
            bail!("broker {id} is already running");
        }
        let broker = self
            .region
            .brokers
            .iter()
            .find(|b| b.id == id)
            .with_context(|| format!("the region has no broker {id}"))?;
        let dir = &self.region.region.data_dir;
        let config_path = dir.join(format!("broker-{id}.toml"));
        std::fs::write(&config_path, self.region.broker_config(broker)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if self.output == Output::LogFiles {
            // A bench's brokers never outlive the bench, even one killed by SIGKILL
            // (which runs no destructor). `meridian up`'s brokers are stopped by its
            // signal handler instead, with a controlled shutdown.
            die_with_parent(command.as_std_mut());
        }
        match self.output {
            Output::Prefixed => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
                // The brokers write to pipes, so they would log without colours
                // even when their lines end up on this terminal.
                let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let no_color = std::env::var("NO_COLOR").ok();
                if crate::log_colors(terminal, no_color.as_deref(), None) {
                    command.env("CLICOLOR_FORCE", "1");
                }
            }
            Output::LogFiles => {
                let log_path = dir.join(format!("broker-{id}.log"));
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .with_context(|| format!("opening {}", log_path.display()))?;
                command.stdout(log.try_clone()?).stderr(log);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting broker {id}"))?;
        let tag = format!("[broker-{id}]");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix_lines(tag.clone(), out, false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(tag, err, true));
        }
        self.children.insert(
            id,
            Running {
                child,
                exited: false,
            },
        );
        Ok(())
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.children.get(&id).is_some_and(|r| !r.exited)
    }

    /// Sends `signal` to broker `id` if it is running.
    pub fn signal(&self, id: u32, signal: rustix::process::Signal) {
        if let Some(pid) = self
            .children
            .get(&id)
            .filter(|r| !r.exited)
            .and_then(|r| r.child.id())
        {
            send_signal(pid, signal);
        }
    }

    /// SIGKILL to broker `id`, waiting until it is gone.
    pub async fn kill9(&mut self, id: u32) {
        if let Some(r) = self.children.get_mut(&id).filter(|r| !r.exited) {
            let _ = r.child.kill().await;
            r.exited = true;
        }
    }

    /// Notes brokers that exited on their own; returns `(id, status)` for each.
    pub fn reap(&mut self) -> anyhow::Result<Vec<(u32, std::process::ExitStatus)>> {
        let mut exited = Vec::new();
        for (id, r) in self.children.iter_mut().filter(|(_, r)| !r.exited) {
            if let Some(status) = r.child.try_wait()? {
                r.exited = true;
                exited.push((*id, status));
            }
        }
        Ok(exited)
    }

    /// SIGTERM to every running broker, then waits; SIGKILL for those past `timeout`.
    /// Returns whether any broker failed or had to be killed.
    pub async fn stop_all(&mut self, timeout: Duration) -> bool {
        for id in self.children.keys() {
            self.signal(*id, rustix::process::Signal::TERM);
        }
        let mut failed = false;
        for (id, r) in self.children.iter_mut().filter(|(_, r)| !r.exited) {
            match tokio::time::timeout(timeout, r.child.wait()).await {
                Ok(Ok(status)) => {
                    failed |= !status.success();
                    if self.output == Output::Prefixed {
                        println!("[broker-{id}] stopped: {status}");
                    }
                }
                Ok(Err(e)) => {
                    failed = true;
                    eprintln!("[broker-{id}] could not be waited for: {e}");
                }
                Err(_) => {
                    failed = true;
                    eprintln!(
                        "[broker-{id}] still running after {}s: killing it",
                        timeout.as_secs()
                    );
                    let _ = r.child.kill().await;
                }
            }
            r.exited = true;
        }
        failed
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let region = RegionFile::load(&args.region)?;
    for id in &args.only {
        if !region.brokers.iter().any(|b| b.id == *id) {
            let ids: Vec<String> = region.brokers.iter().map(|b| b.id.to_string()).collect();
            bail!(
                "--broker {id}: {} has no broker {id} (it has {}); to add one, give it a \
                 [[broker]] with id = {id}, its own listen address and voter = false",
                args.region.display(),
                ids.join(", ")
            );
        }
    }
    let mut runner = RegionRunner::prepare(region, Output::Prefixed)?;
    let ids: Vec<u32> = runner
        .broker_ids()
        .into_iter()
        .filter(|id| args.only.is_empty() || args.only.contains(id))
        .collect();
    for id in &ids {
        runner.start(*id)?;
    }
    let region = &runner.region;
    println!(
        "region {}: {} broker(s) starting, data under {}",
        region.region.name,
        ids.len(),
        region.region.data_dir.display()
    );
    println!("  bootstrap:   {}", region.bootstrap());
    if let Some(kafka) = region.kafka_bootstrap() {
        println!("  kafka:       {kafka} (bootstrap.servers for Kafka clients)");
    }
    println!("  certificate: {}", runner.cert.display());
    println!("  fingerprint: {}", runner.fingerprint);
    println!("{}", region.try_line(&runner.cert));
    println!("Ctrl-C stops every broker (controlled shutdown first).");
    {
        use std::io::Write;
        std::io::stdout().flush()?;
    }

    // Brokers that ended on their own with an error (say, at start), and whether
    // stopping the rest on Ctrl-C went wrong.
    let mut exited: Vec<(u32, std::process::ExitStatus)> = Vec::new();
    let mut failed = false;
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut hangups = Hangups::listen();
    loop {
        for (id, status) in runner.reap()? {
            if !status.success() {
                exited.push((id, status));
            }
            println!("[broker-{id}] exited: {status}");
        }
        if ids.iter().all(|id| !runner.is_running(*id)) {
            break;
        }
        tokio::select! {
            _ = &mut stop => {
                println!("stopping region {}", runner.region.region.name);
                failed |= runner.stop_all(Duration::from_secs(args.stop_timeout_secs)).await;
                break;
            }
            () = hangups.recv() => {
                let passed: Vec<String> = ids
                    .iter()
                    .filter(|id| runner.is_running(**id))
                    .map(|id| {
                        runner.signal(*id, rustix::process::Signal::HUP);
                        format!("broker-{id}")
                    })
                    .collect();
                println!(
                    "SIGHUP: passed on to {} (each re-reads its TLS certificate and key, \
                     tls_client_ca, tls_client_crl, acl_file and client quotas)",
                    passed.join(", ")
                );
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let region = &runner.region.region.name;
    if !exited.is_empty() {
        let brokers: Vec<String> = exited
            .iter()
            .map(|(id, status)| format!("broker-{id} ({status})"))
            .collect();
        bail!(
            "{} of region {region} exited on its own; its lines above say why",
            brokers.join(", ")
        );
    }
    if failed {
        bail!("a broker of region {region} did not stop cleanly");
    }
    Ok(())
}

/// SIGHUP to `meridian up`, which passes it on to its brokers. Without a handler
/// the signal would end `up` and leave its brokers running with nobody to stop them
/// or print their lines.
struct Hangups {
    #[cfg(unix)]
    signals: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    fn listen() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = signal(SignalKind::hangup())
                .map_err(|e| {
                    eprintln!("cannot listen for SIGHUP ({e}): signal the brokers directly")
                })
                .ok();
            Hangups { signals }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// The next SIGHUP; never, where none can come.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signals) = &mut self.signals {
            if signals.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Makes the child started by `command` receive SIGKILL when this process dies
/// (Linux `PR_SET_PDEATHSIG`; elsewhere nothing). The signal is tied to the thread
/// that starts the child: children are started from the runtime's long-lived worker
/// threads or the main thread, never from a short-lived blocking thread.
pub(crate) fn die_with_parent(command: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // prctl and getppid, both async-signal-safe; it allocates nothing and takes
        // no lock.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                // The parent may have died before the prctl took effect.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other(
                        "the bench exited while starting a broker",
                    ));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        eprintln!("could not signal broker process {pid:?}: {e}");
    }
}

async fn prefix_lines(tag: String, stream: impl AsyncRead + Unpin, to_stderr: bool) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("{tag} {line}");
        } else {
            println!("{tag} {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(text: &str) -> anyhow::Result<RegionFile> {
        let region: RegionFile = toml::from_str(text)?;
        region.validate()?;
        Ok(region)
    }

    const THREE: &str = r#"
        [region]
        name = "t"
        data_dir = "/tmp/meridian-up-test"
        [broker_defaults]
        flush = "always"
        [[broker]]
        id = 1
        listen = "127.0.0.1:9101"
        rack = "a"
        [[broker]]
        id = 2
        listen = "127.0.0.1:9102"
        settings = { flush = "interval" }
        [[broker]]
        id = 3
        listen = "127.0.0.1:9103"
    "#;

    #[test]
    fn the_suggested_command_names_a_client_certificate_when_one_is_required() {
        let cert = Path::new("data/tls/cert.pem");
        let plain = region(THREE).unwrap().try_line(cert);
        assert_eq!(
            plain,
            "Try: meridian topic create demo --partitions 3 --replication-factor 3 \
             --bootstrap 127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103 --ca data/tls/cert.pem"
        );
        let required = THREE.replace(
            "flush = \"always\"",
            "flush = \"always\"\n        tls_client_ca = \"certs/ca.pem\"",
        );
        let line = region(&required).unwrap().try_line(cert);
        assert!(
            line.starts_with(&plain)
                && line.ends_with(
                    " --cert certs/NAME.pem --key certs/NAME.key (a client certificate signed by certs/ca.pem)"
                ),
            "{line}"
        );
    }

    #[test]
    fn broker_config_has_identity_cluster_and_settings() {
        let r = region(THREE).unwrap();
        let one: toml::Table = r.broker_config(&r.brokers[0]).unwrap().parse().unwrap();
        assert_eq!(one["broker_id"].as_integer(), Some(1));
        assert_eq!(one["listen"].as_str(), Some("127.0.0.1:9101"));
        assert_eq!(one["rack"].as_str(), Some("a"));
        assert_eq!(one["flush"].as_str(), Some("always"));
        assert_eq!(
            one["data_dir"].as_str(),
            Some("/tmp/meridian-up-test/broker-1")
        );
        assert_eq!(
            one["tls_cert"].as_str(),
            Some("/tmp/meridian-up-test/tls/cert.pem")
        );
        let voters: Vec<&str> = one["cluster"]["voters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            voters,
            ["1@127.0.0.1:9101", "2@127.0.0.1:9102", "3@127.0.0.1:9103"]
        );
        // A broker added later does not vote; every broker lists the same voters.
        let four =
            format!("{THREE}\n[[broker]]\nid = 4\nlisten = \"127.0.0.1:9104\"\nvoter = false\n");
        let with_four = region(&four).unwrap();
        let four: toml::Table = with_four
            .broker_config(&with_four.brokers[3])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(four["cluster"]["voters"].as_array().unwrap().len(), 3);
        assert!(with_four.bootstrap().ends_with(",127.0.0.1:9104"));
        let two: toml::Table = r.broker_config(&r.brokers[1]).unwrap().parse().unwrap();
        assert_eq!(two["flush"].as_str(), Some("interval"));
        assert!(two.get("rack").is_none());
        assert_eq!(
            r.bootstrap(),
            "127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103"
        );
    }

    #[test]
    fn bad_region_files_are_refused() {
        let dup = THREE.replace("id = 2", "id = 1");
        assert!(region(&dup).unwrap_err().to_string().contains("twice"));
        let same_port = THREE.replace("9102", "9101");
        assert!(region(&same_port)
            .unwrap_err()
            .to_string()
            .contains("two brokers listen"));
        let sets_id = THREE.replace("flush = \"always\"", "broker_id = 4");
        assert!(region(&sets_id)
            .unwrap_err()
            .to_string()
            .contains("may not set broker_id"));
        let no_voter = THREE.replace(
            "listen = \"127.0.0.1:910",
            "voter = false\n        listen = \"127.0.0.1:910",
        );
        assert!(region(&no_voter)
            .unwrap_err()
            .to_string()
            .contains("no voter"));
        let none = "broker = []\n[region]\nname = \"x\"\ndata_dir = \"d\"\n";
        assert!(region(none)
            .unwrap_err()
            .to_string()
            .contains("no [[broker]]"));
        assert!(region(&THREE.replace("[region]", "[region]\nport = 1")).is_err());
        let shared_kafka = THREE.replace("flush = \"always\"", "kafka_listen = \"127.0.0.1:9092\"");
        assert!(region(&shared_kafka)
            .unwrap_err()
            .to_string()
            .contains("may not set kafka_listen"));
        let same_kafka = THREE
            .replace(
                "listen = \"127.0.0.1:9101\"",
                "listen = \"127.0.0.1:9101\"\nsettings = { kafka_listen = \"127.0.0.1:9092\" }",
            )
            .replace(
                "settings = { flush = \"interval\" }",
                "settings = { kafka_listen = \"127.0.0.1:9092\" }",
            );
        assert!(region(&same_kafka)
            .unwrap_err()
            .to_string()
            .contains("two brokers have kafka_listen = 127.0.0.1:9092"));
    }

    #[test]
    fn kafka_listeners_make_the_kafka_bootstrap() {
        assert_eq!(region(THREE).unwrap().kafka_bootstrap(), None);
        let kafka = THREE
            .replace(
                "listen = \"127.0.0.1:9101\"",
                "listen = \"127.0.0.1:9101\"\nsettings = { kafka_listen = \"127.0.0.1:9191\" }",
            )
            .replace(
                "settings = { flush = \"interval\" }",
                "settings = { kafka_listen = \"127.0.0.1:9192\" }",
            );
        let r = region(&kafka).unwrap();
        assert_eq!(
            r.kafka_bootstrap().as_deref(),
            Some("127.0.0.1:9191,127.0.0.1:9192")
        );
        let two: toml::Table = r.broker_config(&r.brokers[1]).unwrap().parse().unwrap();
        assert_eq!(two["kafka_listen"].as_str(), Some("127.0.0.1:9192"));
    }
}
