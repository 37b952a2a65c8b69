//! `meridian bench ratio`: produce and consume throughput against the transport
//! ceiling, in one command. The three benches run as child processes of this binary,
//! each exactly as a user would run it, interleaved for several rounds: this machine's
//! transport ceiling alone moves by tens of percent within minutes, so a ratio is
//! only worth something against transport runs made next to it.
//!
//! Each run also reports the CPU time its processes (bench and broker, or the two
//! transport endpoints) took per GiB. With client and broker sharing the cores, that
//! cost decides the throughput, and it moves much less between runs than the
//! throughput does: the transport's CPU per GiB against produce's or consume's is a
//! steadier reading of the same gap.
//!
//! With `--flush` each round also measures `flush=always` against the disk: a
//! produce with acks=all and `flush=always`, which reports the broker's fdatasyncs,
//! then `bench disk` appending as many bytes with an fdatasync at that run's average
//! flush size.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct RatioArgs {
    /// Rounds of transport, consume and produce, in that order (then, with --flush,
    /// `flush=always` and the disk).
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Producer batch size of the produce runs.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_size: usize,
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// Bytes each transport run moves.
    #[arg(long, default_value_t = 2 << 30)]
    pub transport_bytes: u64,
    /// Share of the transport each of produce and consume should reach.
    #[arg(long, default_value_t = 0.75)]
    pub target: f64,
    /// Each round also runs produce with acks=all and `flush=always`, then `bench
    /// disk` at the flush size that run's broker had (bytes per fdatasync).
    #[arg(long)]
    pub flush: bool,
    /// With --flush: the share of the disk's append + fdatasync rate `flush=always`
    /// should reach.
    #[arg(long, default_value_t = 0.8)]
    pub flush_target: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Round {
    transport_mib_per_sec: f64,
    consume_mib_per_sec: f64,
    produce_mib_per_sec: f64,
    /// CPU seconds per GiB (absent where `/proc` is not there to read it).
    transport_cpu_seconds_per_gib: Option<f64>,
    consume_cpu_seconds_per_gib: Option<f64>,
    produce_cpu_seconds_per_gib: Option<f64>,
    /// CPU seconds the hypervisor stole from this machine during the round's runs
    /// (absent where `/proc/stat` has no steal column).
    stolen_seconds: Option<f64>,
    /// With --flush: the `flush=always` produce run, and the disk at its flush size.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    flush: Option<FlushRound>,
}

#[derive(Serialize)]
struct FlushRound {
    flush_mib_per_sec: f64,
    /// The broker's bytes of records per fdatasync in that run.
    flush_bytes_per_fsync: u64,
    disk_mib_per_sec: f64,
}

#[derive(Serialize)]
struct Summary {
    rounds: Vec<Round>,
    transport_median: f64,
    consume_median: f64,
    produce_median: f64,
    /// Medians against the transport median.
    consume_ratio: f64,
    produce_ratio: f64,
    /// The transport's median CPU per GiB against consume's and produce's.
    consume_cpu_ratio: Option<f64>,
    produce_cpu_ratio: Option<f64>,
    target: f64,
    /// CPU seconds stolen over all rounds.
    stolen_seconds: Option<f64>,
    /// With --flush: the medians of `flush=always` and of the disk at its flush
    /// size, and the one against the other.
    #[serde(skip_serializing_if = "Option::is_none")]
    flush_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flush_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flush_target: Option<f64>,
}

