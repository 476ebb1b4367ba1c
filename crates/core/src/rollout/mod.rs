//! Rollout decisions: the statistics that compare a canary cohort with its baseline and turn the
//! evidence into a pass / marginal / fail verdict for a rollout phase.

pub mod stats;
