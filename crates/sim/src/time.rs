//! Time compression: converting between simulated time and wall time, and turning per-hour rates
//! into what happens in one simulated interval.
//!
//! The simulator never fakes the server's clock. Instead a scenario runs its simulated time
//! `speedup` times faster than the wall clock, and devices report what they model as rates per hour
//! (crashes per hour, bytes leaked per hour), so a "24 hours" soak at 60× takes 24 minutes and the
//! server's analysis still sees the rates a real day would produce. Everything here is arithmetic:
//! no clock is read.

use std::fmt;

use drover_core::Duration;

/// How much faster than the wall clock simulated time runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale {
    speedup: f64,
}

impl TimeScale {
    /// Simulated time runs at the speed of the wall clock.
    pub const REAL_TIME: TimeScale = TimeScale { speedup: 1.0 };

    /// A scale of `speedup` simulated seconds per wall second; `None` unless it is a finite number of
    /// at least 1 (the simulator can compress time, never stretch it).
    pub fn new(speedup: f64) -> Option<TimeScale> {
        (speedup.is_finite() && speedup >= 1.0).then_some(TimeScale { speedup })
    }

    pub fn speedup(self) -> f64 {
        self.speedup
    }

    /// How long `simulated` takes on the wall clock. Negative durations take no time.
    pub fn wall_time(self, simulated: Duration) -> std::time::Duration {
        let secs = simulated.as_millis().max(0) as f64 / 1000.0 / self.speedup;
        std::time::Duration::try_from_secs_f64(secs).unwrap_or(std::time::Duration::MAX)
    }

    /// How much simulated time passes during `wall` (saturating at the largest `Duration`).
    pub fn simulated_time(self, wall: std::time::Duration) -> Duration {
        // `as` saturates, so an absurdly long wall time cannot overflow.
        Duration::from_millis((wall.as_secs_f64() * 1000.0 * self.speedup).round() as i64)
    }

    /// A sentence for the simulator's output that states the compression, e.g. "24h of simulated
    /// time in 24m of wall time (60× speed-up)".
    pub fn describe(self, simulated: Duration) -> String {
        let wall_ms = self.wall_time(simulated).as_millis().min(i64::MAX as u128) as i64;
        format!(
            "{simulated} of simulated time in {} of wall time ({self} speed-up)",
            Duration::from_millis(wall_ms)
        )
    }
}

impl Default for TimeScale {
    fn default() -> Self {
        TimeScale::REAL_TIME
    }
}

impl fmt::Display for TimeScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×", self.speedup)
    }
}

/// The length of `interval` in hours (negative intervals count as zero).
pub fn hours(interval: Duration) -> f64 {
    interval.as_millis().max(0) as f64 / 3_600_000.0
}

/// How much of a per-hour quantity accrues over `interval`: the expected number of events for a rate
/// such as crashes per device-hour, or the amount for a rate such as bytes leaked per hour.
pub fn expected_events(rate_per_hour: f64, interval: Duration) -> f64 {
    rate_per_hour.max(0.0) * hours(interval)
}

/// The probability of at least one event in `interval` when events arrive independently at
/// `rate_per_hour` (a Poisson process): `1 - e^(-rate·t)`. Unlike `rate·t`, this stays a probability
/// however long the interval.
pub fn probability_of_any(rate_per_hour: f64, interval: Duration) -> f64 {
    // `-expm1(-x)` is `1 - e^(-x)` without losing precision for the tiny rates of healthy firmware.
    -(-expected_events(rate_per_hour, interval)).exp_m1()
}

/// The rate per hour that `count` events over `interval` amount to: what a device reports so that
/// the server reads the same rate whatever the speed-up. Zero for an empty interval.
pub fn rate_per_hour(count: f64, interval: Duration) -> f64 {
    let hours = hours(interval);
    if hours > 0.0 {
        count / hours
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Duration {
        Duration::parse(text).unwrap()
    }

    #[test]
    fn a_day_at_sixty_times_takes_twenty_four_wall_minutes() {
        let scale = TimeScale::new(60.0).unwrap();
        assert_eq!(
            scale.wall_time(d("24h")),
            std::time::Duration::from_secs(24 * 60)
        );
        assert_eq!(
            scale.simulated_time(std::time::Duration::from_secs(60)),
            d("1h")
        );
        assert_eq!(
            scale.describe(d("12h")),
            "12h of simulated time in 12m of wall time (60× speed-up)"
        );
    }

    #[test]
    fn real_time_maps_durations_to_themselves_and_negative_ones_to_zero() {
        let scale = TimeScale::default();
        assert_eq!(
            scale.wall_time(d("90s")),
            std::time::Duration::from_secs(90)
        );
        assert_eq!(scale.wall_time(d("90s").neg()), std::time::Duration::ZERO);
        assert_eq!(scale.to_string(), "1×");
    }

    #[test]
    fn speedups_below_one_or_not_finite_are_refused() {
        for bad in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY] {
            assert!(TimeScale::new(bad).is_none(), "{bad}");
        }
        assert!(TimeScale::new(1.0).is_some());
    }

    #[test]
    fn rates_per_hour_scale_with_the_interval() {
        assert_eq!(expected_events(2.0, d("30m")), 1.0);
        assert_eq!(expected_events(1000.0, d("6m")), 100.0);
        assert_eq!(rate_per_hour(1.0, d("30m")), 2.0);
        assert_eq!(rate_per_hour(5.0, Duration::from_millis(0)), 0.0);
        assert_eq!(expected_events(-1.0, d("1h")), 0.0);
    }

    #[test]
    fn the_chance_of_a_crash_follows_a_poisson_process() {
        // One crash per device-hour: P(at least one in an hour) = 1 - 1/e.
        let p = probability_of_any(1.0, d("1h"));
        assert!((p - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // Tiny rates stay precise: `1 - e^(-x)` computed naively would be off by about 1e-8 here.
        let x = 1e-6 / 60.0;
        let p = probability_of_any(1e-6, d("1m"));
        assert!(((p - (x - x * x / 2.0)) / x).abs() < 1e-14);
        // Long intervals approach but never exceed certainty.
        assert!(probability_of_any(10.0, d("1w")) <= 1.0);
        assert_eq!(probability_of_any(0.0, d("1h")), 0.0);
    }
}
