//! Seeded simulations of the sans-IO state machines with faults. A failure prints its
//! seed; `MERIDIAN_SIM_SEED=<seed>` replays it exactly, and `MERIDIAN_SIM_SEEDS=<n>`
//! runs more seeds (a long run: `MERIDIAN_SIM_SEEDS=10000 cargo test -p meridian-core --release`).

mod groups;
mod replication;
mod rng;
