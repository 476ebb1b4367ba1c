//! Fleet rollups for the dashboard: device counts per (status, connectivity, firmware, region) and
//! the history of how many accepted devices ran each firmware version.
//!
//! Triggers on `devices` (migration 0008) append +1/−1 rows to `fleet_count_deltas` whenever a
//! device is created or deleted or one of the four counted columns changes. [`fold`] moves them
//! into `fleet_counts`; [`counts`] reads folded counts plus the unfolded deltas in one statement,
//! so a reader is exact at any moment and costs what the rollups hold (a few hundred rows), never
//! a scan of the devices. The rollup tick ([`tick`]) folds, writes a [`snapshot`] of the
//! per-version counts when they changed, and prunes history past its retention.
//!
//! On PostgreSQL writers only ever insert delta rows, so heartbeats, the offline sweep and imports
//! never wait on a shared counter row; the fold runs under an advisory lock, one replica at a time.

use std::collections::BTreeMap;

use drover_core::query::Dialect;
use drover_core::Timestamp;

use crate::db::{placeholders, Db, Value};
use crate::ops::ts;
use crate::StoreError;

/// Device statuses counted as accepted into the fleet: the operating states.
pub const ACCEPTED: [&str; 3] = ["active", "inactive", "error"];

/// Devices with one combination of the counted attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCount {
    pub status: String,
    pub connectivity: String,
    /// `''` for unknown.
    pub firmware: String,
    /// `''` for none.
    pub region: String,
    pub devices: u64,
}

/// One snapshot of accepted devices per firmware version (versions with none left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSnapshot {
    pub at: Timestamp,
    pub versions: BTreeMap<String, u64>,
}

/// What one rollup tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetTick {
    /// Delta rows folded into the counts.
    pub folded: u64,
    /// Whether the per-version counts had changed, so a snapshot was written.
    pub snapshot: bool,
    /// Snapshots pruned past retention.
    pub pruned: u64,
}

/// Arbitrary constant identifying the fleet rollup lock on PostgreSQL.
const PG_FLEET_LOCK: i64 = 0x4452_4f56_464c;

/// Folds the pending deltas into `fleet_counts`; returns how many delta rows it folded.
pub async fn fold<D: Db>(db: &mut D) -> Result<u64, StoreError> {
    let folded = match db.dialect() {
        Dialect::Postgres => {
            // Serialises folds across replicas (a fold already holding it in this transaction
            // passes: advisory locks are reentrant). The DELETE … RETURNING takes exactly the
            // delta rows it sums, whatever commits meanwhile.
            db.query(
                "SELECT pg_advisory_xact_lock($1)",
                &[Value::Int(PG_FLEET_LOCK)],
            )
            .await?;
            let row = db
                .query_one(
                    "WITH moved AS (
                         DELETE FROM fleet_count_deltas
                         RETURNING status, connectivity, firmware, region, delta
                     ), sums AS (
                         SELECT status, connectivity, firmware, region, SUM(delta) AS delta FROM moved
                         GROUP BY status, connectivity, firmware, region
                     ), upserted AS (
                         INSERT INTO fleet_counts (status, connectivity, firmware, region, devices)
                         SELECT status, connectivity, firmware, region, delta FROM sums WHERE delta <> 0
                         ORDER BY status, connectivity, firmware, region
                         ON CONFLICT (status, connectivity, firmware, region)
                         DO UPDATE SET devices = fleet_counts.devices + EXCLUDED.devices
                         RETURNING 1
                     )
                     SELECT (SELECT COUNT(*) FROM moved), (SELECT COUNT(*) FROM upserted)",
                    &[],
                )
                .await?;
            row.int(0)? as u64
        }
        Dialect::Sqlite => {
            // The single writer connection serialises this with every trigger.
            let row = db
                .query_one(
                    "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM fleet_count_deltas",
                    &[],
                )
                .await?;
            let (last, n_deltas) = (row.int(0)?, row.int(1)?);
            if n_deltas == 0 {
                return Ok(0);
            }
            db.execute(
                "INSERT INTO fleet_counts (status, connectivity, firmware, region, devices)
                 SELECT status, connectivity, firmware, region, SUM(delta) FROM fleet_count_deltas
                 WHERE seq <= $1
                 GROUP BY status, connectivity, firmware, region HAVING SUM(delta) <> 0
                 ON CONFLICT (status, connectivity, firmware, region)
                 DO UPDATE SET devices = fleet_counts.devices + excluded.devices",
                &[Value::Int(last)],
            )
            .await?;
            db.execute(
                "DELETE FROM fleet_count_deltas WHERE seq <= $1",
                &[Value::Int(last)],
            )
            .await?;
            n_deltas as u64
        }
    };
    if folded > 0 {
        db.execute("DELETE FROM fleet_counts WHERE devices = 0", &[])
            .await?;
    }
    Ok(folded)
}

