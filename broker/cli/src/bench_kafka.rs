//! `meridian bench kafka-produce`: produce over the Kafka protocol (TCP) to a broker's
//! Kafka listener, the way a Kafka client's producer does: records are encoded into
//! one batch per partition of `--batch-size` bytes (Kafka's `batch.size`), each
//! request carries one batch for every partition its broker leads, and each
//! connection keeps `--inflight` requests unanswered (Kafka's
//! `max.in.flight.requests.per.connection`); with `--rate`, each record is sent at
//! its intended time, requests closing after `--linger-ms`, and its latency runs
//! from that time. Set against `bench produce`, it shows what the Kafka path costs
//! next to Meridian's QUIC one on the same machine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{self as k, ApiKey, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use meridian_client::{Acks, Compression};
use meridian_wire::batch::{
    decode_records, encode_batch, BatchHeader, NewRecord, ProducerIdentity,
};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;

use super::{
    broker_settings, cores, payloads, progress, report, split_cores, ChildBroker, CpuClock,
    LoadResult,
};

const PRODUCE_VERSION: i16 = 9;
const METADATA_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 5;
/// How long the bench waits for any one answer before it gives up on the broker.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Clone)]
pub struct KafkaLoadArgs {
    /// A running broker's Kafka listener (`host:port`; its cluster's other brokers
    /// are found through it). Without it the bench starts one broker with a Kafka
    /// listener on a free port.
    #[arg(long)]
    pub kafka: Option<String>,
    #[arg(long, default_value = "bench-kafka")]
    pub topic: String,
    /// Partitions of the topic, if the bench creates it (CreateTopics, the brokers'
    /// default replication factor).
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records to send (ignored when --duration is set).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Run for this many seconds instead of a record count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Bytes of records in each partition's batch (Kafka's `batch.size`).
    #[arg(long, default_value_t = 16384)]
    pub batch_size: usize,
    /// Produce requests each connection keeps unanswered (Kafka's
    /// `max.in.flight.requests.per.connection`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub inflight: u32,
    /// kafka-produce: records a second over all connections, each record sent at
    /// its intended time and its latency measured from it (no coordinated
    /// omission); 0: flat out, where the latency is each request's round trip.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: how long a request waits for more records once its first is
    /// due (Kafka's `linger.ms`); flat out every request is full.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// `1` or `all` (a broker answers no `acks=0` request, so the bench could not
    /// tell when records are stored).
    #[arg(long, default_value = "1")]
    pub acks: Acks,
    /// Fraction of each payload that is random (the rest compresses away).
    #[arg(long, default_value_t = 1.0)]
    pub randomness: f64,
    /// kafka-consume: bytes one fetch may return in all (Kafka's `fetch.max.bytes`).
    #[arg(long, default_value_t = 52_428_800)]
    pub fetch_max_bytes: i32,
    /// kafka-consume: bytes one fetch may return of each partition (Kafka's
    /// `max.partition.fetch.bytes`).
    #[arg(long, default_value_t = 1_048_576)]
    pub max_partition_fetch_bytes: i32,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    pub json: bool,
    /// Speak TLS (Kafka's `security.protocol=SSL`) to the broker the bench starts,
    /// which gets `kafka_tls = true`: the same encryption QUIC always has, for a
    /// like-for-like comparison with `bench produce`.
    #[arg(long, conflicts_with = "kafka")]
    pub tls: bool,
    /// With --kafka: speak TLS, trusting the broker certificates this PEM file holds
    /// (a broker's `tls/cert.pem`, or the CA that signed it).
    #[arg(long, requires = "kafka")]
    pub ca: Option<std::path::PathBuf>,
    /// With --ca: present this client certificate (PEM), for a broker with
    /// `tls_client_ca`; `meridian cert create NAME` makes one.
    #[arg(long, requires_all = ["ca", "key"])]
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Config for the broker the bench starts, repeatable: `--broker-set flush=always`.
    #[arg(
        long = "broker-set",
        value_name = "KEY=VALUE",
        conflicts_with = "kafka"
    )]
    pub broker_set: Vec<String>,
}

