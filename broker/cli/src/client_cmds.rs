//! kcat-style client commands: topics, produce from stdin, consume to stdout.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use meridian_client::{
    Acks, Assignor, AutoOffsetReset, Compression, ConsumerConfig, ConsumerRecord, ErrorCode,
    GroupConfig, NewTopic, Offset, ProducerConfig, ProducerRecord, TopicConfigChanges,
};
use tokio::io::AsyncBufReadExt;

use crate::json_bytes;
use crate::ConnectArgs;

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Default: the broker's `default_partitions`.
        #[arg(long, short, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: Option<u32>,
        /// Default: the cluster's `cluster.default_replication_factor` (1 on a
        /// single broker).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        replication_factor: Option<u16>,
        /// Topic setting, repeatable: `--config retention.ms=3600000`.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Only ask the broker whether it would create the topic; create nothing.
        #[arg(long, visible_alias = "validate-only")]
        dry_run: bool,
        /// A topic of this name that exists already is not an error (it is left as
        /// it is, whatever its settings).
        #[arg(long)]
        if_not_exists: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List topic names.
    List {
        /// Include internal topics (`__consumer_offsets`).
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a topic's settings, plugin chain and partitions.
    Describe {
        name: String,
        /// One JSON object instead of the text (for scripts: `jq
        /// '.configs["retention.ms"].value'`, `jq '.partitions[].high_watermark'`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Change a topic's settings or add partitions to it. Both parts are checked by
    /// the broker before either is applied.
    #[command(arg_required_else_help = true)]
    Alter {
        name: String,
        /// Raise the partition count to this (partitions cannot be removed; keyed
        /// records may map to other partitions from then on).
        #[arg(long, short)]
        partitions: Option<u32>,
        /// Set a topic setting, repeatable: `--config retention.ms=3600000`.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Revert a setting to the broker default, repeatable.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
        /// Only ask the broker whether it would accept the changes; change nothing.
        #[arg(long, visible_alias = "validate-only")]
        dry_run: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a topic and its data.
    Delete {
        #[arg(required_unless_present = "id")]
        name: Option<String>,
        /// Delete the topic with this ID (as `topic describe` prints it) instead of
        /// naming it: that topic, never one created since under its name.
        #[arg(long, conflicts_with = "name")]
        id: Option<meridian_client::TopicId>,
        /// A topic that does not exist is not an error.
        #[arg(long)]
        if_exists: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete the records below an offset (Kafka's delete-records): the offset becomes
    /// the partition's log start offset, and reads below it fail with OffsetOutOfRange.
    TruncateBefore {
        name: String,
        /// Partition to truncate, repeatable (default: every partition).
        #[arg(long, short)]
        partition: Vec<u32>,
        /// The new log start offset, or `latest` for everything written so far.
        #[arg(long)]
        offset: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Append a deployed plugin to the topic's produce chain.
    Attach(crate::plugin_cmds::AttachArgs),
    /// Remove a plugin from the topic's produce chain.
    Detach(crate::plugin_cmds::DetachArgs),
}

/// `KEY=VALUE`, trimmed.
fn key_value(entry: &str) -> anyhow::Result<(&str, &str)> {
    let (k, v) = entry
        .split_once('=')
        .with_context(|| format!("--config `{entry}` is not KEY=VALUE"))?;
    Ok((k.trim(), v.trim()))
}

pub async fn topic(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Attach(args) => crate::plugin_cmds::attach(args).await?,
        TopicCommand::Detach(args) => crate::plugin_cmds::detach(args).await?,
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            dry_run,
            if_not_exists,
            connect,
        } => {
            let mut topic = NewTopic::new(name.clone(), partitions.unwrap_or(0))
                .replication_factor(replication_factor.unwrap_or(0));
            for entry in &configs {
                let (k, v) = key_value(entry)?;
                topic = topic.config(k, v);
            }
            let admin = connect.connect().await?.admin();
            let mut would_be = None;
            let outcome = if dry_run {
                admin
                    .validate_create_topic(topic)
                    .await
                    .map(|t| would_be = t)
            } else {
                admin.create_topic(topic).await
            };
            match outcome {
                Err(e) if if_not_exists && e.code() == Some(ErrorCode::TopicAlreadyExists) => {
                    match described(&admin, &name).await? {
                        Some(existing) => println!(
                            "topic {name} already exists with {} partition(s), replication factor {}; left as it is",
                            existing.partitions.len(),
                            existing.replication_factor
                        ),
                        None => println!("topic {name} already exists; left as it is"),
                    }
                    return Ok(());
                }
                outcome => outcome?,
            }
            if dry_run {
                match would_be {
                    Some(t) => println!(
                        "topic {name} can be created with {} partition(s), replication factor {} (dry run: nothing created)",
                        t.partitions, t.replication_factor
                    ),
                    None => println!(
                        "topic {name} can be created as given (dry run: nothing created)"
                    ),
                }
                return Ok(());
            }
            // What the defaults came to.
            match described(&admin, &name).await? {
                Some(created) => println!(
                    "created topic {name} with {} partition(s), replication factor {}",
                    created.partitions.len(),
                    created.replication_factor
                ),
                None => println!(
                    "created topic {name} (this client may not describe it, so its partition count and replication factor are not shown)"
                ),
            }
        }
        TopicCommand::List { internal, connect } => {
            let admin = connect.connect().await?.admin();
            let names = if internal {
                admin.list_all_topics().await?
            } else {
                admin.list_topics().await?
            };
            for name in names {
                println!("{name}");
            }
        }
        TopicCommand::Describe {
            name,
            json,
            connect,
        } => {
            let admin = connect.connect().await?.admin();
            let d = admin.describe_topic(&name).await?;
            if json {
                println!("{}", topic_json(&d));
                return Ok(());
            }
            println!(
                "topic: {}  partitions: {}  replication-factor: {}",
                d.name,
                d.partitions.len(),
                d.replication_factor
            );
            // A broker from before topic IDs names none.
            if !d.id.is_none() {
                println!("id: {}", d.id);
            }
            println!("configs:");
            let width = d.configs.iter().map(|c| c.key.len()).max().unwrap_or(0);
            for c in &d.configs {
                println!(
                    "  {:<width$} {}{}",
                    c.key,
                    c.value,
                    if c.is_default { "  (default)" } else { "" }
                );
            }
            if !d.plugins.is_empty() {
                // Kinds from the plugin list; a broker that cannot list them leaves
                // the kinds out rather than the chain.
                let kinds: std::collections::HashMap<String, String> = admin
                    .list_plugins()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| (p.name, p.kind))
                    .collect();
                println!("plugins (in attach order; a partitioner routes before the rest run):");
                for (i, a) in d.plugins.iter().enumerate() {
                    let kind = kinds
                        .get(&a.plugin)
                        .map_or(String::new(), |k| format!(" ({k})"));
                    let params: String = a
                        .params
                        .iter()
                        .map(|(k, v)| format!("  --param {k}={v}"))
                        .collect();
                    println!(
                        "  {}. {}{kind}{params}  --on-failure {}  --batch-time-max-ms {}  --memory-max-bytes {}",
                        i + 1,
                        a.plugin,
                        a.on_failure,
                        a.batch_time_max_ms,
                        a.memory_max_bytes
                    );
                }
            }
            println!(
                "{:>9} {:>14} {:>14} {:>12} {:>8}  status",
                "partition", "log-start", "high-watermark", "size-bytes", "segments"
            );
            for p in &d.partitions {
                let status = if p.error.is_ok() {
                    "online".to_string()
                } else {
                    p.error.name().to_string()
                };
                println!(
                    "{:>9} {:>14} {:>14} {:>12} {:>8}  {status}",
                    p.partition, p.log_start_offset, p.high_watermark, p.size_bytes, p.segments
                );
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
            dry_run,
            connect,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                anyhow::bail!("nothing to change: give --partitions, --config or --delete-config");
            }
            let mut changes = TopicConfigChanges::new();
            for entry in &configs {
                let (k, v) = key_value(entry)?;
                changes = changes.set(k, v);
            }
            for key in &delete_configs {
                changes = changes.reset(key.trim());
            }
            let settings = !(configs.is_empty() && delete_configs.is_empty());
            let admin = connect.connect().await?.admin();
            // Both parts are checked before either is applied, so a refused partition
            // count does not leave the settings changed, nor the other way round. A
            // broker from before such checks cannot make them without applying the
            // changes (UnsupportedVersion): then only a dry run fails.
            let checked = |result: meridian_client::Result<()>| match result {
                Err(e) if !dry_run && e.code() == Some(ErrorCode::UnsupportedVersion) => Ok(()),
                result => result,
            };
            if settings {
                checked(admin.validate_topic_configs(&name, changes.clone()).await)?;
            }
            if let Some(count) = partitions {
                checked(admin.validate_create_partitions(&name, count).await)?;
            }
            let (set, reverted, grown) = if dry_run {
                ("would set", "would revert", "would have")
            } else {
                ("set", "reverted", "now has")
            };
            if settings && !dry_run {
                admin.alter_topic_configs(&name, changes).await?;
            }
            for entry in &configs {
                let (k, v) = key_value(entry)?;
                println!("{set} {k}={v} on topic {name}");
            }
            for key in &delete_configs {
                println!("{reverted} {} to the default on topic {name}", key.trim());
            }
            if let Some(count) = partitions {
                if !dry_run {
                    admin.create_partitions(&name, count).await?;
                }
                println!("topic {name} {grown} {count} partitions");
            }
            if dry_run {
                println!("dry run: the broker accepts these changes; nothing was changed");
            }
        }
        TopicCommand::Delete {
            name: _,
            id: Some(id),
            if_exists,
            connect,
        } => {
            // clap: --id comes without a name.
            match connect
                .connect()
                .await?
                .admin()
                .delete_topic_by_id(id)
                .await
            {
                Err(e) if if_exists && e.code() == Some(ErrorCode::UnknownTopicId) => {
                    println!("no topic has ID {id}; nothing deleted");
                }
                outcome => println!("deleted topic {} (ID {id})", outcome?),
            }
        }
        TopicCommand::Delete {
            name,
            id: None,
            if_exists,
            connect,
        } => {
            let name = name.expect("clap: a name unless --id");
            match connect.connect().await?.admin().delete_topic(&name).await {
                Err(e) if if_exists && e.code() == Some(ErrorCode::UnknownTopic) => {
                    println!("topic {name} does not exist; nothing deleted");
                }
                outcome => {
                    outcome?;
                    println!("deleted topic {name}");
                }
            }
        }
        TopicCommand::TruncateBefore {
            name,
            partition,
            offset,
            connect,
        } => {
            let offset = match offset.as_str() {
                "latest" | "end" => Offset::Latest,
                s => Offset::At(
                    s.parse()
                        .ok()
                        .filter(|o: &i64| *o >= 0)
                        .with_context(|| format!("--offset {s}: expected an offset or latest"))?,
                ),
            };
            let admin = connect.connect().await?.admin();
            let partitions = if partition.is_empty() {
                let n = admin.describe_topic(&name).await?.partitions.len() as u32;
                (0..n).collect()
            } else {
                partition
            };
            let asks: Vec<(u32, Offset)> = partitions.iter().map(|&p| (p, offset)).collect();
            let mut failed = 0;
            for (p, result) in admin.delete_records(&name, &asks).await? {
                match result {
                    Ok(start) => println!("{name}/{p}: log start offset {start}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{name}/{p}: {e}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} partition(s) were not truncated");
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value (lines without it get no key).
    #[arg(long, short = 'K')]
    pub key_separator: Option<String>,
    /// Send every record to this partition (default: by key, or spread when no key);
    /// `4294967295` (UNASSIGNED_PARTITION) lets the topic's partitioner plugin route them.
    #[arg(long, short)]
    pub partition: Option<u32>,
    /// none, gzip, snappy, lz4 or zstd: the CLI compresses each batch, the broker
    /// stores it as sent.
    #[arg(long, short = 'z', default_value = "none")]
    pub compression: Compression,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    #[arg(long, default_value_t = 16 * 1024)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Print `partition offset` of each record as it is acknowledged.
    #[arg(long, short)]
    pub verbose: bool,
    /// A header on every record, repeatable: `-H source=billing` (kcat's -H).
    /// `consume --format json` shows them.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = crate::plugin_cmds::parse_param)]
    pub headers: Vec<(String, String)>,
    /// How stdin is read: `lines` (each line a value, or key and value with -K), or
    /// `json`: each line an object as `consume --format json` prints one (key, value,
    /// headers and timestamp are kept; strings, `{"base64": …}` or null), so
    /// `consume --format json | produce --format json` copies records.
    #[arg(long, short = 'f', value_enum, default_value = "lines")]
    pub format: InputFormat,
    /// With --format json: send each record to the partition its line names (by key
    /// or spread when it names none).
    #[arg(long)]
    pub keep_partition: bool,
    /// An empty value is null: with -K, `alice:` is a tombstone that deletes `alice`
    /// from a compacted topic (kcat's -Z).
    #[arg(long, short = 'Z')]
    pub empty_as_null: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Lines,
    Json,
}

/// The record line `n` (from 1) of `produce`'s input stands for.
fn input_record(args: &ProduceArgs, line: String, n: u64) -> anyhow::Result<ProducerRecord> {
    let mut record = match args.format {
        InputFormat::Lines => {
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::copy_from_slice(k.as_bytes())), v.to_owned()),
                    None => (None, line),
                },
                None => (None, line),
            };
            let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value));
            record.key = key;
            if args.empty_as_null && record.value.as_ref().is_some_and(|v| v.is_empty()) {
                record.value = None;
            }
            record
        }
        InputFormat::Json => {
            let parsed = serde_json::from_str(&line)
                .map_err(anyhow::Error::from)
                .and_then(|v| crate::json_bytes::record(&v))
                .with_context(|| format!("line {n} of stdin"))?;
            ProducerRecord {
                topic: args.topic.clone(),
                partition: parsed.partition.filter(|_| args.keep_partition),
                key: parsed.key,
                value: parsed.value,
                headers: parsed.headers,
                timestamp: parsed.timestamp,
            }
        }
    };
    if let Some(p) = args.partition {
        record = record.partition(p);
    }
    for (k, v) in &args.headers {
        record = record.header(k.clone(), Bytes::copy_from_slice(v.as_bytes()));
    }
    Ok(record)
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    match args.format {
        InputFormat::Lines if args.keep_partition => {
            anyhow::bail!("--keep-partition reads the partition of JSON lines: add --format json")
        }
        InputFormat::Json if args.key_separator.is_some() => {
            anyhow::bail!("-K splits lines into key and value; JSON lines carry their own key")
        }
        _ => {}
    }
    let client = args.connect.connect().await?;
    let config = ProducerConfig {
        batch_size: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        compression: args.compression,
        acks: args.acks,
        ..ProducerConfig::default()
    };
    let producer = client.producer(config);
    // Acknowledgements are awaited in send order by a second task, so sending never
    // waits for a round trip while -v still prints offsets in input order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<meridian_client::DeliveryFuture>(10_000);
    let verbose = args.verbose;
    let printer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(delivery) = rx.recv().await {
            let meta = delivery.await?;
            n += 1;
            if verbose {
                writeln!(std::io::stdout(), "{} {}", meta.partition, meta.offset)?;
            }
        }
        anyhow::Ok(n)
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        n += 1;
        if args.format == InputFormat::Json && line.trim().is_empty() {
            continue;
        }
        let record = input_record(&args, line, n)?;
        let delivery = producer.send(record).await?;
        if tx.send(delivery).await.is_err() {
            break; // The printer stopped on an error; it is reported below.
        }
    }
    drop(tx);
    producer.flush().await?;
    let n = printer.await??;
    if verbose {
        eprintln!("produced {n} record(s) to {}", args.topic);
    }
    Ok(())
}

