//! The network models applied in the simulator's transport layer, without root: every request or
//! message of a virtual device waits out its link's latency, jitter and losses before it goes,
//! downloads are paced to the link's bandwidth, and during a disconnect period the link refuses
//! to carry anything (HTTP requests fail as unreachable, the MQTT connection is dropped).
//!
//! Loss is modelled the way a TCP connection experiences it, since both device APIs run over TCP:
//! a lost segment is not a lost message but a retransmission, so each of the request and the answer
//! is delayed by one retransmission timeout with the link's loss probability.

use std::time::{Duration, Instant};

use crate::sample::SimRng;
use crate::scenario::NetworkModel;
use crate::time::TimeScale;

/// The smallest retransmission timeout (Linux's `TCP_RTO_MIN`).
const MIN_RTO: Duration = Duration::from_millis(200);

/// One device's link: its network model (`None`: a perfect network), placed in time.
#[derive(Debug, Clone)]
pub struct Link {
    model: Option<NetworkModel>,
    /// Disconnect periods in wall time: `(every, lasting, phase)`; the link is down while
    /// `(elapsed + phase) % every < lasting`.
    outages: Option<(Duration, Duration, Duration)>,
    /// Loss added by the firmware the device runs (its connectivity degradation).
    extra_loss: f64,
    started: Instant,
}

impl Link {
    /// A link following `model`, with its disconnect periods (simulated time) scaled to the wall
    /// clock and shifted by a random phase, so that a cohort does not drop all at once.
    pub fn new(
        model: Option<NetworkModel>,
        scale: TimeScale,
        started: Instant,
        rng: &mut SimRng,
    ) -> Link {
        let outages = model.and_then(|m| m.disconnects).map(|d| {
            let every = scale.wall_time(d.every).max(Duration::from_millis(1));
            let lasting = scale.wall_time(d.lasting).min(every);
            let phase = Duration::from_secs_f64(every.as_secs_f64() * rng.next_f64());
            (every, lasting, phase)
        });
        Link {
            model,
            outages,
            extra_loss: 0.0,
            started,
        }
    }

    /// A perfect network.
    pub fn perfect(started: Instant) -> Link {
        Link {
            model: None,
            outages: None,
            extra_loss: 0.0,
            started,
        }
    }

    /// Sets the loss the running firmware adds to the network's own.
    pub fn set_extra_loss(&mut self, loss: f64) {
        self.extra_loss = loss.clamp(0.0, 1.0);
    }

    /// When the current disconnect period ends, if the link is down at `now`.
    pub fn down_until(&self, now: Instant) -> Option<Instant> {
        let (every, lasting, phase) = self.outages?;
        let elapsed = now.saturating_duration_since(self.started) + phase;
        let into = Duration::from_nanos((elapsed.as_nanos() % every.as_nanos()) as u64);
        (into < lasting).then(|| now + (lasting - into))
    }

    /// When the link next goes down at or after `now` (`now` itself while it is down); `None`
    /// when it never drops.
    pub fn next_down_after(&self, now: Instant) -> Option<Instant> {
        let (every, lasting, phase) = self.outages?;
        if lasting.is_zero() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.started) + phase;
        let into = Duration::from_nanos((elapsed.as_nanos() % every.as_nanos()) as u64);
        Some(if into < lasting {
            now
        } else {
            now + (every - into)
        })
    }

    /// The delay one request and its answer add: latency both ways, jitter, and a retransmission
    /// timeout for each of the two that is lost.
    pub fn round_trip(&self, rng: &mut SimRng) -> Duration {
        let Some(model) = self.model else {
            return Duration::ZERO;
        };
        let latency = wall(model.latency);
        let jitter = wall(model.jitter);
        let mut delay = latency * 2 + jitter.mul_f64(rng.next_f64());
        let loss = (model.loss + self.extra_loss).min(1.0);
        let rto = MIN_RTO.max(latency * 3);
        for _ in 0..2 {
            if loss > 0.0 && rng.chance(loss) {
                delay += rto;
            }
        }
        delay
    }

    /// The one-way delay of a message pushed by the server.
    pub fn one_way(&self, rng: &mut SimRng) -> Duration {
        self.round_trip(rng) / 2
    }

    /// The link's bandwidth in bytes per second; `None`: unlimited.
    pub fn bandwidth(&self) -> Option<u64> {
        self.model
            .and_then(|m| m.bandwidth)
            .map(|b| b.bytes_per_sec())
    }

    /// The total loss probability (the network's and the firmware's).
    pub fn loss(&self) -> f64 {
        (self.model.map_or(0.0, |m| m.loss) + self.extra_loss).min(1.0)
    }
}

/// Sleeps until `at`; never returns when there is no such instant (a `select!` arm that is off).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A scenario duration that is wall time by definition (latency, jitter).
fn wall(duration: drover_core::Duration) -> Duration {
    Duration::from_millis(duration.as_millis().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Disconnects;

    fn model(loss: f64, disconnects: Option<Disconnects>) -> NetworkModel {
        NetworkModel {
            latency: drover_core::Duration::from_millis(50),
            jitter: drover_core::Duration::from_millis(0),
            loss,
            bandwidth: None,
            disconnects,
        }
    }

    #[test]
    fn a_perfect_link_adds_nothing_and_never_drops() {
        let start = Instant::now();
        let link = Link::perfect(start);
        let mut rng = SimRng::from_seed(1);
        assert_eq!(link.round_trip(&mut rng), Duration::ZERO);
        assert_eq!(link.down_until(start + Duration::from_secs(3600)), None);
    }

    #[test]
    fn latency_counts_both_ways_and_losses_add_a_retransmission_timeout() {
        let start = Instant::now();
        let mut rng = SimRng::from_seed(2);
        let clean = Link::new(
            Some(model(0.0, None)),
            TimeScale::REAL_TIME,
            start,
            &mut rng,
        );
        assert_eq!(clean.round_trip(&mut rng), Duration::from_millis(100));
        let lossy = Link::new(
            Some(model(1.0, None)),
            TimeScale::REAL_TIME,
            start,
            &mut rng,
        );
        // Both directions lose a segment: 100 ms + 2 × max(200 ms, 150 ms).
        assert_eq!(lossy.round_trip(&mut rng), Duration::from_millis(500));
    }

    #[test]
    fn disconnect_periods_are_scaled_to_the_wall_clock_and_last_as_long_as_modelled() {
        let start = Instant::now();
        let mut rng = SimRng::from_seed(3);
        let disconnects = Disconnects {
            every: drover_core::Duration::from_millis(3_600_000),
            lasting: drover_core::Duration::from_millis(60_000),
        };
        // 60×: down for 1 s of every minute.
        let scale = TimeScale::new(60.0).unwrap();
        let link = Link::new(Some(model(0.0, Some(disconnects))), scale, start, &mut rng);
        let down: usize = (0..60_000)
            .step_by(10)
            .filter(|ms| {
                link.down_until(start + Duration::from_millis(*ms))
                    .is_some()
            })
            .count();
        assert_eq!(down, 100, "1 s of 60 s in 10 ms steps");
        let at = (0..60_000)
            .step_by(10)
            .map(|ms| start + Duration::from_millis(ms))
            .find(|at| link.down_until(*at).is_some())
            .unwrap();
        let until = link.down_until(at).unwrap();
        assert!(until - at <= Duration::from_secs(1));
    }
}