/// Current device counts per (status, connectivity, firmware, region), combinations with no
/// device left out: the folded counts plus the deltas not folded yet, read in one statement so
/// that a concurrent fold can neither hide nor double a delta.
pub async fn counts<D: Db>(db: &mut D) -> Result<Vec<FleetCount>, StoreError> {
    let rows = db
        .query(
            "SELECT status, connectivity, firmware, region, CAST(SUM(devices) AS BIGINT) FROM (
                 SELECT status, connectivity, firmware, region, devices FROM fleet_counts
                 UNION ALL
                 SELECT status, connectivity, firmware, region, delta FROM fleet_count_deltas
             ) c
             GROUP BY status, connectivity, firmware, region
             HAVING SUM(devices) <> 0
             ORDER BY status, connectivity, firmware, region",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let devices = row.int(4)?;
            if devices < 0 {
                return Err(StoreError::Corrupt(format!(
                    "fleet count for {:?} is negative ({devices})",
                    row.0
                )));
            }
            Ok(FleetCount {
                status: row.text(0)?,
                connectivity: row.text(1)?,
                firmware: row.text(2)?,
                region: row.text(3)?,
                devices: devices as u64,
            })
        })
        .collect()
}

/// Accepted devices per firmware version now (versions with none left out).
pub async fn accepted_by_version<D: Db>(db: &mut D) -> Result<BTreeMap<String, u64>, StoreError> {
    Ok(by_version(&counts(db).await?))
}

/// Writes a snapshot of accepted devices per version at `now` if the counts differ from the
/// latest snapshot; returns whether it wrote one. A version present in the latest snapshot and
/// gone now gets a 0 row, so its curve ends at zero.
pub async fn snapshot<D: Db>(db: &mut D, now: Timestamp) -> Result<bool, StoreError> {
    let current = accepted_by_version(db).await?;
    let latest = latest_snapshot(db).await?;
    let previous = latest
        .as_ref()
        .map(|s| s.versions.clone())
        .unwrap_or_default();
    if previous == current {
        return Ok(false);
    }
    // Snapshot times are unique; a clock that did not move (or moved back) still orders them.
    let at = match &latest {
        Some(latest) if latest.at >= now => Timestamp::from_millis(latest.at.as_millis() + 1),
        _ => now,
    };
    db.execute("INSERT INTO version_snapshots (at) VALUES ($1)", &[ts(at)])
        .await?;
    let gone = previous
        .keys()
        .filter(|v| !current.contains_key(*v))
        .map(|v| (v.clone(), 0));
    let rows: Vec<(String, u64)> = current.clone().into_iter().chain(gone).collect();
    for chunk in rows.chunks(300) {
        let mut sql = String::from("INSERT INTO version_history (at, firmware, devices) VALUES ");
        let mut params = vec![ts(at)];
        for (idx, (firmware, devices)) in chunk.iter().enumerate() {
            if idx > 0 {
                sql.push_str(", ");
            }
            let n = params.len();
            sql.push_str(&format!("($1, ${}, ${})", n + 1, n + 2));
            params.push(Value::from(firmware.as_str()));
            params.push(Value::Int(*devices as i64));
        }
        db.execute(&sql, &params).await?;
    }
    Ok(true)
}

