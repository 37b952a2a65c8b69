//! Client quotas (`producer_byte_rate`, `consumer_byte_rate`, `[client_quotas.NAME]`):
//! how many bytes per second each client may produce and fetch. A client is its
//! certificate's common name under mutual TLS, else its IP address; brokers of the
//! cluster (and followers' fetches) are never held back.
//!
//! As Kafka does it: the request is served, its bytes are charged to the client's
//! token bucket (one second of its rate as burst, debt allowed), and the answer is
//! held until the debt is paid off. A client waiting for its answers sends no more
//! than its requests in flight allow, so it settles at its rate.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meridian_core::throttle::ByteRate;

use crate::config::{BrokerConfig, ClientQuota};

/// Buckets kept before those of clients not in debt are forgotten (a forgotten
/// client starts again with a full second of burst).
const TRACKED_CLIENTS: usize = 10_000;

/// Which bytes a quota counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Flow {
    /// Produce request frames.
    Produce,
    /// Consumers' fetch answers.
    Fetch,
}

impl Flow {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flow::Produce => "produce",
            Flow::Fetch => "fetch",
        }
    }
}

pub(crate) struct Quotas {
    settings: parking_lot::RwLock<Settings>,
    buckets: parking_lot::Mutex<HashMap<(Flow, String), ByteRate>>,
}

/// The rates of the config, replaced on reload.
struct Settings {
    producer_byte_rate: u64,
    consumer_byte_rate: u64,
    overrides: BTreeMap<String, ClientQuota>,
}

impl Settings {
    fn new(config: &BrokerConfig) -> Settings {
        Settings {
            producer_byte_rate: config.producer_byte_rate,
            consumer_byte_rate: config.consumer_byte_rate,
            overrides: config.client_quotas.clone(),
        }
    }

    fn global(&self, flow: Flow) -> u64 {
        match flow {
            Flow::Produce => self.producer_byte_rate,
            Flow::Fetch => self.consumer_byte_rate,
        }
    }

    /// `client`'s rate for `flow`; 0 is no limit.
    fn rate(&self, flow: Flow, client: &str) -> u64 {
        self.overrides
            .get(client)
            .and_then(|q| q.rate(flow))
            .unwrap_or_else(|| self.global(flow))
    }
}

impl Quotas {
    pub(crate) fn new(config: &BrokerConfig) -> Quotas {
        Quotas {
            settings: parking_lot::RwLock::new(Settings::new(config)),
            buckets: parking_lot::Mutex::default(),
        }
    }

    /// Takes the rates of `config` from now on; every client starts again with a
    /// full bucket at its new rate.
    pub(crate) fn replace(&self, config: &BrokerConfig) {
        *self.settings.write() = Settings::new(config);
        self.buckets.lock().clear();
    }

    /// Whether any client has a quota for `flow` (else there is nothing to charge).
    pub(crate) fn active(&self, flow: Flow) -> bool {
        let settings = self.settings.read();
        settings.global(flow) > 0
            || settings
                .overrides
                .values()
                .any(|q| q.rate(flow).unwrap_or(0) > 0)
    }

    /// Charges `bytes` of `flow` to `client` at `now`; returns how long to hold its
    /// answer (zero within its quota).
    pub(crate) fn charge(&self, flow: Flow, client: &str, bytes: u64, now: Instant) -> Duration {
        let rate = self.settings.read().rate(flow, client);
        if rate == 0 {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock();
        let key = (flow, client.to_string());
        if buckets.len() >= TRACKED_CLIENTS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| !bucket.paid_off(now).is_zero());
        }
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| ByteRate::new(rate, rate, now));
        bucket.charge(bytes, now);
        bucket.paid_off(now)
    }
}

impl ClientQuota {
    fn rate(&self, flow: Flow) -> Option<u64> {
        match flow {
            Flow::Produce => self.producer_byte_rate,
            Flow::Fetch => self.consumer_byte_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn quotas(settings: &[&str]) -> Quotas {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        Quotas::new(&BrokerConfig::load(None, vec![], &settings).unwrap())
    }

    #[test]
    fn a_client_over_its_rate_waits_for_its_debt_and_others_do_not() {
        let q = quotas(&["producer_byte_rate=1000"]);
        assert!(q.active(Flow::Produce) && !q.active(Flow::Fetch));
        let t0 = Instant::now();
        // A second of burst, then debt: 500 bytes over at 1000/s is half a second.
        assert_eq!(q.charge(Flow::Produce, "alice", 1000, t0), Duration::ZERO);
        assert_eq!(q.charge(Flow::Produce, "alice", 500, t0), 500 * MS);
        // Paid off as time passes.
        assert_eq!(q.charge(Flow::Produce, "alice", 0, t0 + 200 * MS), 300 * MS);
        // Another client has a bucket of its own; fetching has no quota.
        assert_eq!(q.charge(Flow::Produce, "bob", 1000, t0), Duration::ZERO);
        assert_eq!(q.charge(Flow::Fetch, "alice", 1 << 30, t0), Duration::ZERO);
    }

    #[test]
    fn overrides_change_one_clients_rate_or_lift_it() {
        let q = quotas(&[
            "consumer_byte_rate=1000",
            "client_quotas.bulk.consumer_byte_rate=0",
            "client_quotas.slow.consumer_byte_rate=100",
            "client_quotas.slow.producer_byte_rate=50",
        ]);
        assert!(q.active(Flow::Produce), "slow has a produce quota");
        let t0 = Instant::now();
        assert_eq!(q.charge(Flow::Fetch, "bulk", 1 << 30, t0), Duration::ZERO);
        assert_eq!(
            q.charge(Flow::Fetch, "slow", 200, t0),
            Duration::from_secs(1)
        );
        assert_eq!(
            q.charge(Flow::Fetch, "other", 2000, t0),
            Duration::from_secs(1)
        );
        assert_eq!(
            q.charge(Flow::Produce, "slow", 100, t0),
            Duration::from_secs(1)
        );
        assert_eq!(
            q.charge(Flow::Produce, "other", 1 << 30, t0),
            Duration::ZERO
        );

        // A reload: new rates, fresh buckets.
        let settings = ["producer_byte_rate=10".to_string()];
        q.replace(&BrokerConfig::load(None, vec![], &settings).unwrap());
        assert!(q.active(Flow::Produce) && !q.active(Flow::Fetch));
        assert_eq!(q.charge(Flow::Fetch, "other", 1 << 30, t0), Duration::ZERO);
        assert_eq!(
            q.charge(Flow::Produce, "slow", 20, t0),
            Duration::from_secs(1)
        );
    }
}
