//! Heartbeat ingest: for a batch of heartbeats, one transaction updates each device's last-seen
//! time and firmware, its latest health, its raw samples and the cohort rollups.

use std::collections::{BTreeMap, HashMap};

use drover_core::health::{bucket_start, MetricName, QuantileSketch, Rollup};
use drover_core::query::Dialect;
use drover_core::{Connectivity, DeviceId, Duration, LinkQuality, Timestamp, Version};
use drover_proto::device_api::Heartbeat;

use crate::db::{placeholders, value_rows, Db, Value};
use crate::ops::ts;
use crate::StoreError;

/// One heartbeat as received.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    pub device: DeviceId,
    pub received_at: Timestamp,
    pub heartbeat: Heartbeat,
}

/// Ingest settings.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Width of a rollup time bucket.
    pub bucket: Duration,
    /// Heartbeat interval assumed for devices that do not announce theirs.
    pub default_interval: Duration,
    /// A device is offline once this many intervals pass without a heartbeat.
    pub offline_grace: u32,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            bucket: Duration::from_secs(60),
            default_interval: Duration::from_secs(60),
            offline_grace: 3,
        }
    }
}

/// The latest health a device reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceHealth {
    /// When the readings were taken (device clock, or receive time).
    pub observed_at: Timestamp,
    pub received_at: Timestamp,
    pub boot_slot: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// A rollup row.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortRollup {
    pub firmware: String,
    pub metric: String,
    pub bucket: Timestamp,
    pub rollup: Rollup,
}

const CHUNK: usize = 400;

