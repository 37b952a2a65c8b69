//! `meridian bench failover`: a region of real broker processes under an acks=all,
//! idempotent load while faults are injected (a partition leader SIGKILLed, a
//! follower SIGSTOPped, the whole cluster killed and restarted), then a checker reads
//! every partition back.
//!
//! It reports how long writes stalled after each fault (from the per-record latency
//! trace: the first acknowledgement on each affected partition after the fault) and
//! what the checker found: acknowledged records missing (must be 0), duplicates (0
//! with idempotence) and order violations (0). Every record carries its sequence
//! number, and records are sent to partition `seq % partitions`, so order within a
//! partition is the order of sequence numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use meridian_client::{
    Acks, Client, ClientConfig, NewTopic, Offset, ProducerConfig, ProducerRecord, Trust,
};
use serde::Serialize;

use crate::up::{Output, RegionFile, RegionRunner};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the leader of a partition; restart it after --heal-after.
    KillLeader,
    /// SIGSTOP a follower of a partition; SIGCONT it after --heal-after.
    PauseFollower,
    /// SIGKILL every broker; restart them all after --heal-after.
    RestartCluster,
}

#[derive(Args, Clone)]
pub struct FailoverArgs {
    /// The region to run (its brokers are started by the bench).
    #[arg(long, default_value = "regions/local-3.toml")]
    pub region: PathBuf,
    /// Where the brokers keep their data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value = "failover")]
    pub topic: String,
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u16,
    #[arg(long, default_value_t = 2)]
    pub min_insync_replicas: u32,
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per second (paced by intended send time).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 40.0)]
    pub duration: f64,
    #[arg(long, value_enum, default_value = "kill-leader")]
    pub fault: Fault,
    /// How many faults to inject.
    #[arg(long, default_value_t = 3)]
    pub faults: u32,
    /// Seconds of load before the first fault, and between faults.
    #[arg(long, default_value_t = 10.0)]
    pub fault_every: f64,
    /// Seconds until a fault is healed (broker restarted or resumed).
    #[arg(long, default_value_t = 4.0)]
    pub heal_after: f64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
struct FaultReport {
    fault: Fault,
    at_s: f64,
    brokers: Vec<u32>,
    /// Partitions whose writes the fault could stall.
    partitions: Vec<u32>,
    /// From the fault until every affected partition acknowledged a write again.
    writes_resumed_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct CheckReport {
    /// Records read back from all partitions.
    read: u64,
    /// Acknowledged, but not at the acknowledged offset.
    acked_missing: u64,
    /// A sequence number found more than once.
    duplicates: u64,
    /// A partition where a lower sequence number follows a higher one.
    order_violations: u64,
    /// Not acknowledged (failed or timed out) yet present: allowed, reported.
    unacked_present: u64,
}

#[derive(Serialize)]
struct FailoverResult {
    bench: &'static str,
    sent: u64,
    acked: u64,
    failed: u64,
    first_error: Option<String>,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    faults: Vec<FaultReport>,
    max_writes_resumed_ms: Option<f64>,
    check: CheckReport,
}

/// One record's fate.
#[derive(Clone, Copy, Debug)]
struct Sent {
    partition: u32,
    /// Since the bench started.
    intended_ms: f64,
    acked_ms: Option<f64>,
    offset: Option<i64>,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    if args.record_size < 8 {
        bail!("--record-size must be at least 8 (the sequence number)");
    }
    let mut region = RegionFile::load(&args.region)?;
    let _temp = match &args.data_dir {
        Some(dir) => {
            region.region.data_dir = dir.clone();
            None
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("meridian-failover-")
                .tempdir_in(".")?;
            region.region.data_dir = temp.path().to_owned();
            Some(temp)
        }
    };
    let mut runner = RegionRunner::prepare(region, Output::LogFiles)?;
    for id in runner.broker_ids() {
        runner.start(id)?;
    }
    let outcome = drive(&args, &mut runner).await;
    runner.stop_all(Duration::from_secs(20)).await;
    if outcome.is_err() {
        eprintln!(
            "broker logs: {}/broker-*.log",
            runner.region.region.data_dir.display()
        );
        if let Some(temp) = _temp {
            // Keep the logs of a failed run.
            let _ = temp.keep();
        }
    }
    let result = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_report(&result);
    }
    Ok(())
}

