//! A byte-rate limit, sans-IO: the caller passes the time.
//!
//! A token bucket that holds at most `burst` bytes and may go into debt: bytes are
//! charged once done (a fetch answers with at least one whole batch whatever size
//! was asked for), and what went over the balance is paid off before more is
//! allowed. Over any stretch the bytes charged stay within
//! `rate × elapsed + burst + the last charge`.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct ByteRate {
    bytes_per_sec: u64,
    burst: i64,
    /// Bytes that may be taken now; negative while in debt.
    balance: i64,
    refilled_at: Instant,
}

impl ByteRate {
    /// Starts full: `burst` bytes may go at once. With a burst of 0, every charge is
    /// paid off at the rate, and idle time earns nothing.
    pub fn new(bytes_per_sec: u64, burst: u64, now: Instant) -> ByteRate {
        assert!(bytes_per_sec > 0, "a zero rate would never allow anything");
        ByteRate {
            bytes_per_sec,
            burst: Self::clamp(burst),
            balance: Self::clamp(burst),
            refilled_at: now,
        }
    }

    fn clamp(bytes: u64) -> i64 {
        bytes.min(i64::MAX as u64) as i64
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = (elapsed.as_secs_f64() * self.bytes_per_sec as f64) as i64;
        if earned > 0 {
            self.balance = self.balance.saturating_add(earned).min(self.burst);
            self.refilled_at = now;
        }
    }

    /// Bytes that may be asked for now; 0 while in debt (see [`ByteRate::paid_off`]).
    pub fn allowance(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.balance.max(0) as u64
    }

    /// `bytes` arrived: take them from the balance, into debt if need be.
    pub fn charge(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.balance = self.balance.saturating_sub(Self::clamp(bytes));
    }

    /// How long until the debt is paid off (zero when there is none).
    pub fn paid_off(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.balance >= 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-(self.balance as f64) / self.bytes_per_sec as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_with_the_burst_and_refills_at_the_rate_up_to_it() {
        let t0 = Instant::now();
        let mut rate = ByteRate::new(1000, 1000, t0);
        assert_eq!(rate.allowance(t0), 1000);
        rate.charge(1000, t0);
        assert_eq!(rate.allowance(t0), 0);
        assert_eq!(rate.allowance(t0 + 250 * MS), 250);
        // Never more than the burst, however long it rests.
        assert_eq!(rate.allowance(t0 + 60_000 * MS), 1000);
    }

    #[test]
    fn a_response_larger_than_allowed_is_paid_off_before_the_next() {
        let t0 = Instant::now();
        let mut rate = ByteRate::new(1000, 1000, t0);
        // Asked for 1000, got a 3000-byte batch: 2000 in debt, two seconds.
        rate.charge(3000, t0);
        assert_eq!(rate.allowance(t0), 0);
        assert_eq!(rate.paid_off(t0), 2000 * MS);
        assert_eq!(rate.allowance(t0 + 1500 * MS), 0);
        assert_eq!(rate.paid_off(t0 + 1500 * MS), 500 * MS);
        assert_eq!(rate.paid_off(t0 + 2000 * MS), Duration::ZERO);
        assert_eq!(rate.allowance(t0 + 2100 * MS), 100);
    }

    #[test]
    fn without_a_burst_each_charge_waits_its_own_time_and_idling_earns_nothing() {
        let t0 = Instant::now();
        let mut rate = ByteRate::new(1_000_000, 0, t0);
        rate.charge(500_000, t0);
        assert_eq!(rate.paid_off(t0), 500 * MS);
        // Back to back: the second waits for the first, then its own share.
        rate.charge(250_000, t0);
        assert_eq!(rate.paid_off(t0), 750 * MS);
        let later = t0 + 10_000 * MS;
        assert_eq!(rate.allowance(later), 0);
        rate.charge(100_000, later);
        assert_eq!(rate.paid_off(later), 100 * MS);
    }

    #[test]
    fn bytes_charged_over_a_stretch_stay_within_the_rate_plus_the_burst() {
        // A fetcher that takes all it is allowed, in 10 ms steps, with responses
        // up to 700 bytes over what it asked for.
        let t0 = Instant::now();
        let mut rate = ByteRate::new(10_000, 10_000, t0);
        let mut now = t0;
        let mut taken = 0u64;
        for step in 0..1000u64 {
            let allowed = rate.allowance(now);
            if allowed > 0 {
                let got = allowed + step % 701;
                rate.charge(got, now);
                taken += got;
            }
            now += 10 * MS;
        }
        let seconds = (now - t0).as_secs_f64();
        let most = 10_000.0 * seconds + 10_000.0 + 700.0;
        assert!(taken as f64 <= most, "{taken} > {most}");
        assert!(
            taken as f64 >= 10_000.0 * (seconds - 1.0),
            "{taken} too little"
        );
    }
}