/// Stores `records`; returns how many were accepted. Records of unknown or decommissioned devices
/// are skipped (their credential was valid when they were received but the device is gone now).
pub async fn record<D: Db>(
    db: &mut D,
    records: Vec<HeartbeatRecord>,
    options: IngestOptions,
) -> Result<u64, StoreError> {
    // Resolve devices once for the whole batch.
    let mut devices: HashMap<String, (i64, String)> = HashMap::new();
    // Connectivity before this batch, to record transitions, and when the stored latest health
    // was observed: a buffered heartbeat older than that says nothing about the link now.
    let mut previous: HashMap<i64, (String, i64)> = HashMap::new();
    let mut stored_observed: HashMap<i64, Timestamp> = HashMap::new();
    // Per device: the newest sample of its chain (0 for none), advanced as this batch appends.
    let mut chain_head: HashMap<i64, i64> = HashMap::new();
    let ids: Vec<Value> = {
        let mut ids: Vec<&str> = records.iter().map(|r| r.device.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(Value::from).collect()
    };
    // On PostgreSQL the device rows are locked here, before their sample chains are read, so
    // replicas extending the same chain take turns (SQLite's single writer already does).
    let lock = match db.dialect() {
        Dialect::Postgres => " FOR UPDATE OF d",
        Dialect::Sqlite => "",
    };
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT d.id, d.seq, d.firmware, d.connectivity, h.observed_at, h.last_sample, d.link_score
             FROM devices d LEFT JOIN device_health h ON h.device_seq = d.seq
             WHERE d.id IN ({}) AND d.status <> 'decommissioned'{lock}",
            placeholders(1, chunk.len())
        );
        for row in db.query(&sql, chunk).await? {
            let seq = row.int(1)?;
            devices.insert(row.text(0)?, (seq, row.text(2)?));
            previous.insert(seq, (row.text(3)?, row.int(6)?));
            if let Some(at) = row.opt_int(4)? {
                stored_observed.insert(seq, Timestamp::from_millis(at));
            }
            chain_head.insert(seq, row.opt_int(5)?.unwrap_or(0));
        }
    }
    let accepted_records = records
        .iter()
        .filter(|r| devices.contains_key(r.device.as_str()))
        .count();
    let mut sample_seqs = allocate_sample_seqs(db, accepted_records)
        .await?
        .into_iter();

    let mut accepted = 0u64;
    // (seq, device, previous sample of the device, observed, received, metrics)
    let mut samples: Vec<(i64, i64, i64, Timestamp, Timestamp, String)> = Vec::new();
    // Rollups by (cohort, metric, bucket), the cohort numbered in `cohorts`: no strings are built
    // per heartbeat.
    let mut cohorts: Vec<String> = Vec::new();
    let mut cohort_numbers: HashMap<String, usize> = HashMap::new();
    let mut rollups: HashMap<(usize, &MetricName, i64), Rollup> = HashMap::new();
    // Per device: newest observation in this batch, and the last reported firmware.
    let mut latest: HashMap<i64, (Timestamp, Timestamp, Option<String>, String)> = HashMap::new();
    let mut seen: HashMap<i64, Timestamp> = HashMap::new();
    let mut firmware: HashMap<i64, Version> = HashMap::new();
    // Per device: link state, link score, offline deadline and observation time of its newest
    // heartbeat.
    let mut reach: HashMap<i64, (Connectivity, u8, Timestamp, Timestamp)> = HashMap::new();
    for record in &records {
        let Some((seq, stored_firmware)) = devices.get(record.device.as_str()) else {
            continue;
        };
        accepted += 1;
        let heartbeat = &record.heartbeat;
        let observed = heartbeat
            .sent_at
            .unwrap_or(record.received_at)
            .min(record.received_at);
        let metrics_json = metrics_json(&heartbeat.metrics);
        let sample = sample_seqs.next().ok_or_else(|| {
            StoreError::Backend("fewer sample numbers allocated than samples".into())
        })?;
        let prev = chain_head.insert(*seq, sample).unwrap_or(0);
        samples.push((
            sample,
            *seq,
            prev,
            observed,
            record.received_at,
            metrics_json.clone(),
        ));
        let reported = heartbeat.firmware.as_ref().or_else(|| firmware.get(seq));
        let reported_text = reported.map(ToString::to_string);
        let cohort = reported_text.as_deref().unwrap_or(stored_firmware);
        let cohort = match cohort_numbers.get(cohort) {
            Some(number) => *number,
            None => {
                cohort_numbers.insert(cohort.to_owned(), cohorts.len());
                cohorts.push(cohort.to_owned());
                cohorts.len() - 1
            }
        };
        let bucket = bucket_start(observed, options.bucket).as_millis();
        for (name, value) in &heartbeat.metrics {
            rollups
                .entry((cohort, name, bucket))
                .or_default()
                .add(*value);
        }
        let newer = latest.get(seq).is_none_or(|(at, _, _, _)| observed >= *at);
        if newer {
            let slot = heartbeat.boot_slot.as_ref().map(|s| s.as_str().to_owned());
            latest.insert(*seq, (observed, record.received_at, slot, metrics_json));
            if let Some(version) = &heartbeat.firmware {
                firmware.insert(*seq, version.clone());
            }
            let metric = |name: &str| {
                heartbeat
                    .metrics
                    .iter()
                    .find(|(k, _)| k.as_str() == name)
                    .map(|(_, v)| *v)
            };
            let link = LinkQuality {
                packet_loss_pct: metric("packet_loss_pct"),
                rssi_dbm: metric("rssi_dbm"),
                snr_db: metric("snr_db"),
                reconnects: metric("reconnects"),
            };
            let interval = heartbeat.interval_s.map_or(options.default_interval, |s| {
                Duration::from_secs(i64::from(s.max(1)))
            });
            let grace = interval
                .as_millis()
                .saturating_mul(i64::from(options.offline_grace));
            reach.insert(
                *seq,
                (
                    link.state(),
                    link.score(),
                    record
                        .received_at
                        .saturating_add(Duration::from_millis(grace)),
                    observed,
                ),
            );
        }
        let last = seen.entry(*seq).or_insert(record.received_at);
        *last = (*last).max(record.received_at);
    }

    // Last seen and connectivity: one statement per device. Every device in the batch has an
    // entry in `reach` (its first heartbeat is always its newest so far).
    for (seq, (state, score, deadline, observed)) in &reach {
        let (before, stored_score) = previous
            .get(seq)
            .map_or(("unknown", -1), |(state, score)| (state.as_str(), *score));
        // A reading older than the stored latest one does not speak for the link while the
        // device is reachable: it only extends the deadline. After silence it is the only news.
        let current = stored_observed
            .get(seq)
            .is_none_or(|stored| observed >= stored)
            || matches!(before, "offline" | "unknown");
        let last_seen = seen[seq];
        let after = if current && state.as_str() == before && i64::from(*score) == stored_score {
            // The usual heartbeat: the link is as it was; only the times move.
            db.execute(
                "UPDATE devices SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END,
                        offline_after = $2
                 WHERE seq = $3",
                &[ts(last_seen), ts(*deadline), Value::Int(*seq)],
            )
            .await?;
            before
        } else if current {
            db.execute(
                "UPDATE devices SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END,
                        connectivity = $2, link_score = $3, offline_after = $4
                 WHERE seq = $5",
                &[ts(last_seen), Value::from(state.as_str()), Value::Int(i64::from(*score)), ts(*deadline), Value::Int(*seq)],
            )
            .await?;
            state.as_str()
        } else {
            db.execute(
                "UPDATE devices SET last_seen = CASE WHEN last_seen < $1 THEN $1 ELSE last_seen END,
                        offline_after = CASE WHEN offline_after < $2 THEN $2 ELSE offline_after END
                 WHERE seq = $3",
                &[ts(last_seen), ts(*deadline), Value::Int(*seq)],
            )
            .await?;
            before
        };
        if before != after {
            record_transition(db, *seq, last_seen, before, after).await?;
        }
    }
    for (seq, version) in &firmware {
        db.execute(
            "UPDATE devices SET firmware = $1, fw_key = $2, updated_at = $3 WHERE seq = $4 AND firmware <> $1",
            &[Value::from(version.to_string()), Value::Bytes(version.sort_key()), ts(seen[seq]), Value::Int(*seq)],
        )
        .await?;
    }
    // Latest health: only replaced by a newer observation (buffered heartbeats arrive late); the
    // head of the sample chain always advances. One multi-row upsert per chunk; each device
    // appears once.
    let latest: Vec<_> = latest.into_iter().collect();
    for chunk in latest.chunks(CHUNK) {
        let newer = "device_health.observed_at <= excluded.observed_at";
        let sql = format!(
            "INSERT INTO device_health (device_seq, observed_at, received_at, metrics, boot_slot, last_sample) VALUES {}
             ON CONFLICT (device_seq) DO UPDATE SET
                 observed_at = CASE WHEN {newer} THEN excluded.observed_at ELSE device_health.observed_at END,
                 received_at = CASE WHEN {newer} THEN excluded.received_at ELSE device_health.received_at END,
                 metrics = CASE WHEN {newer} THEN excluded.metrics ELSE device_health.metrics END,
                 boot_slot = CASE WHEN {newer} THEN excluded.boot_slot ELSE device_health.boot_slot END,
                 last_sample = excluded.last_sample",
            value_rows(chunk.len(), 6)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(seq, (observed, received, slot, metrics))| {
                [
                    Value::Int(*seq),
                    ts(*observed),
                    ts(*received),
                    Value::from(metrics.as_str()),
                    Value::from(slot.clone().unwrap_or_default()),
                    Value::Int(chain_head.get(seq).copied().unwrap_or(0)),
                ]
            })
            .collect();
        db.execute(&sql, &params).await?;
    }
    // Samples are appended with the numbers allocated above (see migration 0009).
    let overriding = match db.dialect() {
        Dialect::Postgres => " OVERRIDING SYSTEM VALUE",
        Dialect::Sqlite => "",
    };
    for chunk in samples.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO heartbeat_samples (seq, device_seq, prev, observed_at, received_at, metrics){overriding} VALUES {}",
            value_rows(chunk.len(), 6)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(sample, seq, prev, observed, received, metrics)| {
                [
                    Value::Int(*sample),
                    Value::Int(*seq),
                    Value::Int(*prev),
                    ts(*observed),
                    ts(*received),
                    Value::from(metrics.as_str()),
                ]
            })
            .collect();
        db.execute(&sql, &params).await?;
    }
    // In key order, so that PostgreSQL replicas lock rollup rows in the same order.
    let mut rollups: Vec<_> = rollups
        .into_iter()
        .map(|((cohort, metric, bucket), rollup)| {
            ((cohorts[cohort].as_str(), metric.as_str(), bucket), rollup)
        })
        .collect();
    rollups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for ((cohort, metric, bucket), rollup) in rollups {
        merge_rollup(db, cohort, metric, bucket, rollup).await?;
    }
    Ok(accepted)
}

