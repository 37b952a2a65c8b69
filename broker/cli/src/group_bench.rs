//! `meridian bench rebalance`: how long a consumer group takes to hand every partition
//! to the remaining members after one leaves cleanly, and after one crashes (its
//! session has to expire first).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_client::{Assignor, ConsumerConfig, GroupConfig};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::bench::{broker_for, connect, ensure_topic, RebalanceArgs};

/// How a member stops.
enum Stop {
    /// `Consumer::close`: commit and leave.
    Leave,
    /// Vanish without a word (the process died).
    Crash,
}

struct Member {
    owned: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<Stop>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

#[derive(Serialize)]
struct RebalanceResult {
    bench: &'static str,
    partitions: u32,
    members: usize,
    assignor: String,
    session_timeout_ms: u64,
    clean_leave_ms: Vec<f64>,
    crash_ms: Vec<f64>,
}

async fn start_member(
    args: &RebalanceArgs,
    child: &Option<crate::bench::ChildBroker>,
    assignor: Assignor,
) -> anyhow::Result<Member> {
    // Each member has its own connection, like separate processes.
    let client = connect(&args.broker, child).await?;
    let owned = Arc::new(AtomicUsize::new(0));
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let config = GroupConfig {
        assignor,
        session_timeout: Duration::from_millis(args.session_timeout_ms),
        client_id: "bench".into(),
        ..GroupConfig::new("bench-rebalance")
    };
    let reported = owned.clone();
    let task = tokio::spawn(async move {
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.subscribe(config, &["rebalance"]).await?;
        loop {
            tokio::select! {
                stop = &mut stop_rx => {
                    match stop {
                        Ok(Stop::Leave) => consumer.close().await?,
                        Ok(Stop::Crash) | Err(_) => {
                            drop(consumer);
                            client.close();
                        }
                    }
                    return Ok(());
                }
                polled = consumer.poll(Duration::from_millis(20)) => {
                    polled?;
                    reported.store(consumer.assignment().len(), Ordering::SeqCst);
                }
            }
        }
    });
    Ok(Member {
        owned,
        stop: Some(stop_tx),
        task,
    })
}

/// Waits until the live members own every partition between them and each owns at
/// least its fair share rounded down; returns how long that took.
async fn settle(members: &[Member], partitions: u32, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let floor = partitions as usize / members.len().max(1);
    loop {
        let counts: Vec<usize> = members
            .iter()
            .map(|m| m.owned.load(Ordering::SeqCst))
            .collect();
        if counts.iter().sum::<usize>() == partitions as usize && counts.iter().all(|n| *n >= floor)
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            anyhow::bail!("group did not settle within {within:?}: members own {counts:?}");
        }
        for m in members {
            if m.task.is_finished() {
                anyhow::bail!("a member stopped unexpectedly");
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn stop(mut member: Member, how: Stop) -> anyhow::Result<()> {
    if let Some(stop) = member.stop.take() {
        let _ = stop.send(how);
    }
    member.task.await.context("member task")?
}

pub async fn rebalance_bench(args: RebalanceArgs) -> anyhow::Result<()> {
    let assignor = Assignor::parse(&args.assignor).with_context(|| {
        format!(
            "--assignor {}: expected cooperative-sticky, range or roundrobin",
            args.assignor
        )
    })?;
    anyhow::ensure!(args.members >= 2, "--members must be at least 2");
    let mut settings = args.broker.broker_set.clone();
    // Let the session timeout asked for be accepted.
    settings.push(format!(
        "group_min_session_timeout_ms={}",
        args.session_timeout_ms.min(6_000)
    ));
    let broker_args = crate::bench::BrokerArgs {
        broker_set: settings,
        ..args.broker.clone()
    };
    let child = broker_for(&broker_args).await?;
    let admin_client = connect(&args.broker, &child).await?;
    ensure_topic(&admin_client, "rebalance", args.partitions).await?;
    let mut members = Vec::with_capacity(args.members);
    for _ in 0..args.members {
        members.push(start_member(&args, &child, assignor).await?);
    }
    let generous = Duration::from_millis(args.session_timeout_ms) + Duration::from_secs(30);
    settle(&members, args.partitions, generous).await?;

    let mut result = RebalanceResult {
        bench: "rebalance",
        partitions: args.partitions,
        members: args.members,
        assignor: args.assignor.clone(),
        session_timeout_ms: args.session_timeout_ms,
        clean_leave_ms: Vec::new(),
        crash_ms: Vec::new(),
    };
    for round in 0..args.rounds {
        for (how, times) in [(Stop::Leave, 0), (Stop::Crash, 1)] {
            let leaving = members.pop().expect("at least two members");
            // Counted from the moment the member is told to go.
            let started = Instant::now();
            stop(leaving, how).await?;
            settle(&members, args.partitions, generous).await?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if times == 0 {
                result.clean_leave_ms.push(ms);
            } else {
                result.crash_ms.push(ms);
            }
            if !args.json {
                println!(
                    "round {}: {} → remaining {} members own all {} partitions after {ms:.0} ms",
                    round + 1,
                    if times == 0 { "clean leave" } else { "crash" },
                    members.len(),
                    args.partitions
                );
            }
            members.push(start_member(&args, &child, assignor).await?);
            settle(&members, args.partitions, generous).await?;
        }
    }
    for m in members {
        stop(m, Stop::Leave).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "{} members, {} partitions, {}: clean leave max {:.0} ms, crash max {:.0} ms (session timeout {} ms)",
            args.members,
            args.partitions,
            args.assignor,
            max(&result.clean_leave_ms),
            max(&result.crash_ms),
            args.session_timeout_ms
        );
    }
    Ok(())
}
