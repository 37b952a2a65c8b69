//! `meridian cluster describe`: the brokers of a cluster and its metadata quorum;
//! `meridian cluster unregister`: forget a broker gone for good.

use std::collections::HashMap;

use clap::Subcommand;
use meridian_client::{
    BrokerState, BrokerStatus, Client, DescribeClusterResponse, LogDir, QuorumRole,
};

use crate::partition_cmds::size;
use crate::ConnectArgs;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The brokers (address, rack, running / fenced / shutting down / not started,
    /// part in the metadata quorum, partitions led and held, bytes of partition logs
    /// and space left on the disk holding them) and the quorum: the
    /// controller, the Raft term, and how far each broker's copy of the metadata log
    /// is behind the controller's (Kafka's `kafka-metadata-quorum describe`).
    Describe {
        /// One JSON object instead of the table (for scripts: `jq '.brokers[] |
        /// select(.state != "running")'`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Forget a broker that is gone for good, so `cluster describe` and the metadata
    /// no longer list it (Kafka's `kafka-cluster unregister`). Refused while the broker
    /// runs, when it is a voter of the metadata quorum, or while it holds replicas
    /// (move them first: `meridian partition reassign`). A broker that comes back
    /// registers again.
    Unregister {
        /// The broker's id.
        #[arg(long = "broker-id", value_name = "ID")]
        broker_id: u32,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Describe { json, connect } => {
            let client = connect.connect().await?;
            let cluster = client.admin().describe_cluster().await?;
            let dirs = log_dirs(&client, &cluster).await;
            if json {
                println!("{}", to_json(&cluster, &dirs));
            } else {
                print!("{}", render(&cluster, &dirs));
            }
            Ok(())
        }
        ClusterCommand::Unregister { broker_id, connect } => {
            let client = connect.connect().await?;
            client.admin().unregister_broker(broker_id).await?;
            println!("unregistered broker {broker_id}");
            Ok(())
        }
    }
}

/// The log directory of each broker that is up and answers within two seconds.
async fn log_dirs(client: &Client, cluster: &DescribeClusterResponse) -> HashMap<u32, LogDir> {
    let up = cluster
        .brokers
        .iter()
        .filter(|b| matches!(b.state, BrokerState::Running | BrokerState::ShuttingDown))
        .map(|b| (b.broker_id, ()));
    crate::partition_cmds::ask_brokers(up, |id, ()| {
        let admin = client.admin();
        async move { admin.log_dir(id).await }
    })
    .await
}

/// Bytes of partition logs in a broker's directory.
fn log_bytes(dir: &LogDir) -> u64 {
    dir.logs.iter().map(|l| l.size_bytes).sum()
}

/// `41.2 GiB (42 %)`: the space left on a broker's disk, and its share of the disk.
fn free(dir: &LogDir) -> Option<String> {
    let (total, usable) = (dir.total_bytes?, dir.usable_bytes?);
    let percent = (usable as f64 * 100.0 / total.max(1) as f64).floor();
    Some(format!("{} ({percent:.0} %)", size(usable)))
}

/// The controller's last metadata log index, when the answer is the controller's.
fn controller_log(cluster: &DescribeClusterResponse) -> Option<i64> {
    cluster
        .quorum
        .as_ref()
        .filter(|q| q.from_controller)
        .map(|q| q.last_log_index)
}

/// How many metadata log entries `b` is behind the controller, when known.
fn lag(cluster: &DescribeClusterResponse, b: &BrokerStatus) -> Option<i64> {
    controller_log(cluster)
        .filter(|_| b.matched_index >= 0)
        .map(|end| (end - b.matched_index).max(0))
}

/// What `cluster describe --json` prints: the same facts as the table, with `null`
/// for what is not known.
fn to_json(cluster: &DescribeClusterResponse, dirs: &HashMap<u32, LogDir>) -> serde_json::Value {
    let known = |v: i64| (v >= 0).then_some(v);
    let brokers: Vec<serde_json::Value> = cluster
        .brokers
        .iter()
        .map(|b| {
            let dir = dirs.get(&b.broker_id);
            serde_json::json!({
                "id": b.broker_id,
                "host": (!b.host.is_empty()).then_some(&b.host),
                "port": (!b.host.is_empty()).then_some(b.port),
                "rack": b.rack,
                "state": match b.state {
                    BrokerState::Running => "running",
                    BrokerState::Fenced => "fenced",
                    BrokerState::ShuttingDown => "shutting_down",
                    BrokerState::Unregistered => "unregistered",
                },
                "quorum_role": match b.role {
                    QuorumRole::Voter => Some("voter"),
                    QuorumRole::Observer => Some("observer"),
                    QuorumRole::None => None,
                },
                "controller": b.broker_id == cluster.controller_id,
                "leaders": b.leaders,
                "replicas": b.replicas,
                "metadata_lag": lag(cluster, b),
                "log_dir": dir.map(|d| &d.path),
                "log_bytes": dir.map(log_bytes),
                "disk_total_bytes": dir.and_then(|d| d.total_bytes),
                "disk_usable_bytes": dir.and_then(|d| d.usable_bytes),
            })
        })
        .collect();
    serde_json::json!({
        "cluster_id": cluster.cluster_id,
        "answered_by": cluster.broker_id,
        "controller_id": (cluster.controller_id != meridian_wire::messages::NO_BROKER)
            .then_some(cluster.controller_id),
        "quorum": cluster.quorum.as_ref().map(|q| serde_json::json!({
            "term": q.term,
            "last_log_index": known(q.last_log_index),
            "applied_index": known(q.applied_index),
            "from_controller": q.from_controller,
            "millis_since_quorum_ack": known(q.millis_since_quorum_ack),
        })),
        "brokers": brokers,
    })
}

/// The text `cluster describe` prints.
fn render(cluster: &DescribeClusterResponse, dirs: &HashMap<u32, LogDir>) -> String {
    let mut out = String::new();
    let id = if cluster.cluster_id.is_empty() {
        "-"
    } else {
        &cluster.cluster_id
    };
    out.push_str(&format!("cluster id:   {id}\n"));
    let controller_log = controller_log(cluster);
    match &cluster.quorum {
        None => out.push_str(&format!(
            "controller:   broker {} (a single broker: no metadata quorum)\n",
            cluster.broker_id
        )),
        Some(quorum) => {
            let voters = cluster
                .brokers
                .iter()
                .filter(|b| b.role == QuorumRole::Voter)
                .count();
            let controller = if cluster.controller_id == meridian_wire::messages::NO_BROKER {
                "none known (no voter has a majority's support)".to_string()
            } else {
                format!("broker {}", cluster.controller_id)
            };
            out.push_str(&format!(
                "controller:   {controller}, Raft term {}, {voters} voters\n",
                quorum.term
            ));
            match controller_log {
                Some(index) => {
                    let acked = if quorum.millis_since_quorum_ack >= 0 {
                        format!(", a majority acknowledged it {} ms ago", quorum.millis_since_quorum_ack)
                    } else {
                        String::new()
                    };
                    out.push_str(&format!("metadata log: index {index} on the controller{acked}\n"));
                }
                None => out.push_str(&format!(
                    "metadata log: index {} on broker {}, which answered (the controller did not: lag unknown)\n",
                    quorum.last_log_index, cluster.broker_id
                )),
            }
        }
    }
    out.push('\n');
    let mut rows = vec![[
        "broker".to_string(),
        "address".to_string(),
        "rack".to_string(),
        "state".to_string(),
        "quorum".to_string(),
        "leads".to_string(),
        "replicas".to_string(),
        "logs".to_string(),
        "disk free".to_string(),
        "metadata lag".to_string(),
    ]];
    for b in &cluster.brokers {
        let address = if b.host.is_empty() {
            "-".to_string()
        } else {
            format!("{}:{}", b.host, b.port)
        };
        let mut role = b.role.name().to_string();
        if b.broker_id == cluster.controller_id && cluster.quorum.is_some() {
            role.push_str(" (controller)");
        }
        let lag = match (lag(cluster, b), controller_log) {
            (Some(lag), _) => lag.to_string(),
            (None, Some(_)) if b.role != QuorumRole::None => "not copying".to_string(),
            _ => "-".to_string(),
        };
        let state = if b.state == BrokerState::Running {
            b.state.name().to_string()
        } else {
            b.state.name().to_uppercase()
        };
        let dir = dirs.get(&b.broker_id);
        rows.push([
            b.broker_id.to_string(),
            address,
            b.rack.clone().unwrap_or_else(|| "-".into()),
            state,
            role,
            b.leaders.to_string(),
            b.replicas.to_string(),
            dir.map_or_else(|| "-".to_string(), |d| size(log_bytes(d))),
            dir.and_then(free).unwrap_or_else(|| "-".to_string()),
            lag,
        ]);
    }
    // Numbers right-aligned.
    out.push_str(&crate::table::render(&rows, &[0, 5, 6, 7]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_client::{ErrorCode, QuorumStatus};

    fn broker(id: u32, state: BrokerState, role: QuorumRole, matched: i64) -> BrokerStatus {
        BrokerStatus {
            broker_id: id,
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
            rack: None,
            state,
            role,
            leaders: id,
            replicas: 3,
            matched_index: matched,
        }
    }

    #[test]
    fn a_cluster_shows_each_brokers_state_and_lag_behind_the_controller() {
        let cluster = DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: "c1".into(),
            broker_id: 2,
            controller_id: 2,
            quorum: Some(QuorumStatus {
                term: 4,
                last_log_index: 812,
                applied_index: 812,
                from_controller: true,
                millis_since_quorum_ack: 3,
            }),
            brokers: vec![
                broker(1, BrokerState::Running, QuorumRole::Voter, 812),
                broker(2, BrokerState::Running, QuorumRole::Voter, 812),
                broker(3, BrokerState::Fenced, QuorumRole::Voter, 800),
                broker(4, BrokerState::Running, QuorumRole::Observer, -1),
            ],
        };
        // Brokers 1 and 2 answered with their log directory (broker 4 from before
        // disks were reported); fenced broker 3 did not.
        let dir = |id: u32, logs: &[u64], disk: Option<(u64, u64)>| {
            let logs = logs
                .iter()
                .enumerate()
                .map(|(p, &size_bytes)| meridian_client::LocalLog {
                    topic: "t".into(),
                    partition: p as u32,
                    error: ErrorCode::None,
                    replica: true,
                    log_start_offset: 0,
                    log_end_offset: 10,
                    size_bytes,
                })
                .collect();
            let dir = LogDir {
                broker_id: id,
                path: format!("/data/{id}/topics"),
                total_bytes: disk.map(|d| d.0),
                usable_bytes: disk.map(|d| d.1),
                logs,
            };
            (id, dir)
        };
        let dirs: HashMap<u32, LogDir> = [
            dir(1, &[40 << 20, 1 << 20], Some((100 << 30, 42 << 30))),
            dir(2, &[512], Some((100 << 30, 5 << 29))),
            dir(4, &[], None),
        ]
        .into_iter()
        .collect();
        let text = render(&cluster, &dirs);
        assert!(
            text.contains("controller:   broker 2, Raft term 4, 3 voters"),
            "{text}"
        );
        assert!(
            text.contains("index 812 on the controller, a majority acknowledged it 3 ms ago"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[4],
            "broker  address         rack  state    quorum              leads  replicas      logs  disk free        metadata lag"
        );
        assert_eq!(
            lines[6],
            "     2  127.0.0.1:9002  -     running  voter (controller)      2         3     512 B  2.5 GiB (2 %)    0"
        );
        assert_eq!(
            lines[7],
            "     3  127.0.0.1:9003  -     FENCED   voter                   3         3         -  -                12"
        );
        assert_eq!(
            lines[5],
            "     1  127.0.0.1:9001  -     running  voter                   1         3  41.0 MiB  42.0 GiB (42 %)  0"
        );
        assert!(
            lines[8].ends_with("0 B  -                not copying"),
            "{text}"
        );
        let json = to_json(&cluster, &dirs);
        assert_eq!(json["controller_id"], 2);
        assert_eq!(json["quorum"]["term"], 4);
        assert_eq!(json["brokers"][1]["controller"], true);
        assert_eq!(json["brokers"][2]["state"], "fenced");
        assert_eq!(json["brokers"][2]["metadata_lag"], 12);
        assert_eq!(json["brokers"][3]["quorum_role"], "observer");
        assert!(json["brokers"][3]["metadata_lag"].is_null());
        assert_eq!(json["brokers"][0]["log_bytes"], 41 << 20);
        assert_eq!(json["brokers"][0]["disk_usable_bytes"], 42u64 << 30);
        assert_eq!(json["brokers"][1]["log_dir"], "/data/2/topics");
        assert!(json["brokers"][2]["log_bytes"].is_null());
        assert_eq!(json["brokers"][3]["log_bytes"], 0);
        assert!(json["brokers"][3]["disk_total_bytes"].is_null());
    }

    #[test]
    fn an_answer_without_the_controllers_view_says_the_lag_is_unknown() {
        let cluster = DescribeClusterResponse {
            error: ErrorCode::None,
            message: String::new(),
            cluster_id: String::new(),
            broker_id: 1,
            controller_id: 2,
            quorum: Some(QuorumStatus {
                term: 4,
                last_log_index: 700,
                applied_index: 690,
                from_controller: false,
                millis_since_quorum_ack: -1,
            }),
            brokers: vec![broker(1, BrokerState::Running, QuorumRole::Voter, -1)],
        };
        let text = render(&cluster, &HashMap::new());
        assert!(
            text.contains(
                "index 700 on broker 1, which answered (the controller did not: lag unknown)"
            ),
            "{text}"
        );
        assert!(text.lines().last().unwrap().ends_with(" -"), "{text}");
    }
}