pub async fn run(args: RatioArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the meridian binary")?;
    let load = [
        "--partitions".to_string(),
        args.partitions.to_string(),
        "--record-size".to_string(),
        args.record_size.to_string(),
        "--records".to_string(),
        args.records.to_string(),
    ];
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let transport_args = ["--bytes".to_string(), args.transport_bytes.to_string()];
        let transport = bench(&exe, &["transport"], &transport_args).await?;
        let consume = bench(&exe, &["consume"], &load).await?;
        let mut produce_args = load.to_vec();
        produce_args.extend([
            "--acks".to_string(),
            args.acks.clone(),
            "--batch-size".to_string(),
            args.batch_size.to_string(),
        ]);
        let produce = bench(&exe, &["produce"], &produce_args).await?;
        let mut runs = vec![&transport, &consume, &produce];
        let flushed = if args.flush {
            Some(flush_round(&exe, &load, args.batch_size).await?)
        } else {
            None
        };
        if let Some((flush, disk, _)) = &flushed {
            runs.extend([flush, disk]);
        }
        let stolen_seconds = runs
            .iter()
            .map(|run| run.stolen_seconds)
            .sum::<Option<f64>>();
        let flush = flushed.map(|(flush, disk, bytes_per_fsync)| FlushRound {
            flush_mib_per_sec: flush.mib_per_sec,
            flush_bytes_per_fsync: bytes_per_fsync,
            disk_mib_per_sec: disk.mib_per_sec,
        });
        if !args.json {
            let (t, c, p) = (
                transport.mib_per_sec,
                consume.mib_per_sec,
                produce.mib_per_sec,
            );
            println!(
                "round {round}: transport {t:.0} MiB/s, consume {c:.0} MiB/s ({}), produce {p:.0} MiB/s ({}){}{}{}",
                percent(c / t),
                percent(p / t),
                flush.as_ref().map_or(String::new(), |f| format!(
                    ", flush=always {:.0} MiB/s at {} KiB per fdatasync, disk {:.0} MiB/s at that size ({})",
                    f.flush_mib_per_sec,
                    f.flush_bytes_per_fsync / 1024,
                    f.disk_mib_per_sec,
                    percent(f.flush_mib_per_sec / f.disk_mib_per_sec)
                )),
                match (transport.cpu_seconds_per_gib, consume.cpu_seconds_per_gib, produce.cpu_seconds_per_gib) {
                    (Some(t), Some(c), Some(p)) => format!(
                        "; CPU s/GiB transport {t:.2}, consume {c:.2}, produce {p:.2}"
                    ),
                    _ => String::new(),
                },
                stolen_seconds.map_or(String::new(), |s| format!("; {s:.2} CPU s stolen by the hypervisor")),
            );
        }
        rounds.push(Round {
            transport_mib_per_sec: transport.mib_per_sec,
            consume_mib_per_sec: consume.mib_per_sec,
            produce_mib_per_sec: produce.mib_per_sec,
            transport_cpu_seconds_per_gib: transport.cpu_seconds_per_gib,
            consume_cpu_seconds_per_gib: consume.cpu_seconds_per_gib,
            produce_cpu_seconds_per_gib: produce.cpu_seconds_per_gib,
            stolen_seconds,
            flush,
        });
    }
    let median_of = |field: fn(&Round) -> f64| median(rounds.iter().map(field).collect());
    let transport_median = median_of(|r| r.transport_mib_per_sec);
    let consume_median = median_of(|r| r.consume_mib_per_sec);
    let produce_median = median_of(|r| r.produce_mib_per_sec);
    let cpu_median = |field: fn(&Round) -> Option<f64>| {
        rounds
            .iter()
            .map(field)
            .collect::<Option<Vec<f64>>>()
            .map(median)
    };
    let transport_cpu = cpu_median(|r| r.transport_cpu_seconds_per_gib);
    let flush_median = |field: fn(&FlushRound) -> f64| {
        let values: Option<Vec<f64>> = rounds.iter().map(|r| r.flush.as_ref().map(field)).collect();
        values.map(median)
    };
    let (flush_median, disk_median) = (
        flush_median(|f| f.flush_mib_per_sec),
        flush_median(|f| f.disk_mib_per_sec),
    );
    // None when a run was too short to read any CPU time (10 ms ticks).
    let cpu_ratio = |other: Option<f64>| Some(transport_cpu? / other.filter(|c| *c > 0.0)?);
    let summary = Summary {
        consume_ratio: consume_median / transport_median,
        produce_ratio: produce_median / transport_median,
        consume_cpu_ratio: cpu_ratio(cpu_median(|r| r.consume_cpu_seconds_per_gib)),
        produce_cpu_ratio: cpu_ratio(cpu_median(|r| r.produce_cpu_seconds_per_gib)),
        transport_median,
        consume_median,
        produce_median,
        target: args.target,
        stolen_seconds: rounds.iter().map(|r| r.stolen_seconds).sum(),
        flush_ratio: flush_median.zip(disk_median).map(|(f, d)| f / d),
        flush_median,
        disk_median,
        flush_target: args.flush.then_some(args.flush_target),
        rounds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!(
        "transport: median {transport_median:.0} MiB/s{}",
        summary.stolen_seconds.map_or(String::new(), |s| format!(
            " ({s:.2} CPU s stolen by the hypervisor over the {} rounds)",
            summary.rounds.len()
        ))
    );
    for (what, value, ratio, cpu_ratio) in [
        (
            "consume",
            summary.consume_median,
            summary.consume_ratio,
            summary.consume_cpu_ratio,
        ),
        (
            "produce",
            summary.produce_median,
            summary.produce_ratio,
            summary.produce_cpu_ratio,
        ),
    ] {
        println!(
            "{what}: median {value:.0} MiB/s = {} of the transport (target {}: {}){}",
            percent(ratio),
            percent(args.target),
            if ratio >= args.target {
                "met"
            } else {
                "not met"
            },
            cpu_ratio.map_or(String::new(), |r| format!(
                "; CPU per GiB: the transport's is {} of {what}'s",
                percent(r)
            ))
        );
    }
    if let (Some(flush), Some(disk), Some(ratio)) = (
        summary.flush_median,
        summary.disk_median,
        summary.flush_ratio,
    ) {
        println!(
            "flush=always: median {flush:.0} MiB/s = {} of the disk's {disk:.0} MiB/s at the same flush size (target {}: {})",
            percent(ratio),
            percent(args.flush_target),
            if ratio >= args.flush_target { "met" } else { "not met" },
        );
    }
    Ok(())
}