async fn client_for(runner: &RegionRunner) -> anyhow::Result<Client> {
    let mut config = ClientConfig::new(
        runner.region.bootstrap(),
        Trust::CaFile(runner.cert.clone()),
    );
    config.identity = Some(runner.identity()?);
    Ok(Client::connect(config).await?)
}

/// Waits until every broker of the region is in the metadata and the topic exists.
async fn ready(args: &FailoverArgs, runner: &RegionRunner) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = runner.broker_ids().len();
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match try_ready(args, runner, want).await {
            Ok(client) => return Ok(client),
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the region did not become ready in 60 s: {last_error}")
}

async fn try_ready(
    args: &FailoverArgs,
    runner: &RegionRunner,
    want_brokers: usize,
) -> anyhow::Result<Client> {
    let client = client_for(runner).await?;
    let metadata = client.metadata(None).await?;
    if metadata.brokers.len() < want_brokers {
        bail!(
            "{} of {want_brokers} brokers registered",
            metadata.brokers.len()
        );
    }
    let topic = NewTopic {
        replication_factor: args.replication_factor,
        ..NewTopic::new(args.topic.clone(), args.partitions)
    }
    .config("min.insync.replicas", args.min_insync_replicas.to_string());
    match client.admin().create_topic(topic).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(meridian_client::ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let metadata = client.metadata(Some(vec![args.topic.clone()])).await?;
    let all_led = metadata.topics.iter().all(|t| {
        t.partitions.len() == args.partitions as usize
            && t.partitions
                .iter()
                .all(|p| p.isr.len() >= args.replication_factor as usize)
    });
    if !all_led {
        bail!("partitions not fully replicated yet");
    }
    Ok(client)
}

/// Leader and replicas of every partition of `topic`, by partition.
async fn placement(client: &Client, topic: &str) -> anyhow::Result<BTreeMap<u32, (u32, Vec<u32>)>> {
    let metadata = client.metadata(Some(vec![topic.to_owned()])).await?;
    let topic = metadata
        .topics
        .into_iter()
        .next()
        .context("topic missing from metadata")?;
    Ok(topic
        .partitions
        .into_iter()
        .map(|p| (p.partition, (p.leader, p.replicas)))
        .collect())
}

async fn drive(args: &FailoverArgs, runner: &mut RegionRunner) -> anyhow::Result<FailoverResult> {
    let client = ready(args, runner).await?;
    let producer = client.producer(ProducerConfig {
        acks: Acks::All,
        enable_idempotence: true,
        linger: Duration::from_millis(2),
        retries: u32::MAX,
        ..ProducerConfig::default()
    });
    let start = Instant::now();
    let records: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();

    // The paced sender runs on its own thread (see bench::run_producers).
    let sender = {
        let (producer, records, first_error) =
            (producer.clone(), records.clone(), first_error.clone());
        let runtime = tokio::runtime::Handle::current();
        let (topic, partitions, rate, size) = (
            args.topic.clone(),
            args.partitions,
            args.rate,
            args.record_size,
        );
        let end = start + Duration::from_secs_f64(args.duration);
        tokio::task::spawn_blocking(move || {
            let mut seq = 0u64;
            loop {
                let at = start + Duration::from_secs_f64(seq as f64 / rate);
                if at >= end {
                    break;
                }
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let partition = (seq % partitions as u64) as u32;
                let mut value = vec![0u8; size];
                value[..8].copy_from_slice(&seq.to_be_bytes());
                let record =
                    ProducerRecord::new(topic.clone(), Bytes::from(value)).partition(partition);
                let intended_ms = at.duration_since(start).as_secs_f64() * 1000.0;
                let index = {
                    let mut records = records.lock().expect("not poisoned");
                    records.push(Sent {
                        partition,
                        intended_ms,
                        acked_ms: None,
                        offset: None,
                    });
                    records.len() - 1
                };
                let delivery = runtime.block_on(producer.send(record))?;
                let (records, first_error) = (records.clone(), first_error.clone());
                runtime.spawn(async move {
                    let outcome = delivery.await;
                    let done_ms = start.elapsed().as_secs_f64() * 1000.0;
                    match outcome {
                        Ok(meta) => {
                            let mut records = records.lock().expect("not poisoned");
                            records[index].acked_ms = Some(done_ms);
                            records[index].offset = Some(meta.offset);
                        }
                        Err(e) => {
                            first_error
                                .lock()
                                .expect("not poisoned")
                                .get_or_insert_with(|| e.to_string());
                        }
                    }
                });
                seq += 1;
            }
            anyhow::Ok(seq)
        })
    };

    let mut faults = Vec::new();
    for k in 0..args.faults {
        let at = start + Duration::from_secs_f64(args.fault_every * (k + 1) as f64);
        if at + Duration::from_secs_f64(args.heal_after)
            >= start + Duration::from_secs_f64(args.duration)
        {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let place = placement(&client, &args.topic).await?;
        let target = k % args.partitions;
        let (leader, replicas) = place.get(&target).cloned().context("partition missing")?;
        let at_s = start.elapsed().as_secs_f64();
        let (brokers, affected): (Vec<u32>, Vec<u32>) = match args.fault {
            Fault::KillLeader => {
                runner.kill9(leader).await;
                let led = place
                    .iter()
                    .filter(|(_, (l, _))| *l == leader)
                    .map(|(p, _)| *p)
                    .collect();
                (vec![leader], led)
            }
            Fault::PauseFollower => {
                let follower = replicas
                    .iter()
                    .copied()
                    .find(|r| *r != leader)
                    .context("partition has no follower to pause")?;
                runner.signal(follower, rustix::process::Signal::STOP);
                let stalled = place
                    .iter()
                    .filter(|(_, (_, rs))| rs.contains(&follower))
                    .map(|(p, _)| *p)
                    .collect();
                (vec![follower], stalled)
            }
            Fault::RestartCluster => {
                let ids = runner.broker_ids();
                for id in &ids {
                    runner.kill9(*id).await;
                }
                (ids, place.keys().copied().collect())
            }
        };
        tokio::time::sleep(Duration::from_secs_f64(args.heal_after)).await;
        for id in &brokers {
            match args.fault {
                Fault::PauseFollower => runner.signal(*id, rustix::process::Signal::CONT),
                _ => runner.start(*id)?,
            }
        }
        faults.push(FaultReport {
            fault: args.fault,
            at_s,
            brokers,
            partitions: affected,
            writes_resumed_ms: None,
        });
    }

    let sent = sender.await??;
    producer.flush().await.ok();
    // Let the last deliveries land (they resolve with an ack or an error).
    let settle = Instant::now() + Duration::from_secs(30);
    while Instant::now() < settle {
        let pending = records
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|r| r.acked_ms.is_none())
            .count();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = records.lock().expect("not poisoned").clone();

    for fault in &mut faults {
        fault.writes_resumed_ms = resumed_after(&records, fault.at_s * 1000.0, &fault.partitions);
    }
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for r in &records {
        if let Some(acked) = r.acked_ms {
            let _ = latency.record(((acked - r.intended_ms) * 1000.0).max(1.0) as u64);
        }
    }
    let acked = records.iter().filter(|r| r.acked_ms.is_some()).count() as u64;
    let check = check(args, runner, &records).await?;
    let first_error = first_error.lock().expect("not poisoned").clone();
    let max_writes_resumed_ms = faults
        .iter()
        .filter_map(|f| f.writes_resumed_ms)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    Ok(FailoverResult {
        bench: "failover",
        sent,
        acked,
        failed: sent - acked,
        first_error,
        latency_p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency_max_ms: latency.max() as f64 / 1000.0,
        faults,
        max_writes_resumed_ms,
        check,
    })
}

/// Time from `fault_ms` until each of `partitions` acknowledged a record again (the
/// largest over the partitions); `None` if one never did.
fn resumed_after(records: &[Sent], fault_ms: f64, partitions: &[u32]) -> Option<f64> {
    let mut worst: f64 = 0.0;
    for p in partitions {
        let first = records
            .iter()
            .filter(|r| r.partition == *p)
            .filter_map(|r| r.acked_ms)
            .filter(|acked| *acked >= fault_ms)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))?;
        worst = worst.max(first - fault_ms);
    }
    Some(worst)
}