/// How `consume` prints each record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// The value only.
    Value,
    /// partition, offset, timestamp, key and value, tab-separated.
    Full,
    /// One JSON object per line.
    Json,
    /// A kcat-style template (`--format '%k=%s\n'`).
    Template(Vec<Piece>),
}

/// A part of a [`Format::Template`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    /// `key=value` pairs joined by `,`.
    Headers,
    /// Length in bytes, `-1` when null.
    KeyLength,
    ValueLength,
}

/// `value`, `full`, `json`, or a template with `%` fields: `%t` topic, `%p`
/// partition, `%o` offset, `%T` timestamp (ms), `%k` key, `%s` value, `%h` headers,
/// `%K` / `%S` key / value length (-1 when null), `%%` a percent sign; `\n`, `\t`
/// and `\\` are a newline, a tab and a backslash.
fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "value" => return Ok(Format::Value),
        "full" => return Ok(Format::Full),
        "json" => return Ok(Format::Json),
        _ => {}
    }
    if !s.contains('%') {
        return Err(format!(
            "`{s}`: expected value, full, json, or a template with % fields such as '%k=%s\\n'"
        ));
    }
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let piece = match c {
            '%' => match chars.next() {
                Some('t') => Piece::Topic,
                Some('p') => Piece::Partition,
                Some('o') => Piece::Offset,
                Some('T') => Piece::Timestamp,
                Some('k') => Piece::Key,
                Some('s') => Piece::Value,
                Some('h') => Piece::Headers,
                Some('K') => Piece::KeyLength,
                Some('S') => Piece::ValueLength,
                Some('%') => {
                    text.push(b'%');
                    continue;
                }
                Some(other) => return Err(format!("`{s}`: unknown field %{other}")),
                None => return Err(format!("`{s}`: a lone % at the end")),
            },
            '\\' => {
                let escaped = match chars.next() {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('\\') => '\\',
                    Some(other) => return Err(format!("`{s}`: unknown escape \\{other}")),
                    None => return Err(format!("`{s}`: a lone \\ at the end")),
                };
                text.extend_from_slice(escaped.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            c => {
                text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(piece);
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Format::Template(pieces))
}

#[derive(Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// earliest, latest, an offset, @TIMESTAMP_MS, or -N: the last N offsets of
    /// each partition (kcat's `-o -N`; with --follow, like `tail -n N -f`).
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
    pub from: String,
    /// Stop after N records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// value, full (partition, offset, timestamp, key, value), json, or a kcat-style
    /// template: %t topic, %p partition, %o offset, %T timestamp (ms), %k key,
    /// %s value, %h headers (k=v,…), %K / %S key / value length (-1 when null),
    /// %% a percent sign; \n and \t escapes. Example: '%p:%o %k=%s\n'.
    #[arg(long, short, default_value = "value", value_parser = parse_format)]
    pub format: Format,
    /// Keep waiting for new records (like `tail -f`) instead of stopping at the end.
    #[arg(long, short = 'F')]
    pub follow: bool,
    /// Stop each partition before this offset, or with @TIMESTAMP_MS before its first
    /// record at or after that time (`--from @T1 --until @T2`: the records of
    /// [T1, T2)).
    #[arg(long, value_name = "OFFSET|@TIMESTAMP_MS", conflicts_with_all = ["follow", "group"])]
    pub until: Option<String>,
    /// Only these partitions (repeatable); default all.
    #[arg(long, short)]
    pub partition: Vec<u32>,
    /// Consume as a member of this consumer group: partitions come from the group,
    /// reading resumes from its committed offsets (`--from earliest|latest|none` says
    /// where to start without one), and positions are committed as records print.
    /// Runs until -n records, --idle-exit-ms, Ctrl-C or SIGTERM (each commits and leaves the group).
    #[arg(long, short)]
    pub group: Option<String>,
    /// Group assignor: cooperative-sticky, range or roundrobin.
    #[arg(long, default_value = "cooperative-sticky", requires = "group")]
    pub assignor: String,
    /// Static membership: a restart with the same id keeps the partitions.
    #[arg(long, requires = "group")]
    pub instance_id: Option<String>,
    #[arg(long, default_value_t = 45_000, requires = "group")]
    pub session_timeout_ms: u64,
    /// How often positions are committed.
    #[arg(long, default_value_t = 5_000, requires = "group")]
    pub commit_interval_ms: u64,
    /// With --group: exit after this long without a record.
    #[arg(long, requires = "group")]
    pub idle_exit_ms: Option<u64>,
    /// When a position is outside the log (e.g. retention deleted it): move to the
    /// `earliest` or `latest` offset, or stop with the error (`none`). With --group,
    /// --from sets this (it also says where to start without a committed offset).
    #[arg(long, default_value = "none")]
    pub auto_offset_reset: AutoOffsetReset,
    /// Deployed filter plugin the broker runs over the fetched records.
    #[arg(long)]
    pub filter: Option<String>,
    /// Parameter of --filter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = crate::plugin_cmds::parse_param, requires = "filter")]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(crate) fn parse_from(from: &str) -> anyhow::Result<Offset> {
    Ok(match from {
        "earliest" | "beginning" => Offset::Earliest,
        "latest" | "end" => Offset::Latest,
        s if s.starts_with('@') => Offset::Timestamp(
            s[1..]
                .parse()
                .with_context(|| format!("--from {s}: expected @TIMESTAMP_MS"))?,
        ),
        s => Offset::At(s.parse().ok().filter(|o: &i64| *o >= 0).with_context(|| {
            format!("--from {s}: expected earliest, latest, OFFSET or @TIMESTAMP_MS")
        })?),
    })
}

/// `--from -N` of `consume`: how many offsets before each partition's end to start.
fn parse_back(from: &str) -> anyhow::Result<Option<i64>> {
    let Some(n) = from.strip_prefix('-') else {
        return Ok(None);
    };
    let n = n.parse::<i64>().ok().filter(|n| *n >= 0).with_context(|| {
        format!("--from {from}: expected -N, a count of offsets before the end")
    })?;
    Ok(Some(n))
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.group.is_some() {
        return consume_group(args).await;
    }
    let back = parse_back(&args.from)?;
    let from = match back {
        Some(_) => Offset::Latest, // per partition, below
        None => parse_from(&args.from)?,
    };
    let until = args
        .until
        .as_deref()
        .map(|u| parse_from(u).with_context(|| "--until".to_string()))
        .transpose()?;
    let client = args.connect.connect().await?;
    let mut consumer = client.consumer(ConsumerConfig {
        auto_offset_reset: args.auto_offset_reset,
        filter: args
            .filter
            .clone()
            .map(|plugin| meridian_client::FetchFilter {
                plugin,
                params: args.params.clone(),
            }),
        ..ConsumerConfig::default()
    });
    let partitions = if args.partition.is_empty() {
        consumer.assign_all(&args.topic).await?
    } else {
        consumer.assign(&args.topic, &args.partition).await?;
        args.partition.clone()
    };
    let admin = client.admin();
    // Without --follow, stop at the end of each partition as it is now, or earlier
    // at --until.
    let mut ends = Vec::new();
    for &p in &partitions {
        // The partition's end as it is now: where -N counts back from, and where
        // reading stops without --follow.
        let end = match (back, args.follow) {
            (None, true) => None,
            _ => Some(admin.list_offsets(&args.topic, p, Offset::Latest).await?),
        };
        let from = match (back, end) {
            (Some(n), Some(end)) => {
                let start = admin.list_offsets(&args.topic, p, Offset::Earliest).await?;
                Offset::At(end.saturating_sub(n).max(start))
            }
            _ => from,
        };
        consumer.seek(&args.topic, p, from).await?;
        if let (Some(end), false) = (end, args.follow) {
            if let Offset::At(offset) = from {
                if offset > end {
                    // Past the end is out of range, as a fetch there says (with
                    // --follow, or below the log start): without this the check
                    // below took it for the end and printed nothing.
                    let reset = match args.auto_offset_reset {
                        AutoOffsetReset::Earliest => Offset::Earliest,
                        AutoOffsetReset::Latest => Offset::Latest,
                        AutoOffsetReset::None => {
                            let start =
                                admin.list_offsets(&args.topic, p, Offset::Earliest).await?;
                            anyhow::bail!(
                                "OffsetOutOfRange: {}/{p} at offset {offset}: offset {offset} is outside the log [{start}, {end}]",
                                args.topic
                            );
                        }
                    };
                    consumer.seek(&args.topic, p, reset).await?;
                }
            }
            let stop = match until {
                // A time after every record resolves to the log end; never past `end`.
                Some(at) => match admin.list_offsets(&args.topic, p, at).await? {
                    offset if offset < 0 => end,
                    offset => offset.min(end),
                },
                None => end,
            };
            ends.push((p, stop));
        }
    }
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        if printed >= limit {
            break;
        }
        if !args.follow
            && ends.iter().all(|(p, end)| {
                consumer
                    .position(&args.topic, *p)
                    .is_some_and(|pos| pos >= *end)
            })
        {
            break;
        }
        let records = consumer.poll(Duration::from_millis(500)).await?;
        if records.is_empty() && args.follow && crate::stdout_reader_gone() {
            // `--follow | head -3`: the reader has what it wanted.
            break;
        }
        for record in records {
            if printed >= limit {
                break;
            }
            if let Some((_, end)) = ends.iter().find(|(p, _)| *p == record.partition) {
                if record.offset >= *end {
                    continue;
                }
            }
            print_record(&mut stdout, &record, &args.format)?;
            printed += 1;
        }
        if args.follow {
            stdout.flush()?;
        }
    }
    stdout.flush()?;
    Ok(())
}

