//! `meridian group list|describe|reset-offsets|delete-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use meridian_client::{Admin, ErrorCode, Offset, OffsetCommit};

use crate::client_cmds::parse_from;
use crate::ConnectArgs;

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List consumer groups and their state.
    List {
        /// One JSON array of `{"group", "state"}`, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a group's members, assignments, committed offsets and lag.
    Describe {
        group: String,
        /// One JSON object instead of the text (for lag monitoring: `jq
        /// '[.partitions[].lag // 0] | add'`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Move a group's committed offsets (only while the group has no active members).
    ResetOffsets(ResetArgs),
    /// Delete a group's committed offsets of a topic (refused while a member
    /// subscribes to it), e.g. of a topic the group no longer reads.
    DeleteOffsets {
        group: String,
        /// The topic whose committed offsets to delete (it may no longer exist).
        #[arg(long)]
        topic: String,
        /// Only these partitions (repeatable); default every one the group committed.
        #[arg(long, short)]
        partition: Vec<u32>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a group and its committed offsets (only while it has no active members).
    Delete {
        group: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(Args)]
pub struct ResetArgs {
    pub group: String,
    /// The topic whose offsets to move.
    #[arg(long)]
    pub topic: String,
    /// earliest, latest, an offset, or @TIMESTAMP_MS.
    #[arg(long, required_unless_present = "shift_by")]
    pub to: Option<String>,
    /// Move each committed offset by N (negative: back, to read again), within the
    /// log. A partition without a committed offset is refused.
    #[arg(
        long,
        value_name = "N",
        allow_hyphen_values = true,
        conflicts_with = "to"
    )]
    pub shift_by: Option<i64>,
    /// Only these partitions (repeatable); default all.
    #[arg(long, short)]
    pub partition: Vec<u32>,
    /// Print the new offsets without committing them.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { json, connect } => {
            let client = connect.connect().await?;
            let groups = client.admin().list_groups().await?;
            if json {
                let all: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|g| serde_json::json!({"group": g.group_id, "state": g.state}))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
                return Ok(());
            }
            println!("{:<40} STATE", "GROUP");
            for g in groups {
                println!("{:<40} {}", g.group_id, g.state);
            }
        }
        GroupCommand::Describe {
            group,
            json,
            connect,
        } => {
            let client = connect.connect().await?;
            describe(&client.admin(), &group, json).await?;
        }
        GroupCommand::ResetOffsets(args) => {
            let client = args.connect.connect().await?;
            reset(&client.admin(), &args).await?;
        }
        GroupCommand::DeleteOffsets {
            group,
            topic,
            partition,
            connect,
        } => {
            let client = connect.connect().await?;
            let partitions = (!partition.is_empty()).then_some(partition.as_slice());
            let deleted = client
                .admin()
                .delete_committed_offsets(&group, &topic, partitions)
                .await?;
            if deleted.is_empty() {
                println!("group {group} had no committed offsets of {topic} to delete");
            } else {
                let list: Vec<String> = deleted.iter().map(u32::to_string).collect();
                println!(
                    "deleted group {group}'s committed offsets of {topic} partition(s) {}",
                    list.join(", ")
                );
            }
        }
        GroupCommand::Delete { group, connect } => {
            let client = connect.connect().await?;
            client.admin().delete_group(&group).await?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

/// One row of `group describe`: a partition the group has a commit for or a member
/// owns.
struct LagRow {
    topic: String,
    partition: u32,
    committed: Option<i64>,
    /// The log end offset; `None` when it could not be read (say, the topic is gone).
    end: Option<i64>,
    owner: Option<String>,
}

impl LagRow {
    /// Records between the commit (or, without one, offset 0) and the log end.
    fn lag(&self) -> Option<i64> {
        Some((self.end? - self.committed.unwrap_or(0)).max(0))
    }
}

async fn describe(admin: &Admin, group: &str, json: bool) -> anyhow::Result<()> {
    let committed = admin.committed_offsets(group, None).await?;
    let description = match admin.describe_group(group).await {
        Ok(d) => Some(d),
        // A group with only committed offsets and no members left is still worth showing.
        Err(e) if committed.is_empty() => return Err(e.into()),
        Err(_) => None,
    };
    let mut owners: BTreeMap<(String, u32), String> = BTreeMap::new();
    for m in description.iter().flat_map(|d| &d.members) {
        for t in &m.owned {
            for p in &t.partitions {
                owners.insert((t.topic.clone(), *p), m.member_id.clone());
            }
        }
    }
    // Every partition with a commit or an owner.
    let mut offsets: BTreeMap<(String, u32), Option<i64>> = BTreeMap::new();
    for c in &committed {
        offsets.insert((c.topic.clone(), c.partition), Some(c.offset));
    }
    for key in owners.keys() {
        offsets.entry(key.clone()).or_insert(None);
    }
    // Topics deleted since the group committed to them.
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let mut rows = Vec::new();
    for ((topic, partition), committed) in offsets {
        let end = match admin.list_offsets(&topic, partition, Offset::Latest).await {
            Ok(end) => Some(end),
            Err(e) => {
                if e.code() == Some(ErrorCode::UnknownTopic) {
                    gone.insert(topic.clone());
                }
                None
            }
        };
        let owner = owners.get(&(topic.clone(), partition)).cloned();
        rows.push(LagRow {
            topic,
            partition,
            committed,
            end,
            owner,
        });
    }
    if json {
        println!("{}", group_json(group, description.as_ref(), &rows, &gone));
        return Ok(());
    }
    match &description {
        Some(d) => {
            println!(
                "group {group}: state {}, assignor {}, epoch {}, {} members",
                d.state,
                if d.assignor.is_empty() {
                    "-"
                } else {
                    &d.assignor
                },
                d.epoch,
                d.members.len()
            );
            for m in &d.members {
                let assigned: Vec<String> = m
                    .owned
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(move |p| format!("{}/{p}", t.topic)))
                    .collect();
                println!(
                    "  member {}{} from {} ({}): {}",
                    m.member_id,
                    m.instance_id
                        .as_ref()
                        .map(|i| format!(" [instance {i}]"))
                        .unwrap_or_default(),
                    m.client_host,
                    m.client_id,
                    if assigned.is_empty() {
                        "no partitions".to_string()
                    } else {
                        assigned.join(" ")
                    }
                );
            }
        }
        None => println!("group {group}: state Empty, no members"),
    }
    println!();
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>9}  OWNER",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    let dash = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    for row in &rows {
        println!(
            "{:<24} {:>9} {:>12} {:>12} {:>9}  {}",
            row.topic,
            row.partition,
            dash(row.committed),
            dash(row.end),
            dash(row.lag()),
            row.owner.as_deref().unwrap_or("-")
        );
    }
    for topic in gone {
        println!(
            "\ntopic {topic} no longer exists; to drop the group's commits of it: meridian group delete-offsets {group} --topic {topic}"
        );
    }
    Ok(())
}