impl KafkaLoadArgs {
    /// Worker threads for the bench's runtime, and for the broker it starts (`None`
    /// when it starts none): half the cores each, as `bench produce` splits them.
    pub fn threads(&self, cores: usize) -> (usize, Option<usize>) {
        split_cores(self.kafka.is_none(), None, cores)
    }
}

/// The broker (started, or given with `--kafka`), how to reach it, and who leads
/// the topic's partitions, the topic created if need be.
struct Setup {
    child: Option<ChildBroker>,
    tls: Option<Arc<rustls::ClientConfig>>,
    leaders: BTreeMap<String, Vec<i32>>,
}

async fn setup(args: &KafkaLoadArgs) -> anyhow::Result<Setup> {
    if args.acks == Acks::None {
        bail!(
            "--acks 0: a broker answers no acks=0 produce request, so the bench could not \
             tell when records are stored; use --acks 1 or --acks all"
        );
    }
    if args.record_size == 0 || args.batch_size == 0 {
        bail!("--record-size and --batch-size must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a number of records a second, 0 for flat out");
    }
    let (child, bootstrap) = match &args.kafka {
        Some(addr) => (None, addr.clone()),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut settings = broker_settings(&args.broker_set, args.threads(cores()).1);
            settings.push(format!("kafka_listen={addr}"));
            if args.tls {
                settings.push("kafka_tls=true".into());
            }
            (Some(ChildBroker::start(None, &settings)?), addr)
        }
    };
    // The broker the bench started is trusted by its own certificate.
    let started = child.as_ref().and_then(|c| c.data_dir.as_ref());
    let ca = match (&args.ca, started) {
        (Some(ca), _) => Some(ca.clone()),
        (None, Some(dir)) if args.tls => Some(dir.join("tls/cert.pem")),
        _ => None,
    };
    let identity = args.cert.as_deref().zip(args.key.as_deref());
    let tls = ca
        .as_deref()
        .map(|ca| tls_config(ca, identity))
        .transpose()?;
    let mut conn = Connection::open(&bootstrap, tls.clone()).await?;
    ensure_topic(&mut conn, &args.topic, args.partitions).await?;
    let leaders = leaders(&mut conn, &args.topic).await?;
    Ok(Setup {
        child,
        tls,
        leaders,
    })
}

pub async fn produce(args: KafkaLoadArgs) -> anyhow::Result<()> {
    let setup = setup(&args).await?;
    let target = args.duration.is_none().then_some(args.records);
    let bar = progress(target, "kafka-produce");
    let cpu = CpuClock::start(&setup.child);
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|secs| started + Duration::from_secs_f64(secs));
    let outcome = produce_all(&setup, &args, target, deadline, &bar).await?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    report(
        &LoadResult::new(
            "kafka-produce",
            (outcome.records, outcome.bytes),
            seconds,
            Some(&outcome.latency),
            outcome.requests,
            &cpu,
        ),
        args.json,
    )
}

/// Produces `target` records (or until `deadline`) over one connection to each
/// leader; with `--rate`, each connection a share of it for its partitions.
async fn produce_all(
    setup: &Setup,
    args: &KafkaLoadArgs,
    target: Option<u64>,
    deadline: Option<Instant>,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let load = Arc::new(Load {
        target,
        claimed: AtomicU64::new(0),
        payloads: payloads(args.record_size, args.randomness),
        per_batch: (args.batch_size / args.record_size).max(1),
        args: args.clone(),
    });
    let mut connections = Vec::new();
    for (addr, partitions) in &setup.leaders {
        let conn = Connection::open(addr, setup.tls.clone()).await?;
        connections.push((conn, partitions.clone()));
    }
    // Connected first, so no record is late for a handshake.
    let start = Instant::now();
    let all_partitions: usize = setup.leaders.values().map(Vec::len).sum();
    let mut paced_so_far = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, partitions) in connections {
        let pace = (args.rate > 0.0).then(|| {
            let share = partitions.len() as f64 / all_partitions as f64;
            // Of a record count, the connections' shares add up to it exactly.
            let records = target.map(|target| {
                paced_so_far += partitions.len();
                let upto = |n: usize| (target as u128 * n as u128 / all_partitions as u128) as u64;
                upto(paced_so_far) - upto(paced_so_far - partitions.len())
            });
            Pace {
                start,
                rate: args.rate * share,
                records,
                linger: Duration::from_millis(args.linger_ms),
            }
        });
        let (load, bar) = (load.clone(), bar.clone());
        tasks.spawn(produce_to(conn, partitions, load, pace, deadline, bar));
    }
    let mut outcome = Outcome::new()?;
    while let Some(done) = tasks.join_next().await {
        outcome.add(done??)?;
    }
    Ok(outcome)
}