async fn consume_group(args: ConsumeArgs) -> anyhow::Result<()> {
    let group_id = args.group.clone().expect("checked by the caller");
    let reset = match args.from.as_str() {
        "earliest" | "beginning" => AutoOffsetReset::Earliest,
        "latest" | "end" => AutoOffsetReset::Latest,
        "none" => AutoOffsetReset::None,
        other => anyhow::bail!(
            "--from {other}: with --group, --from says where to start without a committed offset: earliest, latest or none \
             (use `meridian group reset-offsets` to move a group)"
        ),
    };
    let assignor = Assignor::parse(&args.assignor).with_context(|| {
        format!(
            "--assignor {}: expected cooperative-sticky, range or roundrobin",
            args.assignor
        )
    })?;
    if !args.partition.is_empty() {
        anyhow::bail!("--partition and --group exclude each other: the group assigns partitions");
    }
    let client = args.connect.connect().await?;
    let mut consumer = client.consumer(ConsumerConfig {
        auto_offset_reset: reset,
        ..ConsumerConfig::default()
    });
    let config = GroupConfig {
        instance_id: args.instance_id.clone(),
        client_id: "meridian-cli".into(),
        assignor,
        session_timeout: Duration::from_millis(args.session_timeout_ms),
        auto_commit_interval: Duration::from_millis(args.commit_interval_ms),
        ..GroupConfig::new(group_id)
    };
    consumer.subscribe(config, &[&args.topic]).await?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut reader_gone = false;
    let mut last_record = std::time::Instant::now();
    // Ctrl-C or SIGTERM (`kill`, `timeout`, a service manager) ends the member
    // cleanly: it commits what it printed and leaves the group, so its partitions go
    // to the others at once instead of after the session timeout.
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    while printed < limit {
        if args
            .idle_exit_ms
            .is_some_and(|ms| last_record.elapsed() >= Duration::from_millis(ms))
        {
            break;
        }
        let records = tokio::select! {
            records = consumer.poll(Duration::from_millis(200)) => records?,
            () = &mut stop => break,
        };
        if !records.is_empty() {
            last_record = std::time::Instant::now();
        } else if crate::stdout_reader_gone() {
            // `| head -3` has ended while no record came to fail writing: commit
            // what was printed and leave, as on a write to the closed pipe.
            reader_gone = true;
            break;
        }
        // Only what was returned by `poll` can be committed; print it all and flush
        // before the next poll may commit it, so a crash never skips a record.
        let mut n_print = records.len().min((limit - printed) as usize);
        let written = records[..n_print]
            .iter()
            .try_for_each(|record| print_record(&mut stdout, record, &args.format))
            .and_then(|()| Ok(stdout.flush()?));
        if let Err(e) = written {
            if !crate::is_broken_pipe(&e) {
                return Err(e);
            }
            // What read the output has gone (`| head`): which of these records it
            // got is unknown, so none counts as printed; the member commits what it
            // printed before and leaves, as on Ctrl-C.
            reader_gone = true;
            n_print = 0;
        }
        printed += n_print as u64;
        // Stopping inside a batch: rewind to the first record not printed, so the
        // commit on close does not cover it.
        let mut rewound = std::collections::BTreeSet::new();
        for record in &records[n_print..] {
            if rewound.insert(record.partition) {
                consumer
                    .seek(&record.topic, record.partition, Offset::At(record.offset))
                    .await?;
            }
        }
        if reader_gone {
            break;
        }
    }
    if !reader_gone {
        stdout.flush()?;
    }
    // A BufWriter holding what a closed pipe refused drops it here.
    drop(stdout);
    consumer.close().await?;
    Ok(())
}

