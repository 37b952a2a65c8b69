//! `meridian plugin new|build|test`: scaffold, build and locally run Wasm plugins.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use meridian_client::{Attachment, PluginInfo};
use meridian_wasm_host::{BatchOutput, Host, HostConfig, Limits, LogStream, PluginKind};
use meridian_wire::batch::{Header, NewRecord, Record};

use crate::json_bytes;
use crate::ConnectArgs;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds against the Meridian plugin SDK.
    New(NewArgs),
    /// Build a plugin crate for wasm32-wasip1 (adding the target with rustup if missing).
    Build(BuildArgs),
    /// Run a plugin module locally over records from a JSON-lines file and print the
    /// result as JSON lines.
    Test(TestArgs),
    /// Upload a module to the broker (validated there); redeploying a name hot-swaps it.
    Deploy {
        /// The compiled module (.wasm).
        module: PathBuf,
        /// Plugin name (default: the file name without .wasm).
        #[arg(long)]
        name: Option<String>,
        /// Version label stored with the plugin.
        #[arg(long, default_value = "0.0.0")]
        plugin_version: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List deployed plugins: name, version, kind, size, sha256 (its first 12 hex
    /// digits; `describe` and `--json` show all), attached topics.
    List {
        /// One JSON array of the plugins, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show one plugin: version, sha256, kind, size, attached topics.
    Describe {
        name: String,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a plugin no topic uses.
    Remove {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Args)]
pub struct AttachArgs {
    pub topic: String,
    #[arg(long)]
    pub plugin: String,
    /// Plugin parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Time one batch call may take (0: the broker's plugins.batch_time_max_ms).
    #[arg(long, default_value_t = 0)]
    pub batch_time_max_ms: u32,
    /// Linear memory cap (0: the broker's plugins.memory_max_bytes).
    #[arg(long, default_value_t = 0)]
    pub memory_max_bytes: u64,
    /// What a record error or failed batch does: reject, skip or dead-letter:TOPIC.
    #[arg(long, default_value = "reject")]
    pub on_failure: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Args)]
pub struct DetachArgs {
    pub topic: String,
    #[arg(long)]
    pub plugin: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn attach(args: AttachArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    client
        .admin()
        .attach_plugin(
            &args.topic,
            Attachment {
                plugin: args.plugin.clone(),
                params: args.params,
                batch_time_max_ms: args.batch_time_max_ms,
                memory_max_bytes: args.memory_max_bytes,
                on_failure: args.on_failure,
            },
        )
        .await?;
    println!("attached {} to {}", args.plugin, args.topic);
    Ok(())
}

pub async fn detach(args: DetachArgs) -> anyhow::Result<()> {
    let client = args.connect.connect().await?;
    client
        .admin()
        .detach_plugin(&args.topic, &args.plugin)
        .await?;
    println!("detached {} from {}", args.plugin, args.topic);
    Ok(())
}

/// The topics a plugin is attached to, comma-separated, or `-`.
fn attached(p: &PluginInfo) -> String {
    if p.attached_to.is_empty() {
        "-".to_string()
    } else {
        p.attached_to.join(",")
    }
}

/// `plugin list`: a header, then a row per plugin, columns aligned.
fn plugin_table(plugins: &[PluginInfo]) -> String {
    let name_width = plugins
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let version_width = plugins
        .iter()
        .map(|p| p.version.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut table = format!(
        "{:name_width$}  {:version_width$}  {:11}  {:>10}  {:12}  TOPICS\n",
        "NAME", "VERSION", "KIND", "SIZE", "SHA256"
    );
    for p in plugins {
        table.push_str(&format!(
            "{:name_width$}  {:version_width$}  {:11}  {:>10}  {:12}  {}\n",
            p.name,
            p.version,
            p.kind,
            p.size_bytes,
            p.sha256.get(..12).unwrap_or(&p.sha256),
            attached(p)
        ));
    }
    table
}

/// `plugin describe`: one fact a line.
fn plugin_text(p: &PluginInfo) -> String {
    format!(
        "plugin:   {}\nversion:  {}\nkind:     {}\nsize:     {} bytes\nsha256:   {}\ntopics:   {}\n",
        p.name,
        p.version,
        p.kind,
        p.size_bytes,
        p.sha256,
        attached(p)
    )
}

/// What `plugin list --json` (an array of these) and `plugin describe --json` print.
fn plugin_json(p: &PluginInfo) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "version": p.version,
        "kind": p.kind,
        "size_bytes": p.size_bytes,
        "sha256": p.sha256,
        "attached_to": p.attached_to,
    })
}

#[derive(Args)]
pub struct NewArgs {
    /// Crate name; also the directory created (under --dir).
    pub name: String,
    #[arg(long, value_parser = parse_kind)]
    pub kind: PluginKind,
    /// Parent directory.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Path of the meridian-plugin SDK crate (default: the one in the source tree this
    /// binary was built from).
    #[arg(long)]
    pub sdk_path: Option<PathBuf>,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin crate (or workspace) directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct TestArgs {
    /// The compiled module (.wasm).
    pub module: PathBuf,
    /// JSON lines, one record each: {"key", "value", "headers": {..}, "timestamp"}, all
    /// optional, as `meridian consume --format json` prints them. With --values, each
    /// line is a record value.
    #[arg(long)]
    pub input: PathBuf,
    /// Treat each input line as a record value.
    #[arg(long)]
    pub values: bool,
    /// Plugin parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Partition count given to a partitioner.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Records per plugin call.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Time limit per batch.
    #[arg(long, default_value_t = Limits::default().batch_time_max_ms)]
    pub batch_time_max_ms: u64,
    /// Linear memory cap.
    #[arg(long, default_value_t = Limits::default().memory_max_bytes)]
    pub memory_max_bytes: u64,
}

fn parse_kind(s: &str) -> Result<PluginKind, String> {
    s.parse()
}

pub fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

pub async fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Deploy {
            module,
            name,
            plugin_version,
            connect,
        } => {
            let name = match name {
                Some(n) => n,
                None => module
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.replace('_', "-"))
                    .context("--name is needed for this file name")?,
            };
            let wasm = std::fs::read(&module).with_context(|| module.display().to_string())?;
            let client = connect.connect().await?;
            let info = client
                .admin()
                .deploy_plugin(&name, &plugin_version, Bytes::from(wasm))
                .await?;
            println!(
                "deployed {} {} ({}, {} bytes, sha256 {})",
                info.name, info.version, info.kind, info.size_bytes, info.sha256
            );
            Ok(())
        }
        PluginCommand::List { json, connect } => {
            let client = connect.connect().await?;
            let plugins = client.admin().list_plugins().await?;
            if json {
                let all: Vec<serde_json::Value> = plugins.iter().map(plugin_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                print!("{}", plugin_table(&plugins));
            }
            Ok(())
        }
        PluginCommand::Describe {
            name,
            json,
            connect,
        } => {
            let client = connect.connect().await?;
            let plugin = client.admin().describe_plugin(&name).await?;
            if json {
                println!("{}", plugin_json(&plugin));
            } else {
                print!("{}", plugin_text(&plugin));
            }
            Ok(())
        }
        PluginCommand::Remove { name, connect } => {
            let client = connect.connect().await?;
            client.admin().remove_plugin(&name).await?;
            println!("removed {name}");
            Ok(())
        }
        PluginCommand::New(args) => new(args),
        PluginCommand::Build(args) => {
            for wasm in build(&args.dir)? {
                println!("{}", wasm.display());
            }
            Ok(())
        }
        PluginCommand::Test(args) => test(args),
    }
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let sdk = match args.sdk_path {
        Some(p) => p,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/plugin"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "SDK crate not found at {}: pass --sdk-path to sdk/plugin of a Meridian checkout",
            sdk.display()
        )
    })?;
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("plugin name `{}`: use letters, digits, - and _", args.name);
    }
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    let sdk_str = sdk.display().to_string().replace('\\', "/");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
meridian-plugin = {{ path = "{sdk_str}" }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A workspace of its own, so the plugin builds wherever it lives.
[workspace]
"#,
            name = args.name,
        ),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::write(dir.join("src/lib.rs"), template(args.kind))?;
    println!(
        "created {} ({}); next: meridian plugin build {}",
        dir.display(),
        args.kind,
        dir.display()
    );
    Ok(())
}