/// Reads every partition from the start to its high watermark, and at least past
/// its last acknowledged record, and compares with what was acknowledged.
///
/// The high watermark a leader reports can be below records already acknowledged:
/// a leader elected moments ago starts from the high watermark it knew as a
/// follower, and moves it once its followers fetch again (Kafka's leaders behave
/// the same). Stopping at such a high watermark would count records as missing
/// that are there, so reading goes on until the acknowledged ones are reachable,
/// and only the 120 s deadline ends it short (whatever is unread then is missing).
async fn check(
    args: &FailoverArgs,
    runner: &RegionRunner,
    records: &[Sent],
) -> anyhow::Result<CheckReport> {
    let client = ready(args, runner).await?;
    let mut consumer = client.consumer(Default::default());
    let partitions = consumer.assign_all(&args.topic).await?;
    for p in &partitions {
        consumer.seek(&args.topic, *p, Offset::Earliest).await?;
    }
    // seq -> offsets at which it was found; per partition the seqs in offset order.
    let mut found: BTreeMap<u64, Vec<(u32, i64)>> = BTreeMap::new();
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    // Per partition, the offset after its last acknowledged record.
    let mut acked_end: BTreeMap<u32, i64> = BTreeMap::new();
    for r in records {
        if let Some(offset) = r.offset {
            let end = acked_end.entry(r.partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut report = CheckReport::default();
    loop {
        let unread: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| {
                match (
                    consumer.position(&args.topic, *p),
                    consumer.high_watermark(&args.topic, *p),
                ) {
                    (Some(pos), Some(hw)) => pos < hw.max(acked_end.get(p).copied().unwrap_or(0)),
                    _ => true,
                }
            })
            .collect();
        if unread.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "checker: partitions {unread:?} not readable past their acknowledged records within 120 s; counting the rest as missing"
            );
            break;
        }
        for record in consumer.poll(Duration::from_millis(500)).await? {
            let value = record.value.unwrap_or_default();
            if value.len() < 8 {
                bail!(
                    "partition {} offset {} holds a record this bench did not write",
                    record.partition,
                    record.offset
                );
            }
            let seq = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
            report.read += 1;
            found
                .entry(seq)
                .or_default()
                .push((record.partition, record.offset));
            by_partition.entry(record.partition).or_default().push(seq);
        }
    }
    report.duplicates = found.values().map(|v| v.len() as u64 - 1).sum();
    for seqs in by_partition.values() {
        report.order_violations += seqs.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    }
    let mut acked_seqs = BTreeSet::new();
    for (seq, r) in records.iter().enumerate() {
        let seq = seq as u64;
        match r.offset {
            Some(offset) => {
                acked_seqs.insert(seq);
                let at_offset = found
                    .get(&seq)
                    .is_some_and(|v| v.contains(&(r.partition, offset)));
                if !at_offset {
                    report.acked_missing += 1;
                }
            }
            None => {
                if found.contains_key(&seq) {
                    report.unacked_present += 1;
                }
            }
        }
    }
    client.close();
    Ok(report)
}