/// `n` new sample numbers, ascending, never used before (not even by a pruned sample, which a
/// chain may still name). SQLite's single writer continues after the largest ever stored (the
/// table is AUTOINCREMENT); PostgreSQL draws them from the table's identity sequence, which
/// concurrent replicas share.
async fn allocate_sample_seqs<D: Db>(db: &mut D, n: usize) -> Result<Vec<i64>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let count = i64::try_from(n).unwrap_or(i64::MAX);
    match db.dialect() {
        Dialect::Sqlite => {
            let last = db
                .query_one(
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'heartbeat_samples'), 0)",
                    &[],
                )
                .await?
                .int(0)?;
            Ok((1..=count).map(|k| last + k).collect())
        }
        Dialect::Postgres => {
            let mut seqs = db
                .query(
                    "SELECT nextval(pg_get_serial_sequence('heartbeat_samples', 'seq')) FROM generate_series(1, $1)",
                    &[Value::Int(count)],
                )
                .await?
                .iter()
                .map(|row| row.int(0))
                .collect::<Result<Vec<_>, _>>()?;
            seqs.sort_unstable();
            Ok(seqs)
        }
    }
}

/// The recursive walk over the sample chains that start at `anchor` (a query yielding the head
/// sample's seq, the device's seq, then any columns to carry along, named by `carried`), back to
/// samples received at or after `since`. Yields `chain (seq, device_seq, carried...)`; read the
/// rows with [`SAMPLE_OF_CHAIN`] (the walk's last step may be a sample received before `since`,
/// or one pruned).
pub(crate) fn sample_chain_cte(anchor: &str, carried: &[&str], since: &str) -> String {
    let columns: String = carried.iter().map(|c| format!(", {c}")).collect();
    let carry: String = carried.iter().map(|c| format!(", c.{c}")).collect();
    format!(
        "WITH RECURSIVE chain (seq, device_seq{columns}) AS (
             {anchor}
             UNION ALL
             SELECT s.prev, c.device_seq{carry} FROM chain c
             JOIN heartbeat_samples s ON s.seq = c.seq AND s.device_seq = c.device_seq
             WHERE s.received_at >= {since} AND s.prev < s.seq
         )"
    )
}

