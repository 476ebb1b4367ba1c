//! The heartbeat state machine: when to take a reading, when to send, what to do with the
//! server's answer. Pure: no clock, no IO, no sleeping. The loop in [`crate::agent`] feeds it
//! events with the current monotonic time and carries out the one [`Action`] it returns.
//!
//! Every reading goes through the [`Buffer`]; a send takes the oldest batch. So the normal case
//! (one heartbeat, sent at once) and recovery after an outage (many, sent in batches of at most
//! [`MAX_BATCH`]) are the same path.

use std::time::{Duration, Instant};

use drover_core::health::MetricName;
use drover_proto::device_api::Heartbeat;

use crate::backoff::Backoff;
use crate::buffer::{Buffer, Seq};
use crate::random::Rng;
use crate::transport::TransportError;

/// Most heartbeats in one request (the server's limit for `/heartbeats`).
pub const MAX_BATCH: usize = 1000;

/// The custom metric carrying how many heartbeats this agent has lost since it started.
pub const DROPPED_METRIC: &str = "agent_dropped_heartbeats";

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The agent started: take the first reading now.
    Started,
    /// The deadline of the last [`Action::SleepUntil`] passed.
    Woke,
    /// A reading was taken (answer to [`Action::Sample`]).
    Sampled(Heartbeat),
    /// The server stored the batch of the last [`Action::Send`].
    Sent,
    /// The last [`Action::Send`] failed.
    SendFailed(Failure),
    /// The transport (re)connected (MQTT): the server is reachable, so buffered heartbeats go now
    /// instead of after the backoff.
    Connected,
    /// The server refused this many heartbeats after they had been counted as sent (an external
    /// MQTT broker acknowledges before the server has seen them): count them as dropped.
    Refused(u64),
}

/// How a send failed, as far as the scheduler cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Unreachable, timed out or 5xx: keep the batch and try again later, no earlier than
    /// `retry_after` if the server said so.
    Transient { retry_after: Option<Duration> },
    /// The server refused the batch as invalid (4xx): resending cannot help. With `index`, only
    /// that heartbeat of the batch was at fault (batches are all or none).
    Rejected { index: Option<usize> },
    /// The credential was refused (401): the device was revoked or deleted.
    Unauthorized,
}

impl Failure {
    /// How the scheduler should treat a failed send.
    pub fn of(error: &TransportError) -> Failure {
        match error {
            TransportError::Unauthorized(_) => Failure::Unauthorized,
            TransportError::Rejected { index, .. } => Failure::Rejected { index: *index },
            other => Failure::Transient {
                retry_after: other.retry_after(),
            },
        }
    }
}

/// What the loop should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the device's health and answer with [`Event::Sampled`].
    Sample,
    /// Send these heartbeats (oldest first) and answer with [`Event::Sent`] or
    /// [`Event::SendFailed`].
    Send(Vec<Heartbeat>),
    /// Nothing to do until then; answer with [`Event::Woke`].
    SleepUntil(Instant),
    /// Stop: the credential is no longer valid.
    Exit,
}

/// Options of the heartbeat schedule.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    pub interval: Duration,
    /// Each interval is shifted by a random amount in `-jitter..=jitter`.
    pub jitter: Duration,
    pub max_buffered: usize,
}

/// The heartbeat state machine.
#[derive(Debug)]
pub struct Scheduler {
    options: ScheduleOptions,
    buffer: Buffer,
    backoff: Backoff,
    rng: Rng,
    next_sample: Option<Instant>,
    /// While backing off: no send before this.
    retry_at: Option<Instant>,
    /// The batch sent and not yet answered.
    in_flight: Option<Vec<Seq>>,
    sent: u64,
}

impl Scheduler {
    pub fn new(options: ScheduleOptions, backoff: Backoff, rng: Rng) -> Scheduler {
        Scheduler {
            buffer: Buffer::new(options.max_buffered),
            options,
            backoff,
            rng,
            next_sample: None,
            retry_at: None,
            in_flight: None,
            sent: 0,
        }
    }

    /// Takes one event and returns the next action.
    pub fn on_event(&mut self, now: Instant, event: Event) -> Action {
        match event {
            Event::Started => self.next_sample = Some(now),
            Event::Woke => {}
            Event::Sampled(mut heartbeat) => {
                // The count includes a heartbeat this push may drop only from the next reading on;
                // that is fine, the counter is cumulative.
                if let Ok(name) = MetricName::parse(DROPPED_METRIC) {
                    heartbeat.metrics.insert(name, self.buffer.dropped() as f64);
                }
                self.buffer.push(heartbeat);
                self.next_sample = Some(now + self.next_interval());
            }
            Event::Sent => {
                if let Some(seqs) = self.in_flight.take() {
                    self.sent += seqs.len() as u64;
                    self.buffer.acknowledge(&seqs);
                }
                self.backoff.reset();
                self.retry_at = None;
            }
            Event::SendFailed(Failure::Transient { retry_after }) => {
                self.in_flight = None;
                let delay = self.backoff.on_failure(&mut self.rng, retry_after);
                self.retry_at = Some(now + delay);
            }
            Event::SendFailed(Failure::Rejected { index }) => {
                if let Some(seqs) = self.in_flight.take() {
                    match index.and_then(|idx| seqs.get(idx)) {
                        Some(seq) => self.buffer.discard(&[*seq]),
                        None => self.buffer.discard(&seqs),
                    }
                }
            }
            Event::SendFailed(Failure::Unauthorized) => return Action::Exit,
            Event::Connected => {
                self.backoff.reset();
                self.retry_at = None;
            }
            Event::Refused(n) => self.buffer.count_dropped(n),
        }
        self.next_action(now)
    }

