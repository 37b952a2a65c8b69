//! Long runs of the seeded simulations (the same code `cargo test` runs with fixed
//! seeds):
//!
//! ```text
//! cargo run --release -p meridian-core --example sim -- --seeds 10000
//! cargo run --release -p meridian-core --example sim -- --seed 995      # replay one
//! cargo run --release -p meridian-core --example sim -- --seeds 500 --only replication
//! ```
//!
//! A failing seed is printed with the command that replays it; the exit status is
//! non-zero.

#[path = "../tests/it/groups.rs"]
mod groups;
#[path = "../tests/it/replication.rs"]
mod replication;
#[path = "../tests/it/rng.rs"]
mod rng;

use std::process::ExitCode;
use std::time::Instant;

/// A simulation's name and its one-seed runner.
type Sim = (&'static str, fn(u64));

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut first, mut count, mut only) = (0u64, 1_000u64, None::<String>);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--seeds" => match value() {
                Some(n) => count = n,
                None => return usage(),
            },
            "--seed" => match value() {
                Some(s) => (first, count) = (s, 1),
                None => return usage(),
            },
            "--from" => match value() {
                Some(s) => first = s,
                None => return usage(),
            },
            "--only" => only = args.next(),
            _ => return usage(),
        }
    }
    let sims: [Sim; 2] = [
        ("groups", |seed| groups::run(seed)),
        ("replication", |seed| {
            replication::run(seed);
        }),
    ];
    // The simulations report through assertions; keep their output to our line.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    for (name, run) in sims {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let started = Instant::now();
        for seed in first..first + count {
            if std::panic::catch_unwind(|| run(seed)).is_err() {
                eprintln!(
                    "{name}: seed {seed} failed; replay: cargo run --release -p meridian-core --example sim -- --only {name} --seed {seed}"
                );
                return ExitCode::FAILURE;
            }
        }
        println!(
            "{name}: seeds {first}..{} passed in {:.1} s",
            first + count,
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: sim [--seeds N] [--from FIRST] [--seed S] [--only groups|replication]");
    ExitCode::FAILURE
}