fn template(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Filter => {
            r#"//! A filter plugin: keeps records whose value contains the `contains` parameter.

use meridian_plugin::{filter, Error, Filter, Params, Record};

pub struct Contains {
    needle: Vec<u8>,
}

#[filter]
impl Filter for Contains {
    fn new(params: &Params) -> Result<Self, Error> {
        Ok(Contains {
            needle: params.require("contains")?.as_bytes().to_vec(),
        })
    }

    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error> {
        let value = record.value.unwrap_or_default();
        Ok(value.windows(self.needle.len().max(1)).any(|w| w == self.needle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_filter;

    #[test]
    fn keeps_matching_records() {
        let records = [Record::with_value(b"a needle here"), Record::with_value(b"hay")];
        let out = run_filter::<Contains>(&[("contains", "needle")], &records).unwrap();
        assert_eq!(out, vec![Ok(true), Ok(false)]);
    }
}
"#
        }
        PluginKind::Transform => {
            r#"//! A transform plugin: upper-cases each record's value.

use meridian_plugin::{transform, Error, OutputRecord, Params, Record, Transform};

pub struct Upper;

#[transform]
impl Transform for Upper {
    fn new(_params: &Params) -> Result<Self, Error> {
        Ok(Upper)
    }

    fn transform(&mut self, record: &Record<'_>) -> Result<Vec<OutputRecord>, Error> {
        let mut out = OutputRecord::from_record(record);
        out.value = record.value.map(|v| v.to_ascii_uppercase());
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_transform;

    #[test]
    fn upper_cases() {
        let out = run_transform::<Upper>(&[], &[Record::with_value(b"hi")]).unwrap();
        assert_eq!(out[0].as_ref().unwrap()[0].value.as_deref(), Some(&b"HI"[..]));
    }
}
"#
        }
        PluginKind::Partitioner => {
            r#"//! A partitioner plugin: routes by the value's length (keyed records keep Kafka's
//! default key hash).

use meridian_plugin::{default_partition, partitioner, Error, Params, Partitioner, Record};

pub struct ByLength;

#[partitioner]
impl Partitioner for ByLength {
    fn new(_params: &Params) -> Result<Self, Error> {
        Ok(ByLength)
    }

    fn partition(&mut self, record: &Record<'_>, n_partitions: u32) -> Result<u32, Error> {
        Ok(match record.key {
            Some(key) => default_partition(key, n_partitions),
            None => record.value.map_or(0, |v| v.len() as u32) % n_partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_plugin::testing::run_partitioner;

    #[test]
    fn routes_by_length() {
        let out = run_partitioner::<ByLength>(&[], &[Record::with_value(b"abcde")], 3).unwrap();
        assert_eq!(out, vec![Ok(2)]);
    }
}
"#
        }
    }
}

/// Ensures the wasm32-wasip1 target, builds `dir` in release mode, and returns the
/// modules cargo produced.
pub fn build(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    const TARGET: &str = "wasm32-wasip1";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .output()
        .context("running rustup (needed to add the wasm32-wasip1 target)")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        eprintln!("adding the {TARGET} target with rustup");
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .current_dir(dir)
            .status()?;
        if !status.success() {
            bail!("rustup target add {TARGET} failed");
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo build in {}", dir.display()))?;
    if !output.status.success() {
        bail!("cargo build failed in {}", dir.display());
    }
    let mut modules = Vec::new();
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                modules.push(PathBuf::from(f));
            }
        }
    }
    if modules.is_empty() {
        bail!(
            "cargo built no .wasm in {}: is the crate-type cdylib?",
            dir.display()
        );
    }
    Ok(modules)
}

/// Reads input records: `offset` is the line's position (0-based).
pub fn read_records(path: &Path, values: bool) -> anyhow::Result<Vec<Record>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let offset = records.len() as i64;
        if values {
            records.push(Record {
                offset,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(line)),
                headers: Vec::new(),
            });
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not JSON (use --values for raw values)",
                path.display(),
                i + 1
            )
        })?;
        let r =
            json_bytes::record(&v).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        records.push(Record {
            offset,
            timestamp: r.timestamp.unwrap_or(0),
            key: r.key,
            value: r.value,
            headers: r.headers,
        });
    }
    Ok(records)
}

