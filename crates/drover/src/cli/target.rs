//! The target flags shared by `drover rollouts create` and `drover jobs create`: exactly one of a
//! group, a fleet query or a list of device ids.

use clap::Args;
use drover_core::{DeviceId, GroupName};
use drover_proto::target::Target;

/// Which devices a rollout or a job is for.
#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false)]
pub struct TargetArgs {
    /// Target: a static or dynamic group.
    #[arg(long, value_name = "GROUP", help_heading = "Target (exactly one)")]
    pub group: Option<GroupName>,
    /// Target: the devices matching a fleet query (see docs/query-language.md).
    #[arg(
        short = 'q',
        long,
        value_name = "QUERY",
        help_heading = "Target (exactly one)"
    )]
    pub query: Option<String>,
    /// Target: device ids, comma-separated.
    #[arg(
        long,
        value_name = "ID,…",
        value_delimiter = ',',
        help_heading = "Target (exactly one)"
    )]
    pub devices: Vec<DeviceId>,
}

impl TargetArgs {
    /// The target as the API takes it.
    pub fn target(&self) -> Target {
        match (&self.group, &self.query) {
            (Some(group), _) => Target::Group(group.clone()),
            (None, Some(query)) => Target::Query(query.clone()),
            (None, None) => Target::Devices(self.devices.clone()),
        }
    }
}