/// What `topic describe --json` prints: the facts of the text, settings keyed by
/// name, partitions with `-1` offsets (a broker without a replica) as `null`.
fn topic_json(d: &meridian_client::TopicDescription) -> serde_json::Value {
    use serde_json::json;
    let configs: serde_json::Map<String, serde_json::Value> = d
        .configs
        .iter()
        .map(|c| {
            let value = json!({"value": c.value, "default": c.is_default});
            (c.key.clone(), value)
        })
        .collect();
    let plugins: Vec<serde_json::Value> = d
        .plugins
        .iter()
        .map(|a| {
            let params: serde_json::Map<String, serde_json::Value> = a
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            json!({
                "plugin": a.plugin,
                "params": params,
                "on_failure": a.on_failure,
                "batch_time_max_ms": a.batch_time_max_ms,
                "memory_max_bytes": a.memory_max_bytes,
            })
        })
        .collect();
    let known = |v: i64| (v >= 0).then_some(v);
    let partitions: Vec<serde_json::Value> = d
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "log_start_offset": known(p.log_start_offset),
                "high_watermark": known(p.high_watermark),
                "size_bytes": p.size_bytes,
                "segments": p.segments,
                "status": if p.error.is_ok() { "online" } else { p.error.name() },
            })
        })
        .collect();
    json!({
        "topic": d.name,
        "id": (!d.id.is_none()).then(|| d.id.to_string()),
        "replication_factor": d.replication_factor,
        "configs": configs,
        "plugins": plugins,
        "partitions": partitions,
    })
}