fn headers_json(headers: &[Header]) -> serde_json::Value {
    headers
        .iter()
        .map(|h| (h.key.clone(), json_bytes::to_json(&h.value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn record_json(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": json_bytes::to_json(&r.key),
        "value": json_bytes::to_json(&r.value),
        "headers": headers_json(&r.headers),
    })
}

fn new_record_json(from_offset: i64, r: &NewRecord) -> serde_json::Value {
    serde_json::json!({
        "from_offset": from_offset,
        "timestamp": r.timestamp,
        "key": json_bytes::to_json(&r.key),
        "value": json_bytes::to_json(&r.value),
        "headers": headers_json(&r.headers),
    })
}

fn test(args: TestArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.module).with_context(|| args.module.display().to_string())?;
    let host = Host::new(HostConfig::default())?;
    let plugin = host
        .load(&wasm)
        .with_context(|| format!("loading {}", args.module.display()))?;
    let limits = Limits {
        batch_time_max_ms: args.batch_time_max_ms,
        memory_max_bytes: args.memory_max_bytes,
    };
    let mut instance = plugin.instantiate(&args.params, limits)?;
    let records = read_records(&args.input, args.values)?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut n_out, mut n_errors) = (0usize, 0usize);
    let mut result = Ok(());
    for batch in records.chunks(args.batch_size.max(1)) {
        let output = match instance.run(batch, args.partitions) {
            Ok(output) => output,
            Err(failure) => {
                result = Err(anyhow::anyhow!(
                    "batch starting at offset {} failed: {failure}",
                    batch[0].offset
                ));
                break;
            }
        };
        let mut error = |out: &mut dyn Write, r: &Record, message: &str| -> anyhow::Result<()> {
            n_errors += 1;
            writeln!(
                out,
                "{}",
                serde_json::json!({"offset": r.offset, "error": message})
            )?;
            Ok(())
        };
        match output {
            BatchOutput::Filter(keep) => {
                for (r, k) in batch.iter().zip(keep) {
                    match k {
                        Ok(true) => {
                            n_out += 1;
                            writeln!(stdout, "{}", record_json(r))?;
                        }
                        Ok(false) => {}
                        Err(e) => error(&mut stdout, r, &e)?,
                    }
                }
            }
            BatchOutput::Transform(outs) => {
                for (r, o) in batch.iter().zip(outs) {
                    match o {
                        Ok(new_records) => {
                            for n in &new_records {
                                n_out += 1;
                                writeln!(stdout, "{}", new_record_json(r.offset, n))?;
                            }
                        }
                        Err(e) => error(&mut stdout, r, &e)?,
                    }
                }
            }
            BatchOutput::Partition(parts) => {
                for (r, p) in batch.iter().zip(parts) {
                    match p {
                        Ok(p) => {
                            n_out += 1;
                            let mut j = record_json(r);
                            j["partition"] = p.into();
                            writeln!(stdout, "{j}")?;
                        }
                        Err(e) => error(&mut stdout, r, &e)?,
                    }
                }
            }
        }
    }
    stdout.flush()?;
    let (lines, dropped) = instance.take_logs();
    for line in lines {
        let stream = match line.stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        eprintln!("plugin {stream}: {}", line.text);
    }
    if dropped > 0 {
        eprintln!("plugin output: {dropped} lines dropped by the rate cap");
    }
    eprintln!(
        "{} ({}): {} records in, {n_out} out, {n_errors} record errors",
        args.module.display(),
        plugin.kind(),
        records.len()
    );
    result
}