    /// Heartbeats waiting for the server.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Heartbeats lost (buffer overflow or rejected by the server).
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped()
    }

    /// Heartbeats the server acknowledged.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn next_action(&mut self, now: Instant) -> Action {
        if self.in_flight.is_some() {
            // The loop answers every Send before anything else; repeat nothing meanwhile.
            return Action::SleepUntil(now);
        }
        let next_sample = *self.next_sample.get_or_insert(now);
        if now >= next_sample {
            return Action::Sample;
        }
        let may_send = self.retry_at.is_none_or(|at| now >= at);
        if may_send && !self.buffer.is_empty() {
            let batch = self.buffer.oldest(MAX_BATCH);
            self.in_flight = Some(batch.iter().map(|(seq, _)| *seq).collect());
            return Action::Send(batch.into_iter().map(|(_, hb)| hb).collect());
        }
        let wake = match self.retry_at {
            Some(at) if !self.buffer.is_empty() => at.min(next_sample),
            _ => next_sample,
        };
        Action::SleepUntil(wake)
    }

    /// The interval shifted by up to ± jitter, never below a tenth of the interval.
    fn next_interval(&mut self) -> Duration {
        let interval = self.options.interval;
        let jitter = self.options.jitter.min(interval).as_millis() as u64;
        let offset = self.rng.up_to(2 * jitter) as i128 - jitter as i128;
        let millis = (interval.as_millis() as i128 + offset).max(interval.as_millis() as i128 / 10);
        Duration::from_millis(millis as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(uptime: f64) -> Heartbeat {
        let mut metrics = std::collections::BTreeMap::new();
        metrics.insert(MetricName::parse("uptime_s").unwrap(), uptime);
        Heartbeat {
            sent_at: None,
            firmware: None,
            interval_s: None,
            boot_slot: None,
            metrics,
        }
    }

    fn metric(heartbeat: &Heartbeat, name: &str) -> f64 {
        heartbeat.metrics[&MetricName::parse(name).unwrap()]
    }

    fn scheduler(max_buffered: usize) -> Scheduler {
        let options = ScheduleOptions {
            interval: Duration::from_secs(60),
            jitter: Duration::ZERO,
            max_buffered,
        };
        Scheduler::new(options, Backoff::standard(), Rng::seeded(9))
    }

    fn uptimes(action: &Action) -> Vec<f64> {
        match action {
            Action::Send(batch) => batch.iter().map(|hb| metric(hb, "uptime_s")).collect(),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_reading_is_sent_at_once_then_the_agent_sleeps_an_interval() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        assert_eq!(s.on_event(t0, Event::Started), Action::Sample);
        let send = s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        assert_eq!(uptimes(&send), [1.0]);
        if let Action::Send(batch) = &send {
            assert_eq!(metric(&batch[0], DROPPED_METRIC), 0.0);
        }
        assert_eq!(
            s.on_event(t0, Event::Sent),
            Action::SleepUntil(t0 + secs(60))
        );
        assert_eq!(s.on_event(t0 + secs(60), Event::Woke), Action::Sample);
        assert_eq!((s.sent(), s.buffered()), (1, 0));
    }

    #[test]
    fn an_outage_buffers_backs_off_and_flushes_everything_in_one_batch() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        let transient = Failure::Transient { retry_after: None };
        let action = s.on_event(t0, Event::SendFailed(transient.clone()));
        let Action::SleepUntil(retry) = action else {
            panic!("expected a sleep, got {action:?}")
        };
        assert!(retry <= t0 + secs(1), "first retry within the 1 s base");
        // Keep failing through three intervals: readings pile up, none are lost.
        let mut now = t0;
        for uptime in 2..=4 {
            now += secs(60);
            assert_eq!(s.on_event(now, Event::Woke), Action::Sample);
            let action = s.on_event(now, Event::Sampled(heartbeat(f64::from(uptime))));
            assert!(matches!(action, Action::Send(_)), "{action:?}");
            s.on_event(now, Event::SendFailed(transient.clone()));
        }
        assert_eq!(s.buffered(), 4);
        // The server is back: the next attempt carries all four, oldest first.
        now += secs(59);
        let action = s.on_event(now, Event::Woke);
        assert_eq!(uptimes(&action), [1.0, 2.0, 3.0, 4.0]);
        s.on_event(now, Event::Sent);
        assert_eq!((s.sent(), s.buffered(), s.dropped()), (4, 0, 0));
    }

    #[test]
    fn retry_after_from_the_server_delays_the_next_send() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        let busy = Failure::Transient {
            retry_after: Some(secs(30)),
        };
        let Action::SleepUntil(retry) = s.on_event(t0, Event::SendFailed(busy)) else {
            panic!("expected a sleep")
        };
        assert!(retry >= t0 + secs(30));
        assert_eq!(
            s.on_event(t0 + secs(10), Event::Woke),
            Action::SleepUntil(retry)
        );
        assert!(matches!(s.on_event(retry, Event::Woke), Action::Send(_)));
    }

    #[test]
    fn overflow_drops_the_oldest_and_reports_the_count() {
        let t0 = Instant::now();
        let mut s = scheduler(2);
        s.on_event(t0, Event::Started);
        let long_outage = Failure::Transient {
            retry_after: Some(secs(3600)),
        };
        let mut now = t0;
        for uptime in 1..=4 {
            assert_eq!(s.on_event(now, Event::Woke), Action::Sample);
            let action = s.on_event(now, Event::Sampled(heartbeat(f64::from(uptime))));
            if matches!(action, Action::Send(_)) {
                s.on_event(now, Event::SendFailed(long_outage.clone()));
            }
            now += secs(60);
        }
        assert_eq!((s.buffered(), s.dropped()), (2, 2));
        now = t0 + secs(3600);
        assert_eq!(s.on_event(now, Event::Woke), Action::Sample);
        let action = s.on_event(now, Event::Sampled(heartbeat(5.0)));
        let Action::Send(batch) = action else {
            panic!("expected a flush, got {action:?}")
        };
        let dropped: Vec<f64> = batch.iter().map(|hb| metric(hb, DROPPED_METRIC)).collect();
        assert_eq!(dropped, [1.0, 2.0], "each reading carries the drops so far");
        assert_eq!(s.dropped(), 3);
    }

    #[test]
    fn a_rejected_heartbeat_is_discarded_and_the_rest_still_sent() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        s.on_event(
            t0,
            Event::SendFailed(Failure::Transient {
                retry_after: Some(secs(100)),
            }),
        );
        s.on_event(t0 + secs(60), Event::Woke);
        s.on_event(t0 + secs(60), Event::Sampled(heartbeat(2.0)));
        let action = s.on_event(t0 + secs(100), Event::Woke);
        assert_eq!(uptimes(&action), [1.0, 2.0]);
        let action = s.on_event(
            t0 + secs(100),
            Event::SendFailed(Failure::Rejected { index: Some(0) }),
        );
        assert_eq!(
            uptimes(&action),
            [2.0],
            "rejections are not retried, the rest is"
        );
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn an_unauthorized_answer_stops_the_agent() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        assert_eq!(
            s.on_event(t0, Event::SendFailed(Failure::Unauthorized)),
            Action::Exit
        );
    }

    #[test]
    fn a_reconnect_flushes_at_once_instead_of_after_the_backoff() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        let outage = Failure::Transient {
            retry_after: Some(secs(50)),
        };
        assert_eq!(
            s.on_event(t0, Event::SendFailed(outage)),
            Action::SleepUntil(t0 + secs(50))
        );
        let action = s.on_event(t0 + secs(2), Event::Connected);
        assert_eq!(uptimes(&action), [1.0]);
        s.on_event(t0 + secs(2), Event::Sent);
        assert_eq!(
            s.on_event(t0 + secs(3), Event::Connected),
            Action::SleepUntil(t0 + secs(60)),
            "nothing buffered: back to sleep"
        );
    }

    #[test]
    fn heartbeats_refused_after_their_acknowledgement_count_as_dropped() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        s.on_event(t0, Event::Started);
        s.on_event(t0, Event::Sampled(heartbeat(1.0)));
        s.on_event(t0, Event::Sent);
        s.on_event(t0, Event::Refused(1));
        assert_eq!((s.sent(), s.dropped()), (1, 1));
        assert_eq!(s.on_event(t0 + secs(60), Event::Woke), Action::Sample);
        let action = s.on_event(t0 + secs(60), Event::Sampled(heartbeat(2.0)));
        let Action::Send(batch) = action else {
            panic!("expected a send, got {action:?}")
        };
        assert_eq!(metric(&batch[0], DROPPED_METRIC), 1.0);
    }

    #[test]
    fn jitter_spreads_intervals_within_bounds() {
        let options = ScheduleOptions {
            interval: secs(60),
            jitter: secs(6),
            max_buffered: 10,
        };
        let mut s = Scheduler::new(options, Backoff::standard(), Rng::seeded(5));
        let intervals: Vec<Duration> = (0..200).map(|_| s.next_interval()).collect();
        assert!(intervals.iter().all(|d| *d >= secs(54) && *d <= secs(66)));
        assert!(intervals.iter().any(|d| *d != intervals[0]));
    }
}
