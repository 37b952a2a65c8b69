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

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct RatioArgs {
    /// Rounds of transport, consume and produce, in that order.
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
        let (transport, transport_cpu) = bench(&exe, &["transport"], &transport_args).await?;
        let (consume, consume_cpu) = bench(&exe, &["consume"], &load).await?;
        let mut produce_args = load.to_vec();
        produce_args.extend([
            "--acks".to_string(),
            args.acks.clone(),
            "--batch-size".to_string(),
            args.batch_size.to_string(),
        ]);
        let (produce, produce_cpu) = bench(&exe, &["produce"], &produce_args).await?;
        if !args.json {
            println!(
                "round {round}: transport {transport:.0} MiB/s, consume {consume:.0} MiB/s ({:.0} %), produce {produce:.0} MiB/s ({:.0} %){}",
                100.0 * consume / transport,
                100.0 * produce / transport,
                match (transport_cpu, consume_cpu, produce_cpu) {
                    (Some(t), Some(c), Some(p)) => format!(
                        "; CPU s/GiB transport {t:.2}, consume {c:.2}, produce {p:.2}"
                    ),
                    _ => String::new(),
                }
            );
        }
        rounds.push(Round {
            transport_mib_per_sec: transport,
            consume_mib_per_sec: consume,
            produce_mib_per_sec: produce,
            transport_cpu_seconds_per_gib: transport_cpu,
            consume_cpu_seconds_per_gib: consume_cpu,
            produce_cpu_seconds_per_gib: produce_cpu,
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
        rounds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!("transport: median {transport_median:.0} MiB/s");
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
            "{what}: median {value:.0} MiB/s = {:.0} % of the transport (target {:.0} %: {}){}",
            100.0 * ratio,
            100.0 * args.target,
            if ratio >= args.target {
                "met"
            } else {
                "not met"
            },
            cpu_ratio.map_or(String::new(), |r| format!(
                "; CPU per GiB: the transport's is {:.0} % of {what}'s",
                100.0 * r
            ))
        );
    }
    Ok(())
}

/// Runs `meridian bench <what> --json <args>` and returns its MiB/s and CPU seconds
/// per GiB.
async fn bench(exe: &Path, what: &[&str], args: &[String]) -> anyhow::Result<(f64, Option<f64>)> {
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
    Ok((mib_per_sec, value["cpu_seconds_per_gib"].as_f64()))
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
    use super::median;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![969.0, 883.0, 897.0, 932.0]), 914.5);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