fn print_report(r: &FailoverResult) {
    println!(
        "{} records sent, {} acknowledged, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        r.sent, r.acked, r.failed, r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    if let Some(e) = &r.first_error {
        println!("first send error: {e}");
    }
    for f in &r.faults {
        let resumed = f
            .writes_resumed_ms
            .map_or("never".to_string(), |ms| format!("{ms:.0} ms"));
        println!(
            "  {:?} at {:.1}s, broker(s) {:?}, partitions {:?}: writes resumed after {resumed}",
            f.fault, f.at_s, f.brokers, f.partitions
        );
    }
    let c = &r.check;
    println!(
        "checker: {} records read; acknowledged-but-missing {}, duplicates {}, order violations {} (unacknowledged but present: {})",
        c.read, c.acked_missing, c.duplicates, c.order_violations, c.unacked_present
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(partition: u32, intended_ms: f64, acked_ms: Option<f64>) -> Sent {
        Sent {
            partition,
            intended_ms,
            acked_ms,
            offset: acked_ms.map(|_| 0),
        }
    }

    #[test]
    fn writes_resume_when_every_affected_partition_acked_again() {
        let records = [
            sent(0, 900.0, Some(950.0)),
            sent(1, 900.0, Some(960.0)),
            sent(0, 1000.0, Some(3200.0)),
            sent(1, 1000.0, Some(1001.0)),
            sent(0, 1100.0, Some(3100.0)),
        ];
        assert_eq!(resumed_after(&records, 1000.0, &[0]), Some(2100.0));
        assert_eq!(resumed_after(&records, 1000.0, &[0, 1]), Some(2100.0));
        assert_eq!(resumed_after(&records, 1000.0, &[1]), Some(1.0));
        assert_eq!(resumed_after(&records, 1000.0, &[2]), None);
        assert_eq!(resumed_after(&records, 4000.0, &[0]), None);
    }
}