/// What `group describe --json` prints: the facts of the text, `null` for what is
/// not known (no commit, no owner, a log end that could not be read).
fn group_json(
    group: &str,
    description: Option<&meridian_client::GroupDescription>,
    rows: &[LagRow],
    gone: &BTreeSet<String>,
) -> serde_json::Value {
    use serde_json::json;
    let members: Vec<serde_json::Value> = description
        .iter()
        .flat_map(|d| &d.members)
        .map(|m| {
            let owned: Vec<serde_json::Value> = m
                .owned
                .iter()
                .map(|t| json!({"topic": t.topic, "partitions": t.partitions}))
                .collect();
            json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "owned": owned,
            })
        })
        .collect();
    let partitions: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "partition": r.partition,
                "committed": r.committed,
                "log_end": r.end,
                "lag": r.lag(),
                "owner": r.owner,
            })
        })
        .collect();
    json!({
        "group": group,
        "state": description.map_or("Empty", |d| d.state.as_str()),
        "assignor": description.map(|d| d.assignor.as_str()).filter(|a| !a.is_empty()),
        "epoch": description.map(|d| d.epoch),
        "members": members,
        "partitions": partitions,
        "deleted_topics": gone,
    })
}

async fn reset(admin: &Admin, args: &ResetArgs) -> anyhow::Result<()> {
    let to = args.to.as_deref().map(parse_from).transpose()?;
    let committed: BTreeMap<u32, i64> = match args.shift_by {
        Some(_) => admin
            .committed_offsets(&args.group, Some(&args.topic))
            .await?
            .into_iter()
            .map(|c| (c.partition, c.offset))
            .collect(),
        None => BTreeMap::new(),
    };
    let partitions: Vec<u32> = if args.partition.is_empty() {
        let n = admin.describe_topic(&args.topic).await?.partitions.len() as u32;
        (0..n).collect()
    } else {
        args.partition.clone()
    };
    let mut plan = Vec::with_capacity(partitions.len());
    for p in partitions {
        // Like Kafka's tool: an offset outside the log is clamped to its ends.
        let start = admin.list_offsets(&args.topic, p, Offset::Earliest).await?;
        let end = admin.list_offsets(&args.topic, p, Offset::Latest).await?;
        let offset = match (to, args.shift_by) {
            (Some(to), _) => admin.list_offsets(&args.topic, p, to).await?,
            (None, Some(n)) => match committed.get(&p) {
                Some(c) => c.saturating_add(n),
                None => anyhow::bail!(
                    "group {} has no committed offset for {}/{p} to shift (use --to, or -p for the partitions it has)",
                    args.group,
                    args.topic
                ),
            },
            (None, None) => unreachable!("clap requires --to or --shift-by"),
        };
        plan.push(OffsetCommit::new(
            args.topic.clone(),
            p,
            offset.clamp(start, end),
        ));
    }
    println!("{:<24} {:>9} {:>12}", "TOPIC", "PARTITION", "NEW-OFFSET");
    for o in &plan {
        println!("{:<24} {:>9} {:>12}", o.topic, o.partition, o.offset);
    }
    if args.dry_run {
        println!("(dry run: nothing committed)");
        return Ok(());
    }
    admin.set_committed_offsets(&args.group, &plan).await?;
    println!("committed {} offsets for group {}", plan.len(), args.group);
    Ok(())
}
