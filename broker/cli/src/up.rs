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
        let mut ids = BTreeSet::new();
        let mut listens = BTreeSet::new();
        for b in &self.brokers {
            if !ids.insert(b.id) {
                bail!("broker id {} appears twice", b.id);
            }
            if !listens.insert(b.listen) {
                bail!("two brokers listen on {}", b.listen);
            }
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

    /// `1@127.0.0.1:9101` for each broker: every broker is a metadata-quorum voter.
    pub fn voters(&self) -> Vec<String> {
        self.brokers
            .iter()
            .map(|b| format!("{}@{}", b.id, b.listen))
            .collect()
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
    id: u32,
    child: Child,
    exited: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let region = RegionFile::load(&args.region)?;
    for id in &args.only {
        if !region.brokers.iter().any(|b| b.id == *id) {
            bail!("--broker {id}: the region has no broker {id}");
        }
    }
    std::fs::create_dir_all(&region.region.data_dir)
        .with_context(|| format!("creating {}", region.region.data_dir.display()))?;
    let (cert, key) = region.tls_paths();
    let hosts: Vec<String> = region
        .brokers
        .iter()
        .map(|b| b.listen.ip().to_string())
        .collect();
    let identity = meridian_server::tls::load_or_generate(&cert, &key, &hosts)?;
    let exe = std::env::current_exe().context("locating the meridian binary")?;

    let mut running = Vec::new();
    for broker in &region.brokers {
        if !args.only.is_empty() && !args.only.contains(&broker.id) {
            continue;
        }
        let config_path = region
            .region
            .data_dir
            .join(format!("broker-{}.toml", broker.id));
        std::fs::write(&config_path, region.broker_config(broker)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut child = Command::new(&exe)
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting broker {}", broker.id))?;
        let tag = format!("[broker-{}]", broker.id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix_lines(tag.clone(), out, false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(tag, err, true));
        }
        running.push(Running {
            id: broker.id,
            child,
            exited: false,
        });
    }

    println!(
        "region {}: {} broker(s) starting, data under {}",
        region.region.name,
        running.len(),
        region.region.data_dir.display()
    );
    println!("  bootstrap:   {}", region.bootstrap());
    println!("  certificate: {}", cert.display());
    println!("  fingerprint: {}", identity.fingerprint);
    println!(
        "Try: meridian topic create demo --partitions 3 --replication-factor {} --broker {} --ca {}",
        region.brokers.len().min(3),
        region.bootstrap(),
        cert.display()
    );
    println!("Ctrl-C stops every broker (controlled shutdown first).");
    {
        use std::io::Write;
        std::io::stdout().flush()?;
    }

    let mut failed = false;
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        if running.iter().all(|r| r.exited) {
            break;
        }
        tokio::select! {
            _ = &mut stop => {
                println!("stopping region {}", region.region.name);
                failed |= stop_all(&mut running, Duration::from_secs(args.stop_timeout_secs)).await;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for r in running.iter_mut().filter(|r| !r.exited) {
                    if let Some(status) = r.child.try_wait()? {
                        r.exited = true;
                        failed |= !status.success();
                        println!("[broker-{}] exited: {status}", r.id);
                    }
                }
            }
        }
    }
    if failed {
        bail!(
            "a broker of region {} did not stop cleanly",
            region.region.name
        );
    }
    Ok(())
}

/// SIGTERM to every running broker, then waits; SIGKILL for those past `timeout`.
/// Returns whether any broker failed or had to be killed.
async fn stop_all(running: &mut [Running], timeout: Duration) -> bool {
    for r in running.iter().filter(|r| !r.exited) {
        if let Some(pid) = r.child.id() {
            terminate(pid);
        }
    }
    let mut failed = false;
    for r in running.iter_mut().filter(|r| !r.exited) {
        match tokio::time::timeout(timeout, r.child.wait()).await {
            Ok(Ok(status)) => {
                failed |= !status.success();
                println!("[broker-{}] stopped: {status}", r.id);
            }
            Ok(Err(e)) => {
                failed = true;
                println!("[broker-{}] could not be waited for: {e}", r.id);
            }
            Err(_) => {
                failed = true;
                println!(
                    "[broker-{}] still running after {}s: killing it",
                    r.id,
                    timeout.as_secs()
                );
                let _ = r.child.kill().await;
            }
        }
        r.exited = true;
    }
    failed
}

fn terminate(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
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
        let none = "broker = []\n[region]\nname = \"x\"\ndata_dir = \"d\"\n";
        assert!(region(none)
            .unwrap_err()
            .to_string()
            .contains("no [[broker]]"));
        assert!(region(&THREE.replace("[region]", "[region]\nport = 1")).is_err());
    }
}