/// Joins the samples named by a [`sample_chain_cte`] walk, as `s`.
pub(crate) const SAMPLE_OF_CHAIN: &str =
    "chain c JOIN heartbeat_samples s ON s.seq = c.seq AND s.device_seq = c.device_seq";

fn metrics_json(metrics: &BTreeMap<MetricName, f64>) -> String {
    serde_json::to_string(metrics).unwrap_or_else(|_| "{}".to_owned())
}

/// Adds `rollup` into the stored row for its key (read, merge, write; the row is locked on
/// PostgreSQL so concurrent replicas serialise per key).
async fn merge_rollup<D: Db>(
    db: &mut D,
    cohort: &str,
    metric: &str,
    bucket: i64,
    mut rollup: Rollup,
) -> Result<(), StoreError> {
    let key = [Value::from(cohort), Value::from(metric), Value::Int(bucket)];
    db.execute(
        "INSERT INTO cohort_rollups (firmware, metric, bucket, count, sum, sum_sq, min, max, sketch)
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0, $4) ON CONFLICT (firmware, metric, bucket) DO NOTHING",
        &[key[0].clone(), key[1].clone(), key[2].clone(), Value::Bytes(QuantileSketch::new().to_bytes())],
    )
    .await?;
    let sql = format!(
        "SELECT count, sum, sum_sq, min, max, sketch FROM cohort_rollups WHERE firmware = $1 AND metric = $2 AND bucket = $3{}",
        db.for_update()
    );
    let row = db.query_one(&sql, &key).await?;
    if row.int(0)? > 0 {
        let stored = Rollup {
            count: row.int(0)? as u64,
            sum: row.float(1)?,
            sum_sq: row.float(2)?,
            min: row.float(3)?,
            max: row.float(4)?,
            sketch: QuantileSketch::from_bytes(&row.bytes(5)?).ok_or_else(|| {
                StoreError::Corrupt(format!("unreadable sketch for {cohort}/{metric}/{bucket}"))
            })?,
        };
        rollup.merge(&stored);
    }
    db.execute(
        "UPDATE cohort_rollups SET count = $4, sum = $5, sum_sq = $6, min = $7, max = $8, sketch = $9
         WHERE firmware = $1 AND metric = $2 AND bucket = $3",
        &[
            key[0].clone(),
            key[1].clone(),
            key[2].clone(),
            Value::Int(rollup.count as i64),
            Value::Float(rollup.sum),
            Value::Float(rollup.sum_sq),
            Value::Float(rollup.min),
            Value::Float(rollup.max),
            Value::Bytes(rollup.sketch.to_bytes()),
        ],
    )
    .await?;
    Ok(())
}