/// A produce with acks=all under `flush=always`, then `bench disk` appending as many
/// bytes with an fdatasync every as many bytes as that run's broker wrote per
/// fdatasync. Returns both runs and that flush size.
async fn flush_round(
    exe: &Path,
    load: &[String],
    batch_size: usize,
) -> anyhow::Result<(Run, Run, u64)> {
    let mut flush_args = load.to_vec();
    flush_args.extend(
        [
            "--acks",
            "all",
            "--broker-set",
            "flush=always",
            "--batch-size",
        ]
        .map(String::from),
    );
    flush_args.push(batch_size.to_string());
    let flush = bench(exe, &["produce"], &flush_args).await?;
    let (Some(bytes), Some(fsyncs)) = (flush.bytes, flush.broker_fsyncs.filter(|n| *n > 0)) else {
        bail!("the flush=always produce run reported no fdatasyncs of its broker");
    };
    let per_fsync = (bytes / fsyncs).max(1);
    let disk_args = [
        "--write-bytes".to_string(),
        per_fsync.to_string(),
        "--total-bytes".to_string(),
        bytes.to_string(),
    ];
    let disk = bench(exe, &["disk"], &disk_args).await?;
    Ok((flush, disk, per_fsync))
}

/// What one bench run reported.
struct Run {
    mib_per_sec: f64,
    cpu_seconds_per_gib: Option<f64>,
    stolen_seconds: Option<f64>,
    /// Bytes moved (produce: of records).
    bytes: Option<u64>,
    /// A produce run's broker's fdatasyncs, when it made any.
    broker_fsyncs: Option<u64>,
}

/// Runs `meridian bench <what> --json <args>` and returns what it reported.
async fn bench(exe: &Path, what: &[&str], args: &[String]) -> anyhow::Result<Run> {
    let output = tokio::process::Command::new(exe)
        .arg("bench")
        .args(what)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running bench {}", what.join(" ")))?;
    if !output.status.success() {
        bail!("bench {} failed ({})", what.join(" "), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .with_context(|| format!("bench {} printed no JSON: {stdout}", what.join(" ")))?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    let mib_per_sec = value["mib_per_sec"]
        .as_f64()
        .with_context(|| format!("bench {} printed no mib_per_sec: {line}", what.join(" ")))?;
    Ok(Run {
        mib_per_sec,
        cpu_seconds_per_gib: value["cpu_seconds_per_gib"].as_f64(),
        stolen_seconds: value["stolen_seconds"].as_f64(),
        bytes: value["bytes"].as_u64(),
        broker_fsyncs: value["broker_fsyncs"].as_u64(),
    })
}

/// A ratio as a percentage with one decimal, rounded down: a median of 74.5 %, or
/// of 74.96 %, must not print as the 75 % it does not reach. (The epsilon keeps a
/// ratio like 0.29, just under it in binary, at 29.0 %.)
fn percent(ratio: f64) -> String {
    format!("{:.1} %", (1000.0 * ratio + 1e-9).floor() / 10.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::{median, percent};

    #[test]
    fn percentages_keep_the_decimal_that_decides_a_target() {
        // 74.48 %: below the target, and printed so.
        assert_eq!(percent(464.0 / 623.0), "74.4 %");
        assert_eq!(percent(0.75), "75.0 %");
        assert_eq!(percent(0.6), "60.0 %");
        assert_eq!(percent(0.7496), "74.9 %");
        assert_eq!(percent(0.29), "29.0 %");
        assert_eq!(percent(1.2345), "123.4 %");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![969.0, 883.0, 897.0, 932.0]), 914.5);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