/// Fills the topic with `--records` records (untimed), then reads that many from
/// its start, one fetch at a time to each leader, as a Kafka consumer does.
pub async fn consume(args: KafkaLoadArgs) -> anyhow::Result<()> {
    if args.duration.is_some() {
        bail!("kafka-consume reads --records records; --duration is kafka-produce's");
    }
    if args.rate > 0.0 {
        bail!("kafka-consume reads flat out; --rate is kafka-produce's");
    }
    let setup = setup(&args).await?;
    let fill = progress(Some(args.records), "fill         ");
    produce_all(&setup, &args, Some(args.records), None, &fill).await?;
    fill.finish_and_clear();
    let bar = progress(Some(args.records), "kafka-consume");
    let consumed = Arc::new(AtomicU64::new(0));
    let cpu = CpuClock::start(&setup.child);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, partitions) in setup.leaders.clone() {
        let (bar, tls, consumed) = (bar.clone(), setup.tls.clone(), consumed.clone());
        let args = args.clone();
        tasks.spawn(async move {
            let conn = Connection::open(&addr, tls).await?;
            fetch_from(conn, partitions, &args, &consumed, &bar).await
        });
    }
    let (mut bytes, mut requests) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (b, r) = done??;
        bytes += b;
        requests += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let records = consumed.load(Ordering::Relaxed);
    report(
        &LoadResult::new(
            "kafka-consume",
            (records, bytes),
            seconds,
            None,
            requests,
            &cpu,
        ),
        args.json,
    )
}

/// Fetches `partitions` from their start until `consumed` (shared by every
/// connection) reaches `--records` or they hold no more; returns the bytes of record
/// values read and the fetches sent. Each batch's CRC is checked and its records
/// decoded, as a Kafka consumer's are.
async fn fetch_from(
    mut conn: Connection,
    partitions: Vec<i32>,
    args: &KafkaLoadArgs,
    consumed: &AtomicU64,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, u64)> {
    let mut next: BTreeMap<i32, i64> = partitions.iter().map(|&p| (p, 0)).collect();
    let mut high: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut bytes, mut requests) = (0u64, 0u64);
    let name = TopicName(StrBytes::from_string(args.topic.clone()));
    while consumed.load(Ordering::Relaxed) < args.records {
        let wanted: Vec<i32> = next
            .iter()
            .filter(|(p, offset)| high.get(*p).is_none_or(|h| **offset < *h))
            .map(|(p, _)| *p)
            .collect();
        if wanted.is_empty() {
            break;
        }
        let request = k::FetchRequest::default()
            .with_replica_id(k::BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(args.fetch_max_bytes)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![k::fetch_request::FetchTopic::default()
                .with_topic(name.clone())
                .with_partitions(
                    wanted
                        .iter()
                        .map(|p| {
                            k::fetch_request::FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(next[p])
                                .with_partition_max_bytes(args.max_partition_fetch_bytes)
                        })
                        .collect(),
                )]);
        let answer: k::FetchResponse = conn.call(ApiKey::Fetch, FETCH_VERSION, &request).await?;
        requests += 1;
        for t in &answer.responses {
            for p in &t.partitions {
                let partition = p.partition_index;
                // Retention removed the start of the log: read from where it starts.
                if p.error_code.err() == Some(ResponseError::OffsetOutOfRange)
                    && p.log_start_offset > next[&partition]
                {
                    next.insert(partition, p.log_start_offset);
                    continue;
                }
                if p.error_code != 0 {
                    bail!(
                        "{}/{partition}: the broker answered {:?}",
                        args.topic,
                        p.error_code.err()
                    );
                }
                high.insert(partition, p.high_watermark);
                let Some(records) = &p.records else { continue };
                let from = next[&partition];
                let (count, read, last) = read_batches(records, from)?;
                if let Some(last) = last {
                    next.insert(partition, last + 1);
                }
                bytes += read;
                consumed.fetch_add(count, Ordering::Relaxed);
                bar.inc(count);
            }
        }
    }
    Ok((bytes, requests))
}

