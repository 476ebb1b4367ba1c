//! The bounded buffer of heartbeats not yet acknowledged by the server.
//!
//! Every heartbeat passes through it, so an outage needs no special path: while sends fail the
//! buffer simply grows, and when the server is back it drains in batches. When full, the oldest
//! heartbeat is dropped (the newest readings matter most) and the drop is counted so the server
//! learns about the gap (`agent_dropped_heartbeats`).

use std::collections::VecDeque;

use drover_proto::device_api::Heartbeat;

/// Position of a heartbeat in the buffer's history; stable while older entries are dropped, so
/// an acknowledgement can never remove the wrong heartbeats.
pub type Seq = u64;

/// Heartbeats waiting for the server, oldest first.
#[derive(Debug, Clone)]
pub struct Buffer {
    entries: VecDeque<(Seq, Heartbeat)>,
    capacity: usize,
    next_seq: Seq,
    /// Heartbeats lost since the agent started (overflow or rejected by the server).
    dropped: u64,
}

impl Buffer {
    /// A buffer holding at most `capacity` heartbeats (at least one).
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Appends a heartbeat, dropping the oldest if the buffer is full. Returns whether one was
    /// dropped.
    pub fn push(&mut self, heartbeat: Heartbeat) -> bool {
        let overflow = self.entries.len() >= self.capacity;
        if overflow {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back((self.next_seq, heartbeat));
        self.next_seq += 1;
        overflow
    }

    /// The oldest `max` heartbeats with their positions (copies: they stay until acknowledged).
    pub fn oldest(&self, max: usize) -> Vec<(Seq, Heartbeat)> {
        self.entries.iter().take(max).cloned().collect()
    }

    /// Removes the heartbeats the server acknowledged.
    pub fn acknowledge(&mut self, seqs: &[Seq]) {
        self.entries.retain(|(seq, _)| !seqs.contains(seq));
    }

    /// Removes heartbeats the server will never accept, counting them as dropped.
    pub fn discard(&mut self, seqs: &[Seq]) {
        let before = self.entries.len();
        self.entries.retain(|(seq, _)| !seqs.contains(seq));
        self.dropped += (before - self.entries.len()) as u64;
    }

    /// Counts heartbeats lost after they had left the buffer (refused after an acknowledgement).
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(n: u32) -> Heartbeat {
        let mut metrics = std::collections::BTreeMap::new();
        metrics.insert(
            drover_core::health::MetricName::parse("uptime_s").unwrap(),
            f64::from(n),
        );
        Heartbeat {
            sent_at: None,
            firmware: None,
            interval_s: None,
            boot_slot: None,
            metrics,
        }
    }

    fn uptimes(batch: &[(Seq, Heartbeat)]) -> Vec<f64> {
        batch
            .iter()
            .map(|(_, hb)| *hb.metrics.values().next().unwrap())
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_it() {
        let mut buffer = Buffer::new(3);
        let overflows: Vec<bool> = (0..5).map(|n| buffer.push(heartbeat(n))).collect();
        assert_eq!(overflows, [false, false, false, true, true]);
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.dropped(), 2);
        assert_eq!(uptimes(&buffer.oldest(10)), [2.0, 3.0, 4.0]);
    }

    #[test]
    fn acknowledging_a_batch_removes_exactly_that_batch() {
        let mut buffer = Buffer::new(10);
        for n in 0..5 {
            buffer.push(heartbeat(n));
        }
        let batch = buffer.oldest(2);
        assert_eq!(uptimes(&batch), [0.0, 1.0]);
        buffer.push(heartbeat(5));
        let seqs: Vec<Seq> = batch.iter().map(|(seq, _)| *seq).collect();
        buffer.acknowledge(&seqs);
        assert_eq!(uptimes(&buffer.oldest(10)), [2.0, 3.0, 4.0, 5.0]);
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn acknowledging_after_overflow_never_removes_newer_heartbeats() {
        let mut buffer = Buffer::new(2);
        buffer.push(heartbeat(0));
        buffer.push(heartbeat(1));
        let seqs: Vec<Seq> = buffer.oldest(2).iter().map(|(seq, _)| *seq).collect();
        buffer.push(heartbeat(2)); // drops 0 while the batch is in flight
        buffer.acknowledge(&seqs);
        assert_eq!(uptimes(&buffer.oldest(10)), [2.0]);
    }

    #[test]
    fn discarded_heartbeats_count_as_dropped() {
        let mut buffer = Buffer::new(10);
        for n in 0..3 {
            buffer.push(heartbeat(n));
        }
        let first = buffer.oldest(1)[0].0;
        buffer.discard(&[first]);
        assert_eq!(buffer.dropped(), 1);
        assert_eq!(buffer.len(), 2);
    }
}
