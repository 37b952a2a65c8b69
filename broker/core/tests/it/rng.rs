//! xorshift64*: small, seedable, no dependencies.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Seeds to run: `MERIDIAN_SIM_SEED=<seed>` replays one, `MERIDIAN_SIM_SEEDS=<n>` runs
/// `n` (default `default_n`).
// The `sim` example shares this file and picks its own seeds.
#[allow(dead_code)]
pub fn seeds(default_n: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("MERIDIAN_SIM_SEED") {
        return vec![seed.parse().expect("MERIDIAN_SIM_SEED is a number")];
    }
    let n = std::env::var("MERIDIAN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_n);
    (0..n).collect()
}