/// The records at or past `from` in the whole batches of `records` (a fetch may end
/// inside one, which the next fetch returns whole), the bytes of their values, and
/// the last offset of the last whole batch.
fn read_batches(records: &Bytes, from: i64) -> anyhow::Result<(u64, u64, Option<i64>)> {
    let (mut count, mut bytes, mut last) = (0u64, 0u64, None);
    let mut at = 0;
    while let Ok(header) = BatchHeader::parse(&records[at..]) {
        let end = at + header.total_len();
        if end > records.len() {
            break;
        }
        let batch = records.slice(at..end);
        header.validate(&batch)?;
        for record in decode_records(&header, &batch)? {
            if record.offset >= from {
                count += 1;
                bytes += record.value.map_or(0, |v| v.len() as u64);
            }
        }
        last = Some(header.last_offset());
        at = end;
    }
    Ok((count, bytes, last))
}

/// What every connection draws its records from.
struct Load {
    /// Records to send in all; `None` until the deadline.
    target: Option<u64>,
    claimed: AtomicU64,
    payloads: Vec<Bytes>,
    per_batch: usize,
    args: KafkaLoadArgs,
}

impl Load {
    /// Takes up to `want` records to send; 0 once the target is reached.
    fn claim(&self, want: u64) -> u64 {
        let Some(target) = self.target else {
            return want;
        };
        let mut claimed = self.claimed.load(Ordering::Relaxed);
        loop {
            let take = want.min(target.saturating_sub(claimed));
            if take == 0 {
                return 0;
            }
            match self.claimed.compare_exchange(
                claimed,
                claimed + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => claimed = now,
            }
        }
    }
}

/// One connection's (or all of them, summed) records, bytes, requests and request
/// round trips (µs).
struct Outcome {
    records: u64,
    bytes: u64,
    requests: u64,
    latency: Histogram<u64>,
}

