//! Rollout decisions: the definition and its validation (`spec`), which devices go first (`plan`),
//! the orchestrator's pure state machine (`machine`), canary-versus-baseline judgement (`canary`),
//! the statistics behind it (`stats`) and maintenance windows (`window`).

pub mod canary;
pub mod machine;
pub mod plan;
pub mod spec;
pub mod stats;
pub mod window;
