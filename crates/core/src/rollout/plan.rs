//! Choosing which devices go first: a stratified order over the target, so that every prefix of it
//! (the 1% canary, the 5% phase, …) holds each hardware revision, region and connectivity class in
//! the proportion the whole target does.
//!
//! Each device gets a rank in [0, 1): within its stratum the devices are shuffled by a keyed hash
//! and the i-th of n gets `(i + u) / n` for a hash-derived `u` in [0, 1). Sorting all devices by
//! rank interleaves the strata evenly, so the first k devices contain about `k · n_s / N` of each
//! stratum s, rounding apart. Ranks depend only on the rollout's seed and the device, never on the
//! order devices were read in, so replanning after a crash gives the same order.

use std::collections::BTreeMap;

/// A device to rank: its storage sequence number and the stratum it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub seq: i64,
    /// hardware revision, region and connectivity joined (any stable text).
    pub stratum: String,
}

/// Ranks for `candidates`, in the order given.
pub fn stratified_ranks(candidates: &[Candidate], seed: u64) -> Vec<f64> {
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (idx, candidate) in candidates.iter().enumerate() {
        strata.entry(&candidate.stratum).or_default().push(idx);
    }
    let mut ranks = vec![0.0; candidates.len()];
    for members in strata.values_mut() {
        members.sort_by_key(|&idx| (mix(seed ^ candidates[idx].seq as u64), candidates[idx].seq));
        let n = members.len() as f64;
        for (position, &idx) in members.iter().enumerate() {
            let jitter = unit(mix(seed.rotate_left(17) ^ candidates[idx].seq as u64));
            ranks[idx] = (position as f64 + jitter) / n;
        }
    }
    ranks
}

/// The rank of a device that joins the target after planning: uniform in [0, 1), so late joiners
/// spread over the phases like everyone else (in a phase already past, they are offered at once).
pub fn late_rank(seed: u64, seq: i64) -> f64 {
    unit(mix(seed ^ (seq as u64).rotate_left(29)))
}

/// Devices in the first `percent` of a target of `total`: at least one while the target is not
/// empty, so a 1% canary of 50 devices is one device rather than none.
pub fn phase_quota(total: u64, percent: f64) -> u64 {
    if total == 0 {
        return 0;
    }
    let quota = ((total as f64) * percent / 100.0).ceil() as u64;
    quota.clamp(1, total)
}

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Vec<Candidate> {
        // 70% rev-a/eu, 20% rev-b/us, 10% rev-c/us.
        (0..1000)
            .map(|seq| Candidate {
                seq,
                stratum: match seq % 10 {
                    0..=6 => "rev-a|eu".into(),
                    7 | 8 => "rev-b|us".into(),
                    _ => "rev-c|us".into(),
                },
            })
            .collect()
    }

    #[test]
    fn every_prefix_of_the_order_represents_every_stratum() {
        let fleet = fleet();
        let ranks = stratified_ranks(&fleet, 42);
        let mut order: Vec<usize> = (0..fleet.len()).collect();
        order.sort_by(|&a, &b| ranks[a].total_cmp(&ranks[b]));
        for (prefix, expect) in [(10, [7, 2, 1]), (50, [35, 10, 5]), (250, [175, 50, 25])] {
            let mut counts = [0i64; 3];
            for &idx in &order[..prefix] {
                counts[match fleet[idx].stratum.as_str() {
                    "rev-a|eu" => 0,
                    "rev-b|us" => 1,
                    _ => 2,
                }] += 1;
            }
            for s in 0..3 {
                assert!(
                    (counts[s] - expect[s]).abs() <= 1,
                    "prefix {prefix}: {counts:?} vs {expect:?}"
                );
            }
        }
    }

    #[test]
    fn ranks_do_not_depend_on_input_order_and_change_with_the_seed() {
        let fleet = fleet();
        let ranks = stratified_ranks(&fleet, 7);
        let mut reversed = fleet.clone();
        reversed.reverse();
        let mut again = stratified_ranks(&reversed, 7);
        again.reverse();
        assert_eq!(ranks, again);
        assert_ne!(ranks, stratified_ranks(&fleet, 8));
        assert!(ranks.iter().all(|r| (0.0..1.0).contains(r)));
    }

    #[test]
    fn phase_quotas_round_up_and_never_exceed_the_target() {
        assert_eq!(phase_quota(0, 1.0), 0);
        assert_eq!(phase_quota(50, 1.0), 1);
        assert_eq!(phase_quota(1000, 1.0), 10);
        assert_eq!(phase_quota(1001, 1.0), 11);
        assert_eq!(phase_quota(1000, 100.0), 1000);
    }
}