impl Outcome {
    fn new() -> anyhow::Result<Outcome> {
        Ok(Outcome {
            records: 0,
            bytes: 0,
            requests: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    fn add(&mut self, other: Outcome) -> anyhow::Result<()> {
        self.records += other.records;
        self.bytes += other.bytes;
        self.requests += other.requests;
        self.latency.add(&other.latency)?;
        Ok(())
    }
}

/// A request sent and not yet answered; its window permit goes with it.
struct Sent {
    correlation: i32,
    at: Instant,
    records: u64,
    bytes: u64,
    /// Paced: the connection's [`Pace`] and the index in it of the request's first
    /// record, whose intended send times follow.
    paced: Option<(Pace, u64)>,
    _window: tokio::sync::OwnedSemaphorePermit,
}

/// A connection's share of `--rate`: its record `i` is meant to be sent at
/// `start + i / rate`.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    rate: f64,
    /// Records this connection sends in all (`None`: until the deadline).
    records: Option<u64>,
    linger: Duration,
}

impl Pace {
    fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Records meant to be sent by `at`.
    fn due(&self, at: Instant) -> u64 {
        let due = match at.checked_duration_since(self.start) {
            Some(elapsed) => (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1,
            None => 0,
        };
        self.records.map_or(due, |records| due.min(records))
    }
}

/// Produces to the partitions `conn`'s broker leads, `--inflight` requests at a
/// time: flat out until the load is claimed or the deadline passes, or, with
/// `pace`, each record at its intended time, as a producer with `linger.ms` does.
async fn produce_to(
    conn: Connection,
    partitions: Vec<i32>,
    load: Arc<Load>,
    pace: Option<Pace>,
    deadline: Option<Instant>,
    bar: ProgressBar,
) -> anyhow::Result<Outcome> {
    let (mut answers, mut requests) = conn.split();
    let window = Arc::new(tokio::sync::Semaphore::new(load.args.inflight as usize));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    let topic = load.args.topic.clone();
    let reader = tokio::spawn(async move {
        let mut outcome = Outcome::new()?;
        while let Some(sent) = sent_rx.recv().await {
            let body = answers
                .answer(ApiKey::Produce, PRODUCE_VERSION, sent.correlation)
                .await?;
            check_produced(body, &topic)?;
            let now = Instant::now();
            match sent.paced {
                // Each record from its intended send time, so a stall shows.
                Some((pace, first)) => {
                    for i in first..first + sent.records {
                        let micros = now.saturating_duration_since(pace.intended(i)).as_micros();
                        outcome
                            .latency
                            .record((micros as u64).clamp(1, 60_000_000))?;
                    }
                }
                // Flat out there is no intended time: the request's round trip.
                None => {
                    let micros = (now - sent.at).as_micros().max(1) as u64;
                    outcome.latency.record(micros.min(60_000_000))?;
                }
            }
            outcome.records += sent.records;
            outcome.bytes += sent.bytes;
            outcome.requests += 1;
            bar.inc(sent.records);
        }
        Ok::<_, anyhow::Error>(outcome)
    });
    let want = (partitions.len() * load.per_batch) as u64;
    let mut claims = pace.map(|pace| paced_claims(pace, want, deadline));
    let mut cursor = Cursor::default();
    let wrote = async {
        loop {
            let permit = window.clone().acquire_owned().await?;
            let (first, records) = match &mut claims {
                Some(claims) => match claims.next(want).await {
                    Some(claim) => claim,
                    None => return Ok(()),
                },
                None => {
                    let more = deadline.is_none_or(|d| Instant::now() < d);
                    match if more { load.claim(want) } else { 0 } {
                        0 => return Ok(()),
                        records => (0, records),
                    }
                }
            };
            let (request, bytes) = produce_request(&load, &partitions, records, &mut cursor)?;
            let correlation = requests
                .send(ApiKey::Produce, PRODUCE_VERSION, &request)
                .await?;
            let sent = Sent {
                correlation,
                at: Instant::now(),
                records,
                bytes,
                paced: pace.map(|pace| (pace, first)),
                _window: permit,
            };
            if sent_tx.send(sent).is_err() {
                // The reader stopped: its error says why.
                return Ok(());
            }
        }
    }
    .await;
    drop(sent_tx);
    let outcome = reader.await??;
    wrote.map(|()| outcome)
}

/// The records a paced connection is to send next, as `(first index, count)`: a
/// thread keeps the time (tokio's millisecond timer would add up to a millisecond
/// of the bench's own lateness to each record) and hands over a request's worth
/// once it is full or its first record has waited `linger`.
struct PacedClaims {
    ready: tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    /// Handed over and not sent yet: requests waiting for the window.
    held: Option<(u64, u64)>,
}

fn paced_claims(pace: Pace, want: u64, deadline: Option<Instant>) -> PacedClaims {
    let (tx, ready) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut next = 0u64;
        loop {
            if pace.records.is_some_and(|records| next >= records) {
                return;
            }
            let last = pace.records.map_or(next + want, |r| r.min(next + want)) - 1;
            let mut at = pace.intended(last).min(pace.intended(next) + pace.linger);
            if let Some(deadline) = deadline {
                if pace.intended(next) >= deadline {
                    return;
                }
                at = at.min(deadline);
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let due = pace.due(Instant::now()).max(next + 1);
            let count = (due - next).min(want);
            if tx.send((next, count)).is_err() {
                return;
            }
            next += count;
        }
    });
    PacedClaims { ready, held: None }
}

impl PacedClaims {
    /// Up to `want` records that are due, waiting for the first; those that waited
    /// for the window together go in one request. `None` once the pace is done.
    async fn next(&mut self, want: u64) -> Option<(u64, u64)> {
        let (first, mut count) = match self.held.take() {
            Some(held) => held,
            None => self.ready.recv().await?,
        };
        while count < want {
            let Ok((more_first, more)) = self.ready.try_recv() else {
                break;
            };
            debug_assert_eq!(more_first, first + count);
            let take = more.min(want - count);
            count += take;
            if take < more {
                self.held = Some((more_first + take, more - take));
            }
        }
        Some((first, count))
    }
}

/// Where a connection's next record goes: the payload it takes, and the partition
/// its request's first batch is for (the next after the last request's, as a
/// sticky partitioner moves on once a batch is sent).
#[derive(Default)]
struct Cursor {
    record: usize,
    partition: usize,
}

/// A Produce request of `records` records, `per_batch` to a batch, for the
/// partitions from `cursor`'s on; with the bytes of record values it carries.
fn produce_request(
    load: &Load,
    partitions: &[i32],
    records: u64,
    cursor: &mut Cursor,
) -> anyhow::Result<(k::ProduceRequest, u64)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut left = records as usize;
    let mut bytes = 0u64;
    let mut data = Vec::new();
    while left > 0 && data.len() < partitions.len() {
        let partition = partitions[cursor.partition % partitions.len()];
        cursor.partition = (cursor.partition + 1) % partitions.len();
        let n = left.min(load.per_batch);
        left -= n;
        let batch: Vec<NewRecord> = (0..n)
            .map(|_| {
                let value = load.payloads[cursor.record % load.payloads.len()].clone();
                cursor.record += 1;
                bytes += value.len() as u64;
                NewRecord {
                    timestamp: now,
                    key: None,
                    value: Some(value),
                    headers: Vec::new(),
                }
            })
            .collect();
        let encoded = encode_batch(&batch, load.args.compression, ProducerIdentity::NONE)?;
        data.push(
            k::produce_request::PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(encoded)),
        );
    }
    let request = k::ProduceRequest::default()
        .with_acks(i16::from(load.args.acks.wire_value()))
        .with_timeout_ms(ANSWER_TIMEOUT.as_millis() as i32)
        .with_topic_data(vec![k::produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(load.args.topic.clone())))
            .with_partition_data(data)]);
    Ok((request, bytes))
}