/// The latest health of a device, if it ever sent a heartbeat.
pub async fn latest<D: Db>(db: &mut D, id: &DeviceId) -> Result<Option<DeviceHealth>, StoreError> {
    let row = db
        .query_opt(
            "SELECT h.observed_at, h.received_at, h.boot_slot, h.metrics FROM device_health h JOIN devices d ON d.seq = h.device_seq WHERE d.id = $1",
            &[Value::from(id.as_str())],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let metrics: BTreeMap<String, f64> = serde_json::from_str(&row.text(3)?)
        .map_err(|e| StoreError::Corrupt(format!("health metrics: {e}")))?;
    let slot = row.text(2)?;
    Ok(Some(DeviceHealth {
        observed_at: Timestamp::from_millis(row.int(0)?),
        received_at: Timestamp::from_millis(row.int(1)?),
        boot_slot: (!slot.is_empty()).then_some(slot),
        metrics,
    }))
}

/// One raw heartbeat sample of a device: when it was observed and its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSample {
    pub observed_at: Timestamp,
    pub metrics: BTreeMap<String, f64>,
}

/// A device's raw heartbeat samples observed at or after `since`, oldest first, at most `limit`
/// (the newest `limit` when there are more). Walks the device's sample chain back to `since`, so
/// the cost grows with the samples it received since then.
pub async fn samples<D: Db>(
    db: &mut D,
    id: &DeviceId,
    since: Timestamp,
    limit: usize,
) -> Result<Vec<HealthSample>, StoreError> {
    let chain = sample_chain_cte(
        "SELECT h.last_sample, h.device_seq FROM device_health h JOIN devices d ON d.seq = h.device_seq WHERE d.id = $1",
        &[],
        "$2",
    );
    let rows = db
        .query(
            &format!(
                "{chain} SELECT s.observed_at, s.metrics FROM {SAMPLE_OF_CHAIN} \
                 WHERE s.observed_at >= $2 ORDER BY s.observed_at DESC, s.seq DESC LIMIT $3"
            ),
            &[
                Value::from(id.as_str()),
                ts(since),
                Value::from(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )
        .await?;
    let mut samples = rows
        .iter()
        .map(|row| {
            let metrics: BTreeMap<String, f64> = serde_json::from_str(&row.text(1)?)
                .map_err(|e| StoreError::Corrupt(format!("health sample metrics: {e}")))?;
            Ok(HealthSample {
                observed_at: Timestamp::from_millis(row.int(0)?),
                metrics,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    samples.reverse();
    Ok(samples)
}

/// Rollups of `metric` for `firmware` with buckets in `[from, to)`, oldest first.
pub async fn rollups<D: Db>(
    db: &mut D,
    firmware: &str,
    metric: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<CohortRollup>, StoreError> {
    let rows = db
        .query(
            "SELECT bucket, count, sum, sum_sq, min, max, sketch FROM cohort_rollups
             WHERE firmware = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4 ORDER BY bucket",
            &[Value::from(firmware), Value::from(metric), ts(from), ts(to)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(CohortRollup {
                firmware: firmware.to_owned(),
                metric: metric.to_owned(),
                bucket: Timestamp::from_millis(row.int(0)?),
                rollup: Rollup {
                    count: row.int(1)? as u64,
                    sum: row.float(2)?,
                    sum_sq: row.float(3)?,
                    min: row.float(4)?,
                    max: row.float(5)?,
                    sketch: QuantileSketch::from_bytes(&row.bytes(6)?).ok_or_else(|| {
                        StoreError::Corrupt(format!("unreadable sketch for {firmware}/{metric}"))
                    })?,
                },
            })
        })
        .collect()
}

/// Rollups of `metric` for every firmware version, with buckets in `[from, to)`: ordered by
/// firmware (byte order of the stored text) and then bucket.
///
/// The table's key starts with the firmware, so a filter on the metric alone would scan every
/// rollup ever kept. Instead the distinct firmware values are walked through the key (one index
/// probe each, a "loose index scan" written as a recursive query both backends run) and each
/// cohort is then read by its key range, so the cost grows with the number of firmware versions
/// and the rows returned, not with the rollup history.
pub async fn metric_rollups<D: Db>(
    db: &mut D,
    metric: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<CohortRollup>, StoreError> {
    let cohorts = db
        .query(
            "WITH RECURSIVE cohorts (firmware) AS (
                 SELECT MIN(firmware) FROM cohort_rollups
                 UNION ALL
                 SELECT (SELECT MIN(r.firmware) FROM cohort_rollups r WHERE r.firmware > c.firmware)
                 FROM cohorts c WHERE c.firmware IS NOT NULL
             )
             SELECT firmware FROM cohorts WHERE firmware IS NOT NULL",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in &cohorts {
        out.extend(rollups(db, &row.text(0)?, metric, from, to).await?);
    }
    Ok(out)
}

/// Deletes raw samples received before `before`; returns how many. Pruning by receipt cuts each
/// device's sample chain only at its old end.
pub async fn prune_samples<D: Db>(db: &mut D, before: Timestamp) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM heartbeat_samples WHERE received_at < $1",
        &[ts(before)],
    )
    .await
}

async fn record_transition<D: Db>(
    db: &mut D,
    seq: i64,
    at: Timestamp,
    from: &str,
    to: &str,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO connectivity_events (device_seq, at, from_state, to_state) VALUES ($1, $2, $3, $4)",
        &[Value::Int(seq), ts(at), Value::from(from), Value::from(to)],
    )
    .await?;
    Ok(())
}

/// Marks offline up to `limit` devices whose heartbeat deadline passed before `now`; returns
/// their ids. The query walks the partial index on the deadline of reachable devices, so its cost
/// is the number of devices that just went silent, not the fleet size.
pub async fn mark_offline<D: Db>(
    db: &mut D,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<DeviceId>, StoreError> {
    let rows = db
        .query(
            "SELECT seq, id, connectivity FROM devices
             WHERE connectivity IN ('online', 'degraded') AND offline_after < $1
             ORDER BY offline_after LIMIT $2",
            &[ts(now), Value::Int(limit as i64)],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let (seq, from) = (row.int(0)?, row.text(2)?);
        // Re-checked in the UPDATE: a heartbeat committed in between keeps the device online.
        let changed = db
            .execute(
                "UPDATE devices SET connectivity = 'offline'
                 WHERE seq = $1 AND connectivity IN ('online', 'degraded') AND offline_after < $2",
                &[Value::Int(seq), ts(now)],
            )
            .await?;
        if changed == 1 {
            record_transition(db, seq, now, &from, "offline").await?;
            ids.push(
                DeviceId::parse(&row.text(1)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
    }
    Ok(ids)
}

/// One change of a device's connectivity.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectivityChange {
    pub at: Timestamp,
    pub from: Connectivity,
    pub to: Connectivity,
}

/// A device's connectivity changes, newest first.
pub async fn connectivity_history<D: Db>(
    db: &mut D,
    id: &DeviceId,
    limit: usize,
) -> Result<Vec<ConnectivityChange>, StoreError> {
    let rows = db
        .query(
            "SELECT e.at, e.from_state, e.to_state FROM connectivity_events e JOIN devices d ON d.seq = e.device_seq
             WHERE d.id = $1 ORDER BY e.seq DESC LIMIT $2",
            &[Value::from(id.as_str()), Value::Int(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ConnectivityChange {
                at: Timestamp::from_millis(r.int(0)?),
                from: Connectivity::parse(&r.text(1)?).map_err(StoreError::Corrupt)?,
                to: Connectivity::parse(&r.text(2)?).map_err(StoreError::Corrupt)?,
            })
        })
        .collect()
}