/// Snapshots taken at or after `since`, oldest first, downsampled to at most `max_points`: the
/// time from the first snapshot in the window to `now` is cut into `max_points` equal buckets
/// and the last snapshot of each is kept (so a young history keeps its detail in a long window).
/// Only the versions in `versions` are read, or every version when it is empty; a version absent
/// from a snapshot had no device then.
pub async fn history<D: Db>(
    db: &mut D,
    since: Timestamp,
    now: Timestamp,
    versions: &[String],
    max_points: usize,
) -> Result<Vec<VersionSnapshot>, StoreError> {
    let first = db
        .query_one(
            "SELECT MIN(at) FROM version_snapshots WHERE at >= $1 AND at <= $2",
            &[ts(since), ts(now)],
        )
        .await?
        .opt_int(0)?;
    let Some(start) = first else {
        return Ok(Vec::new());
    };
    let step = ((now.as_millis() - start) / max_points.max(1) as i64).max(1);
    let times = db
        .query(
            "SELECT MAX(at) FROM version_snapshots WHERE at >= $1 AND at <= $2
             GROUP BY (at - $1) / $3 ORDER BY 1",
            &[Value::Int(start), ts(now), Value::Int(step)],
        )
        .await?;
    let mut snapshots: Vec<VersionSnapshot> = times
        .iter()
        .map(|row| {
            Ok(VersionSnapshot {
                at: Timestamp::from_millis(row.int(0)?),
                versions: BTreeMap::new(),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    if snapshots.is_empty() {
        return Ok(snapshots);
    }
    let mut index: BTreeMap<i64, usize> = BTreeMap::new();
    for (idx, snapshot) in snapshots.iter().enumerate() {
        index.insert(snapshot.at.as_millis(), idx);
    }
    // The chosen times are at most `max_points`; read their rows in chunks of times.
    let at_values: Vec<i64> = index.keys().copied().collect();
    for chunk in at_values.chunks(200) {
        let mut params: Vec<Value> = chunk.iter().map(|at| Value::Int(*at)).collect();
        params.extend(versions.iter().map(|v| Value::from(v.as_str())));
        let only = if versions.is_empty() {
            String::new()
        } else {
            format!(
                " AND firmware IN ({})",
                placeholders(1 + chunk.len(), versions.len())
            )
        };
        let sql = format!(
            "SELECT at, firmware, devices FROM version_history
             WHERE at IN ({}){only} AND devices > 0",
            placeholders(1, chunk.len()),
        );
        for row in db.query(&sql, &params).await? {
            if let Some(idx) = index.get(&row.int(0)?) {
                snapshots[*idx]
                    .versions
                    .insert(row.text(1)?, row.int(2)? as u64);
            }
        }
    }
    Ok(snapshots)
}

/// Deletes snapshots taken before `before`; returns how many.
pub async fn prune<D: Db>(db: &mut D, before: Timestamp) -> Result<u64, StoreError> {
    db.execute("DELETE FROM version_history WHERE at < $1", &[ts(before)])
        .await?;
    db.execute("DELETE FROM version_snapshots WHERE at < $1", &[ts(before)])
        .await
}

/// Every version a rollout that was not aborted or rolled back targeted, with when its first such
/// rollout was created.
pub async fn rollout_versions<D: Db>(db: &mut D) -> Result<Vec<(String, Timestamp)>, StoreError> {
    let rows = db
        .query(
            "SELECT version, MIN(created_at) FROM rollouts
             WHERE status NOT IN ('aborted', 'rolled_back') GROUP BY version",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, Timestamp::from_millis(row.int(1)?))))
        .collect()
}

/// One rollup tick: fold, snapshot if changed, prune history before `prune_before`. `None` when
/// another replica is running the tick right now (PostgreSQL).
pub async fn tick<D: Db>(
    db: &mut D,
    now: Timestamp,
    prune_before: Timestamp,
) -> Result<Option<FleetTick>, StoreError> {
    if db.dialect() == Dialect::Postgres {
        let row = db
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[Value::Int(PG_FLEET_LOCK)],
            )
            .await?;
        if row.int(0)? == 0 {
            return Ok(None);
        }
    }
    let folded = fold(db).await?;
    let snapshot = snapshot(db, now).await?;
    let pruned = prune(db, prune_before).await?;
    Ok(Some(FleetTick {
        folded,
        snapshot,
        pruned,
    }))
}

// ---- helpers -----------------------------------------------------------------------------------

fn by_version(counts: &[FleetCount]) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for count in counts
        .iter()
        .filter(|c| ACCEPTED.contains(&c.status.as_str()))
    {
        *versions.entry(count.firmware.clone()).or_insert(0) += count.devices;
    }
    versions.retain(|_, n| *n > 0);
    versions
}

async fn latest_snapshot<D: Db>(db: &mut D) -> Result<Option<VersionSnapshot>, StoreError> {
    let Some(row) = db
        .query_opt(
            "SELECT at FROM version_snapshots ORDER BY at DESC LIMIT 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let at = row.int(0)?;
    let rows = db
        .query(
            "SELECT firmware, devices FROM version_history WHERE at = $1 AND devices > 0",
            &[Value::Int(at)],
        )
        .await?;
    let versions = rows
        .iter()
        .map(|row| Ok((row.text(0)?, row.int(1)? as u64)))
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(VersionSnapshot {
        at: Timestamp::from_millis(at),
        versions,
    }))
}