/// Fails on the first partition the broker refused.
fn check_produced(mut body: Bytes, topic: &str) -> anyhow::Result<()> {
    let answer = k::ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
    for t in &answer.responses {
        for p in &t.partition_responses {
            if p.error_code != 0 {
                let why = p.error_message.as_ref().map_or("", |m| m.as_str());
                bail!(
                    "{topic}/{}: the broker answered {:?} {why}",
                    p.index,
                    p.error_code.err()
                );
            }
        }
    }
    Ok(())
}

/// Creates the topic unless it exists.
async fn ensure_topic(conn: &mut Connection, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let request = k::CreateTopicsRequest::default()
        .with_timeout_ms(ANSWER_TIMEOUT.as_millis() as i32)
        .with_topics(vec![k::create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_num_partitions(i32::try_from(partitions)?)
            .with_replication_factor(-1)]);
    let answer: k::CreateTopicsResponse = conn
        .call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)
        .await?;
    for t in &answer.topics {
        let code = t.error_code;
        if code != 0 && code.err() != Some(ResponseError::TopicAlreadyExists) {
            let why = t.error_message.as_ref().map_or("", |m| m.as_str());
            bail!("creating topic {topic}: {:?} {why}", code.err());
        }
    }
    Ok(())
}

/// The topic's partitions by the address of the broker leading them, once every
/// partition has a leader (a new topic may need a moment).
async fn leaders(conn: &mut Connection, topic: &str) -> anyhow::Result<BTreeMap<String, Vec<i32>>> {
    let request = k::MetadataRequest::default().with_topics(Some(vec![
        k::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.to_owned())))),
    ]));
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let answer: k::MetadataResponse = conn
            .call(ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        let brokers: BTreeMap<i32, String> = answer
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        let mut missing = 0;
        for t in &answer.topics {
            for p in &t.partitions {
                match brokers.get(&p.leader_id.0) {
                    Some(addr) if p.error_code == 0 => by_leader
                        .entry(addr.clone())
                        .or_default()
                        .push(p.partition_index),
                    _ => missing += 1,
                }
            }
        }
        if missing == 0 && !by_leader.is_empty() {
            return Ok(by_leader);
        }
        if Instant::now() > deadline {
            bail!("topic {topic}: {missing} partition(s) still without a leader the Kafka listener names");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP or TLS stream to a broker.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The rustls client configuration trusting the certificates in `ca`, presenting
/// `identity` (certificate and key files) if given.
fn tls_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = crate::pem::roots(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = crate::pem::identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--cert and --key do not match")?
        }
    };
    Ok(Arc::new(config))
}

