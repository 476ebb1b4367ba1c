//! Rollout decisions: the pure rules that say whether, when and how far a rollout may proceed.

pub mod window;
