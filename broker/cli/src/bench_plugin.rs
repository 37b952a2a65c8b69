//! `meridian bench plugin`: what a WebAssembly plugin costs and saves.
//!
//! - Produce throughput at `--record-size` into a topic with no plugin and into one with
//!   a pass-through filter (the `sampler` plugin with `every=1`) attached, alternating
//!   for `--rounds` and keeping the best run of each; the difference per record is the
//!   plugin's cost on the produce path.
//! - Bytes a fetch returns for the no-plugin topic, without and with a fetch filter that
//!   keeps one record in ten (`sampler` with `every=10`).
//! - In this process, with meridian-wasm-host directly: instantiation time of a cached
//!   module (what a new partition's first batch pays) and the guest call cost per record.

use meridian_wasm_host::{Host, HostConfig, Limits};
use meridian_wire::batch::{split_fetched_batches, Record};
use meridian_wire::messages::{
    FetchPartition, FetchRequest, FetchTopic, Request, Response, CONSUMER_REPLICA_ID,
};

use std::path::Path;

use super::*;

#[derive(Args)]
pub struct PluginBenchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// The sampler plugin module (default: plugins/ built in this source tree).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Produce runs per topic, alternating; the best of each is reported.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
}

#[derive(Serialize)]
struct PluginBenchResult {
    record_size: usize,
    records_per_run: u64,
    no_plugin_records_per_sec: f64,
    pass_through_records_per_sec: f64,
    produce_overhead_percent: f64,
    produce_overhead_ns_per_record: f64,
    fetch_bytes_unfiltered: u64,
    fetch_bytes_filtered_keep_10_percent: u64,
    fetch_bytes_saved_percent: f64,
    instantiate_us: f64,
    guest_call_ns_per_record: f64,
}

pub async fn run(args: PluginBenchArgs) -> anyhow::Result<()> {
    let module_path = args.module.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/wasm32-wasip1/release/sampler.wasm")
    });
    let wasm = std::fs::read(&module_path).with_context(|| {
        format!(
            "{}: build plugins/ first (cargo build --release --target wasm32-wasip1 in plugins/) or pass --module",
            module_path.display()
        )
    })?;
    let (instantiate_us, guest_call_ns_per_record) = host_figures(&wasm, args.load.record_size)?;

    let child = broker_for(&args.load.broker).await?;
    let clients = producer_clients(&args.load, &child).await?;
    let admin = clients[0].admin();
    admin
        .deploy_plugin("bench-sampler", "bench", Bytes::from(wasm))
        .await?;
    let base = LoadArgs {
        topic: "bench-no-plugin".into(),
        ..args.load.clone()
    };
    let with_plugin = LoadArgs {
        topic: "bench-pass-through".into(),
        ..args.load.clone()
    };
    ensure_topic(&clients[0], &base.topic, base.partitions).await?;
    ensure_topic(&clients[0], &with_plugin.topic, with_plugin.partitions).await?;
    admin
        .attach_plugin(
            &with_plugin.topic,
            meridian_client::Attachment {
                plugin: "bench-sampler".into(),
                params: vec![("every".into(), "1".into())],
                batch_time_max_ms: 0,
                memory_max_bytes: 0,
                on_failure: "reject".into(),
            },
        )
        .await?;
    let (mut best_base, mut best_plugin) = (0f64, 0f64);
    for round in 0..args.rounds.max(1) {
        for (load, best) in [(&base, &mut best_base), (&with_plugin, &mut best_plugin)] {
            let bar = progress(Some(load.records), &format!("round {round} {}", load.topic));
            let outcome = run_producers(&clients, load, None, &bar).await?;
            let rate = outcome.records as f64 / outcome.elapsed.as_secs_f64();
            *best = best.max(rate);
        }
    }

    let unfiltered = fetch_all_bytes(&clients[0], &base.topic, base.partitions, None).await?;
    let filtered = fetch_all_bytes(
        &clients[0],
        &base.topic,
        base.partitions,
        Some(meridian_client::FetchFilter {
            plugin: "bench-sampler".into(),
            params: vec![("every".into(), "10".into())],
        }),
    )
    .await?;

    let result = PluginBenchResult {
        record_size: args.load.record_size,
        records_per_run: args.load.records,
        no_plugin_records_per_sec: best_base,
        pass_through_records_per_sec: best_plugin,
        produce_overhead_percent: (1.0 - best_plugin / best_base) * 100.0,
        produce_overhead_ns_per_record: (1.0 / best_plugin - 1.0 / best_base) * 1e9,
        fetch_bytes_unfiltered: unfiltered,
        fetch_bytes_filtered_keep_10_percent: filtered,
        fetch_bytes_saved_percent: (1.0 - filtered as f64 / unfiltered.max(1) as f64) * 100.0,
        instantiate_us,
        guest_call_ns_per_record,
    };
    if args.load.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "produce, {} B records: no plugin {:.0} records/s, pass-through filter {:.0} records/s: {:.1}% slower, {:.0} ns per record",
            result.record_size,
            result.no_plugin_records_per_sec,
            result.pass_through_records_per_sec,
            result.produce_overhead_percent,
            result.produce_overhead_ns_per_record
        );
        println!(
            "fetch filter keeping 1 in 10: {} of {} bytes, {:.1}% saved",
            result.fetch_bytes_filtered_keep_10_percent,
            result.fetch_bytes_unfiltered,
            result.fetch_bytes_saved_percent
        );
        println!(
            "host: instantiation {:.1} µs (cached module), guest call {:.0} ns per record",
            result.instantiate_us, result.guest_call_ns_per_record
        );
    }
    Ok(())
}

