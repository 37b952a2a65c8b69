//! Seeded simulations of the sans-IO state machines with faults. A failure prints its
//! seed; `MERIDIAN_SIM_SEED=<seed>` replays it exactly, and `MERIDIAN_SIM_SEEDS=<n>`
//! runs more seeds. Long runs: `cargo run --release -p meridian-core --example sim --
//! --seeds 10000` (the example shares these files).

mod groups;
mod replication;
mod rng;
