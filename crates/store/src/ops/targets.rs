//! Resolving a [`Target`] (group, fleet query or device list) to the fleet query that selects its
//! devices, so rollouts and jobs select devices with the same compiled SQL as device listings.

use drover_core::query::Query;
use drover_proto::target::Target;

use crate::db::Db;
use crate::ops::groups;
use crate::StoreError;

/// The query selecting `target`'s devices. Unknown groups are `NotFound`; a query that does not
/// parse or a device list that is empty or too long is `Invalid`.
pub async fn query_of<D: Db>(db: &mut D, target: &Target) -> Result<Query, StoreError> {
    match target {
        Target::Group(group) => groups::membership_query(db, group).await,
        Target::Query(text) => {
            Query::parse(text).map_err(|e| StoreError::Invalid(format!("target query: {e}")))
        }
        Target::Devices(devices) => {
            if devices.is_empty() {
                return Err(StoreError::Invalid(
                    "the target device list is empty".into(),
                ));
            }
            if devices.len() > Target::MAX_DEVICES {
                return Err(StoreError::Invalid(format!(
                    "the target lists {} devices; at most {} may be listed, name larger sets with a group or a query",
                    devices.len(),
                    Target::MAX_DEVICES
                )));
            }
            let ids: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
            Query::parse(&format!("id IN ({})", ids.join(", ")))
                .map_err(|e| StoreError::Invalid(format!("target devices: {e}")))
        }
    }
}