/// Mean instantiation time (µs) and guest-call cost per record (ns) of the module.
fn host_figures(wasm: &[u8], record_size: usize) -> anyhow::Result<(f64, f64)> {
    let host = Host::new(HostConfig::default())?;
    let plugin = host.load(wasm)?;
    let params = vec![("every".to_string(), "1".to_string())];
    drop(plugin.instantiate(&params, Limits::default())?);
    let n = 1000;
    let started = Instant::now();
    for _ in 0..n {
        drop(plugin.instantiate(&params, Limits::default())?);
    }
    let instantiate_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;

    let value = Bytes::from(vec![7u8; record_size]);
    let batch: Vec<Record> = (0..1000)
        .map(|i| Record {
            offset: i,
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        })
        .collect();
    let mut instance = plugin.instantiate(&params, Limits::default())?;
    instance.run(&batch, 1)?;
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        instance.run(&batch, 1)?;
    }
    let ns_per_record = started.elapsed().as_secs_f64() * 1e9 / (rounds * batch.len()) as f64;
    Ok((instantiate_us, ns_per_record))
}

/// Total record bytes fetch responses carry for every partition from offset 0 to the end.
async fn fetch_all_bytes(
    client: &Client,
    topic: &str,
    partitions: u32,
    filter: Option<meridian_client::FetchFilter>,
) -> anyhow::Result<u64> {
    let admin = client.admin();
    let mut total = 0u64;
    for partition in 0..partitions {
        let end = admin.list_offsets(topic, partition, Offset::Latest).await?;
        let mut offset = 0i64;
        while offset < end {
            let request = Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 8 << 20,
                topics: vec![FetchTopic {
                    name: topic.into(),
                    id: meridian_wire::TopicId::NONE,
                    partitions: vec![FetchPartition::new(partition, offset, 8 << 20)],
                }],
                filter: filter.clone(),
                replica_id: CONSUMER_REPLICA_ID,
            });
            let Response::Fetch(response) = client.request(request).await? else {
                bail!("not a fetch response");
            };
            let p = &response.topics[0].partitions[0];
            if !p.error.is_ok() {
                bail!("fetch {topic}/{partition}: {}: {}", p.error, p.message);
            }
            total += p.records.len() as u64;
            let before = offset;
            for batch in split_fetched_batches(p.records.clone()) {
                offset = batch?.0.last_offset() + 1;
            }
            if offset == before {
                bail!("fetch {topic}/{partition} made no progress at offset {offset}");
            }
        }
    }
    Ok(total)
}
