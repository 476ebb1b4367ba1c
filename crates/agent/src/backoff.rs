//! Exponential backoff with full jitter: after the n-th consecutive failure wait a uniformly
//! random time in `0..=min(cap, base · 2ⁿ)`. Full jitter spreads a fleet that lost the server at
//! the same moment, so it does not come back as one synchronised wave.

use std::time::Duration;

use crate::random::Rng;

/// Consecutive-failure counter that turns into retry delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failures since the last success; the exponent of the next ceiling.
    failures: u32,
}

impl Backoff {
    /// The agent's policy: 1 s base, 5 min cap.
    pub fn standard() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// The upper bound of the next delay, without consuming a failure.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait before the next attempt. A server's
    /// `Retry-After` is a floor: the agent never comes back earlier than asked.
    pub fn on_failure(&mut self, rng: &mut Rng, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let jittered = Duration::from_millis(rng.up_to(ceiling.as_millis() as u64));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// Records a success: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ceiling_doubles_from_base_up_to_the_cap() {
        let mut backoff = Backoff::standard();
        let mut rng = Rng::seeded(1);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.on_failure(&mut rng, None);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn delays_are_full_jitter_below_the_ceiling() {
        let mut rng = Rng::seeded(42);
        let mut seen_small = false;
        for _ in 0..200 {
            let mut backoff = Backoff::standard();
            for _ in 0..5 {
                backoff.on_failure(&mut rng, None);
            }
            let ceiling = backoff.ceiling();
            let delay = backoff.on_failure(&mut rng, None);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            seen_small |= delay < ceiling / 4;
        }
        assert!(seen_small, "full jitter reaches down towards zero");
    }

    #[test]
    fn retry_after_is_a_floor_and_success_resets() {
        let mut rng = Rng::seeded(3);
        let mut backoff = Backoff::standard();
        assert_eq!(backoff.on_failure(&mut rng, Some(secs(30))), secs(30));
        for _ in 0..20 {
            backoff.on_failure(&mut rng, None);
        }
        assert!(backoff.on_failure(&mut rng, None) <= secs(300));
        assert!(backoff.on_failure(&mut rng, Some(secs(600))) >= secs(600));
        backoff.reset();
        assert_eq!(backoff.ceiling(), secs(1));
        assert_eq!(backoff.failures(), 0);
    }
}