/// A Kafka protocol connection: a request frame out, its answer back, in order.
struct Connection {
    answers: Answers,
    requests: Requests,
}

/// The reading half of a [`Connection`].
struct Answers {
    read: BufReader<ReadHalf<Box<dyn Stream>>>,
    addr: String,
}

/// The writing half of a [`Connection`].
struct Requests {
    write: WriteHalf<Box<dyn Stream>>,
    correlation: i32,
}

impl Connection {
    /// Connects to `addr` (over TLS with `tls`), retrying for a few seconds while a
    /// broker starts.
    async fn open(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Connection> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let tcp = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    return Err(e)
                        .with_context(|| format!("connecting to the Kafka listener {addr}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{host} as a TLS server name"))?;
                let connector = tokio_rustls::TlsConnector::from(tls);
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                Box::new(stream)
            }
        };
        let (read, write) = tokio::io::split(stream);
        Ok(Connection {
            answers: Answers {
                read: BufReader::with_capacity(64 * 1024, read),
                addr: addr.to_owned(),
            },
            requests: Requests {
                write,
                correlation: 0,
            },
        })
    }

    /// Sends one request and reads its answer.
    async fn call<Req, Resp>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> anyhow::Result<Resp>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable,
    {
        let correlation = self.requests.send(api, version, request).await?;
        let mut body = self.answers.answer(api, version, correlation).await?;
        Resp::decode(&mut body, version)
    }

    /// Its halves, to read answers on one task while requests go out on another.
    fn split(self) -> (Answers, Requests) {
        (self.answers, self.requests)
    }
}

impl Requests {
    /// Sends a request without waiting for its answer; returns its correlation id.
    async fn send<Req: Encodable + HeaderVersion>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> anyhow::Result<i32> {
        self.correlation += 1;
        let frame = frame(api, version, self.correlation, request)?;
        // Flushed: over TLS the end of the frame may wait in the session's buffer
        // otherwise, and the broker for it.
        self.write.write_all(&frame).await?;
        self.write.flush().await?;
        Ok(self.correlation)
    }
}

impl Answers {
    /// The body of the answer to request `correlation`, the next one due.
    async fn answer(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation: i32,
    ) -> anyhow::Result<Bytes> {
        read_frame(&mut self.read, api, version, correlation, &self.addr).await
    }
}

/// A request frame: size, header, body.
fn frame<T: Encodable + HeaderVersion>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    k::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("meridian-bench")))
        .encode(&mut out, T::header_version(version))?;
    body.encode(&mut out, version)?;
    let size = i32::try_from(out.len() - 4)?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}

/// Reads the answer to request `correlation` (of `api` at `version`) and its
/// header; returns the body.
async fn read_frame(
    read: &mut BufReader<ReadHalf<Box<dyn Stream>>>,
    api: ApiKey,
    version: i16,
    correlation: i32,
    addr: &str,
) -> anyhow::Result<Bytes> {
    let read_one = async {
        let size = read.read_i32().await?;
        let mut body = vec![0u8; usize::try_from(size).unwrap_or(0)];
        read.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(Bytes::from(body))
    };
    let mut body = match tokio::time::timeout(ANSWER_TIMEOUT, read_one).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(e).with_context(|| format!("reading an answer from {addr}")),
        Err(_) => bail!(
            "{addr} did not answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        ),
    };
    let header = k::ResponseHeader::decode(&mut body, api.response_header_version(version))?;
    if header.correlation_id != correlation {
        bail!(
            "{addr} answered request {} when {correlation} was due",
            header.correlation_id
        );
    }
    Ok(body)
}