/// A key or value as its bytes; a null one as none.
fn raw(bytes: &Option<Bytes>) -> &[u8] {
    bytes.as_deref().unwrap_or_default()
}

fn print_record(
    out: &mut impl Write,
    record: &ConsumerRecord,
    format: &Format,
) -> anyhow::Result<()> {
    // Keys and values go out as their bytes, not as text: a binary payload piped to
    // a file arrives intact (a null one prints as nothing).
    match format {
        Format::Value => {
            out.write_all(raw(&record.value))?;
            out.write_all(b"\n")?;
        }
        Format::Full => {
            write!(
                out,
                "{}\t{}\t{}\t",
                record.partition, record.offset, record.timestamp
            )?;
            out.write_all(raw(&record.key))?;
            out.write_all(b"\t")?;
            out.write_all(raw(&record.value))?;
            out.write_all(b"\n")?;
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = record
                .headers
                .iter()
                .map(|h| (h.key.clone(), json_bytes::to_json(&h.value)))
                .collect();
            let object = serde_json::json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
                "key": json_bytes::to_json(&record.key),
                "value": json_bytes::to_json(&record.value),
                "headers": headers,
            });
            writeln!(out, "{object}")?;
        }
        Format::Template(pieces) => {
            let length = |b: &Option<Bytes>| b.as_ref().map_or(-1, |b| b.len() as i64);
            for piece in pieces {
                match piece {
                    Piece::Text(text) => out.write_all(text)?,
                    Piece::Topic => out.write_all(record.topic.as_bytes())?,
                    Piece::Partition => write!(out, "{}", record.partition)?,
                    Piece::Offset => write!(out, "{}", record.offset)?,
                    Piece::Timestamp => write!(out, "{}", record.timestamp)?,
                    Piece::Key => out.write_all(raw(&record.key))?,
                    Piece::Value => out.write_all(raw(&record.value))?,
                    Piece::KeyLength => write!(out, "{}", length(&record.key))?,
                    Piece::ValueLength => write!(out, "{}", length(&record.value))?,
                    Piece::Headers => {
                        for (i, h) in record.headers.iter().enumerate() {
                            if i > 0 {
                                out.write_all(b",")?;
                            }
                            out.write_all(h.key.as_bytes())?;
                            out.write_all(b"=")?;
                            out.write_all(raw(&h.value))?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// `name` described, or `None` when `acl_file` lets this client create topics but not
/// describe them.
async fn described(
    admin: &meridian_client::Admin,
    name: &str,
) -> anyhow::Result<Option<meridian_client::TopicDescription>> {
    match admin.describe_topic(name).await {
        Ok(description) => Ok(Some(description)),
        Err(e) if e.code() == Some(ErrorCode::TopicAuthorizationFailed) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: &str, record: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        print_record(&mut out, record, &parse_format(format).unwrap()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates_print_each_field() {
        let record = ConsumerRecord {
            topic: "orders".into(),
            partition: 2,
            leader_epoch: 0,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"alice")),
            value: Some(Bytes::from_static(b"book")),
            headers: vec![
                meridian_client::Header {
                    key: "source".into(),
                    value: Some(Bytes::from_static(b"cli")),
                },
                meridian_client::Header {
                    key: "empty".into(),
                    value: None,
                },
            ],
        };
        assert_eq!(
            render(r"%t/%p@%o %T %k=%s [%h] %K %S 100%%\\\t\n", &record),
            "orders/2@41 1700000000000 alice=book [source=cli,empty=] 5 4 100%\\\t\n"
        );
        let null = ConsumerRecord {
            key: None,
            value: None,
            headers: Vec::new(),
            ..record
        };
        assert_eq!(render("%K %S <%k><%s><%h>", &null), "-1 -1 <><><>");
        assert_eq!(parse_format("json").unwrap(), Format::Json);
        for bad in ["%x", "ends in %", "no fields", "\\q%s", "%s\\"] {
            assert!(parse_format(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_parses_every_form() {
        assert_eq!(parse_from("earliest").unwrap(), Offset::Earliest);
        assert_eq!(parse_from("latest").unwrap(), Offset::Latest);
        assert_eq!(parse_from("42").unwrap(), Offset::At(42));
        assert_eq!(
            parse_from("@1700000000000").unwrap(),
            Offset::Timestamp(1_700_000_000_000)
        );
        assert!(parse_from("soon").is_err());
        assert!(parse_from("-3").is_err());
        assert_eq!(parse_back("-3").unwrap(), Some(3));
        assert_eq!(parse_back("12").unwrap(), None);
        assert!(parse_back("-x").is_err());
        assert!(parse_back("--3").is_err());
        assert!(parse_from("@soon").is_err());
    }
}
