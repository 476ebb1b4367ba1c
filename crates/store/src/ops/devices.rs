//! Device registry operations: create, read, patch, delete, decommission, list with keyset
//! pagination, count, bulk update by query and streaming bulk import.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use drover_core::query::{Dialect, Query};
use drover_core::{
    Connectivity, Device, DeviceId, DeviceStatus, DeviceType, HardwareId, Label, TagKey, TagValue,
    Timestamp, Version,
};
use drover_proto::devices::{
    DevicePatch, DeviceSort, DeviceView, ImportResult, NewDevice, OnConflict, SortOrder,
};
use drover_proto::Page;
use tokio::sync::mpsc::Receiver;

use crate::db::{placeholders, value_rows, Db, Row, Value};
use crate::ops::{audit, auth::Actor, health, provision, ts};
use crate::{secret, StoreError};

/// Columns read into a [`Device`], in [`device_from_row`] order, with `d` as the table alias.
pub(crate) const DEVICE_COLS: &str =
    "d.seq, d.id, d.device_type, d.hw_id, d.hw_rev, d.site, d.region, d.status, d.firmware, d.created_at, d.updated_at, d.last_seen, d.connectivity, d.link_score";

/// Rows per multi-row INSERT: 13 parameters each stays far below both backends' parameter limits.
const INSERT_CHUNK: usize = 400;
/// Largest page a list call returns.
pub const MAX_PAGE: usize = 1000;

/// One line of an import: where it came from and the device it describes.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub device: NewDevice,
}

/// What the import producer sends to the store.
#[derive(Debug)]
pub enum ImportMsg {
    Batch(Vec<ImportRow>),
    /// Every row was valid: commit the import.
    Commit,
    /// The producer found errors: roll back.
    Abort,
}

fn corrupt<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn opt_label(text: String) -> Result<Option<Label>, StoreError> {
    if text.is_empty() {
        Ok(None)
    } else {
        Label::parse(&text).map(Some).map_err(corrupt)
    }
}

/// Reads a device (without tags) from a row of [`DEVICE_COLS`]; returns its internal sequence number too.
pub(crate) fn device_from_row(row: &Row) -> Result<(i64, Device), StoreError> {
    let hw_id = row.text(3)?;
    let firmware = row.text(8)?;
    let last_seen = row.int(11)?;
    let device = Device {
        id: DeviceId::parse(&row.text(1)?).map_err(corrupt)?,
        device_type: DeviceType::parse(&row.text(2)?).map_err(corrupt)?,
        hw_id: if hw_id.is_empty() {
            None
        } else {
            Some(HardwareId::parse(&hw_id).map_err(corrupt)?)
        },
        hw_rev: opt_label(row.text(4)?)?,
        site: opt_label(row.text(5)?)?,
        region: opt_label(row.text(6)?)?,
        status: DeviceStatus::parse(&row.text(7)?).map_err(StoreError::Corrupt)?,
        firmware: if firmware.is_empty() {
            None
        } else {
            Some(Version::parse(&firmware).map_err(corrupt)?)
        },
        tags: BTreeMap::new(),
        created_at: Timestamp::from_millis(row.int(9)?),
        updated_at: Timestamp::from_millis(row.int(10)?),
        last_seen: (last_seen != 0).then(|| Timestamp::from_millis(last_seen)),
        connectivity: Connectivity::parse(&row.text(12)?).map_err(StoreError::Corrupt)?,
        link_score: u8::try_from(row.int(13)?).ok(),
    };
    Ok((row.int(0)?, device))
}

/// Fills in the tags of `devices` (keyed by sequence number) with one query.
pub(crate) async fn load_tags<D: Db>(
    db: &mut D,
    devices: &mut [(i64, Device)],
) -> Result<(), StoreError> {
    if devices.is_empty() {
        return Ok(());
    }
    let index: HashMap<i64, usize> = devices
        .iter()
        .enumerate()
        .map(|(idx, (seq, _))| (*seq, idx))
        .collect();
    for chunk in devices
        .iter()
        .map(|(seq, _)| Value::Int(*seq))
        .collect::<Vec<_>>()
        .chunks(MAX_PAGE)
    {
        let sql = format!(
            "SELECT device_seq, key, value FROM device_tags WHERE device_seq IN ({})",
            placeholders(1, chunk.len())
        );
        for row in db.query(&sql, chunk).await? {
            let idx = index[&row.int(0)?];
            let key = TagKey::parse(&row.text(1)?).map_err(corrupt)?;
            let value = TagValue::parse(&row.text(2)?).map_err(corrupt)?;
            devices[idx].1.tags.insert(key, value);
        }
    }
    Ok(())
}

/// A device and its sequence number; `lock` takes a row lock on PostgreSQL.
pub(crate) async fn get_with_seq<D: Db>(
    db: &mut D,
    id: &DeviceId,
    lock: bool,
) -> Result<(i64, Device), StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLS} FROM devices d WHERE d.id = $1{}",
        if lock { db.for_update() } else { "" }
    );
    let row = db
        .query_opt(&sql, &[Value::from(id.as_str())])
        .await?
        .ok_or_else(|| StoreError::not_found("device", id))?;
    let mut devices = [device_from_row(&row)?];
    load_tags(db, &mut devices).await?;
    let [device] = devices;
    Ok(device)
}

pub async fn get<D: Db>(db: &mut D, id: &DeviceId) -> Result<Device, StoreError> {
    Ok(get_with_seq(db, id, false).await?.1)
}

/// Fails if a live device other than `except_seq` holds `hw_id`.
///
/// Lookups by hardware id repeat the partial unique index's condition (`hw_id <> '' AND status NOT
/// IN (…)`) word for word: SQLite uses a partial index only when the query implies its WHERE clause,
/// and without it every lookup would scan the table.
pub(crate) async fn check_hw_id_free<D: Db>(
    db: &mut D,
    hw_id: &HardwareId,
    except_seq: Option<i64>,
) -> Result<(), StoreError> {
    let row = db
        .query_opt(
            "SELECT seq, id FROM devices WHERE hw_id = $1 AND hw_id <> '' AND status NOT IN ('decommissioned', 'rejected')",
            &[Value::from(hw_id.as_str())],
        )
        .await?;
    if let Some(row) = row {
        if Some(row.int(0)?) != except_seq {
            return Err(StoreError::Conflict(format!(
                "hardware id {:?} is already used by device {:?}",
                hw_id.as_str(),
                row.text(1)?
            )));
        }
    }
    Ok(())
}

fn label_value(label: &Option<Label>) -> Value {
    Value::from(label.as_ref().map_or("", |l| l.as_str()))
}

/// The column values of a device row, in `INSERT_COLS` order.
fn insert_values(device: &Device, preauth_hash: Option<String>) -> [Value; 13] {
    [
        Value::from(device.id.as_str()),
        Value::from(device.device_type.as_str()),
        Value::from(device.hw_id.as_ref().map_or("", |h| h.as_str())),
        label_value(&device.hw_rev),
        label_value(&device.site),
        label_value(&device.region),
        Value::from(device.status.as_str()),
        Value::from(
            device
                .firmware
                .as_ref()
                .map_or(String::new(), |v| v.to_string()),
        ),
        Value::Bytes(
            device
                .firmware
                .as_ref()
                .map_or(Vec::new(), Version::sort_key),
        ),
        ts(device.created_at),
        ts(device.updated_at),
        Value::Int(device.last_seen.map_or(0, |t| t.as_millis())),
        preauth_hash.into(),
    ]
}

const INSERT_COLS: &str =
    "id, device_type, hw_id, hw_rev, site, region, status, firmware, fw_key, created_at, updated_at, last_seen, preauth_secret_hash";

/// Inserts one device with its tags; returns its sequence number.
pub(crate) async fn insert_device<D: Db>(
    db: &mut D,
    device: &Device,
    preauth_hash: Option<String>,
) -> Result<i64, StoreError> {
    if let Some(hw_id) = &device.hw_id {
        if device.status.holds_hardware_id() {
            check_hw_id_free(db, hw_id, None).await?;
        }
    }
    if db
        .query_opt(
            "SELECT 1 FROM devices WHERE id = $1",
            &[Value::from(device.id.as_str())],
        )
        .await?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "device {:?} already exists",
            device.id.as_str()
        )));
    }
    let sql = format!(
        "INSERT INTO devices ({INSERT_COLS}) VALUES ({}) RETURNING seq",
        placeholders(1, 13)
    );
    let seq = db
        .query_one(&sql, &insert_values(device, preauth_hash))
        .await?
        .int(0)?;
    let tags: Vec<(i64, &TagKey, &TagValue)> =
        device.tags.iter().map(|(k, v)| (seq, k, v)).collect();
    upsert_tags(db, &tags).await?;
    Ok(seq)
}

/// Sets tags (insert or overwrite), many rows per statement.
pub(crate) async fn upsert_tags<D: Db>(
    db: &mut D,
    tags: &[(i64, &TagKey, &TagValue)],
) -> Result<(), StoreError> {
    for chunk in tags.chunks(INSERT_CHUNK * 3) {
        let sql = format!(
            "INSERT INTO device_tags (device_seq, key, value) VALUES {} ON CONFLICT (device_seq, key) DO UPDATE SET value = excluded.value",
            value_rows(chunk.len(), 3)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(seq, k, v)| {
                [
                    Value::Int(*seq),
                    Value::from(k.as_str()),
                    Value::from(v.as_str()),
                ]
            })
            .collect();
        db.execute(&sql, &params).await?;
    }
    Ok(())
}

fn generated_id() -> DeviceId {
    DeviceId::parse(&secret::short_id("dev-")).expect("generated ids are valid")
}

fn creatable_status(status: Option<DeviceStatus>) -> Result<DeviceStatus, String> {
    match status.unwrap_or(DeviceStatus::Provisioning) {
        s @ (DeviceStatus::Provisioning
        | DeviceStatus::Active
        | DeviceStatus::Inactive
        | DeviceStatus::Error) => Ok(s),
        s => Err(format!(
            "a new device cannot start as {s}: use provisioning, active, inactive or error"
        )),
    }
}

/// A pre-authorisation secret is only usable together with a hardware id, and must be hard to guess.
fn check_preauth_secret(new: &NewDevice) -> Result<(), StoreError> {
    if let Some(secret) = &new.preauth_secret {
        if new.hw_id.is_none() {
            return Err(StoreError::Invalid(
                "preauth_secret needs a hw_id: the device presents both to provision".into(),
            ));
        }
        provision::check_secret_shape("preauth_secret", secret)?;
    }
    Ok(())
}

fn device_from_new(new: &NewDevice, status: DeviceStatus, now: Timestamp) -> Device {
    Device {
        id: new.id.clone().unwrap_or_else(generated_id),
        device_type: new.device_type.clone(),
        hw_id: new.hw_id.clone(),
        hw_rev: new.hw_rev.clone(),
        site: new.site.clone(),
        region: new.region.clone(),
        status,
        firmware: new.firmware.clone(),
        tags: new.tags.clone(),
        created_at: now,
        updated_at: now,
        last_seen: new.last_seen,
        connectivity: Connectivity::Unknown,
        link_score: None,
    }
}

pub async fn create<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: NewDevice,
    now: Timestamp,
) -> Result<(Device, Option<String>), StoreError> {
    let mut status = creatable_status(new.status).map_err(StoreError::Invalid)?;
    if new.issue_credential && status == DeviceStatus::Provisioning {
        // The operator hands the credential to the device directly: there is nothing left to provision.
        status = DeviceStatus::Active;
    }
    check_preauth_secret(&new)?;
    let device = device_from_new(&new, status, now);
    let seq = insert_device(db, &device, new.preauth_secret.as_deref().map(secret::hash)).await?;
    let credential = if new.issue_credential {
        Some(provision::issue_credential(db, seq, now).await?)
    } else {
        None
    };
    audit::record(
        db,
        actor,
        "device.create",
        "device",
        device.id.as_str(),
        None::<&()>,
        Some(&DeviceView::from(device.clone())),
        now,
    )
    .await?;
    Ok((device, credential))
}

/// Writes every column of `device` (except id and created_at) to row `seq`, and replaces its tags.
pub(crate) async fn write_device<D: Db>(
    db: &mut D,
    seq: i64,
    before: &Device,
    device: &Device,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE devices SET device_type = $1, hw_id = $2, hw_rev = $3, site = $4, region = $5, status = $6, firmware = $7, fw_key = $8, updated_at = $9, last_seen = $10 WHERE seq = $11",
        &[
            Value::from(device.device_type.as_str()),
            Value::from(device.hw_id.as_ref().map_or("", |h| h.as_str())),
            label_value(&device.hw_rev),
            label_value(&device.site),
            label_value(&device.region),
            Value::from(device.status.as_str()),
            Value::from(device.firmware.as_ref().map_or(String::new(), |v| v.to_string())),
            Value::Bytes(device.firmware.as_ref().map_or(Vec::new(), Version::sort_key)),
            ts(device.updated_at),
            Value::Int(device.last_seen.map_or(0, |t| t.as_millis())),
            Value::Int(seq),
        ],
    )
    .await?;
    if before.tags != device.tags {
        for key in before.tags.keys().filter(|k| !device.tags.contains_key(*k)) {
            db.execute(
                "DELETE FROM device_tags WHERE device_seq = $1 AND key = $2",
                &[Value::Int(seq), Value::from(key.as_str())],
            )
            .await?;
        }
        let changed: Vec<(i64, &TagKey, &TagValue)> = device
            .tags
            .iter()
            .filter(|(k, v)| before.tags.get(*k) != Some(*v))
            .map(|(k, v)| (seq, k, v))
            .collect();
        upsert_tags(db, &changed).await?;
    }
    Ok(())
}

/// Applies `patch` to `device` in memory, checking lifecycle rules.
fn apply_patch(device: &mut Device, patch: DevicePatch) -> Result<(), StoreError> {
    if let Some(device_type) = patch.device_type {
        device.device_type = device_type;
    }
    if let Some(hw_id) = patch.hw_id {
        device.hw_id = hw_id;
    }
    if let Some(hw_rev) = patch.hw_rev {
        device.hw_rev = hw_rev;
    }
    if let Some(site) = patch.site {
        device.site = site;
    }
    if let Some(region) = patch.region {
        device.region = region;
    }
    if let Some(firmware) = patch.firmware {
        device.firmware = firmware;
    }
    if let Some(status) = patch.status {
        if !device.status.can_set_to(status) {
            return Err(StoreError::Invalid(format!(
                "cannot change status from {} to {status} by editing: {}",
                device.status,
                match (device.status, status) {
                    (_, DeviceStatus::Decommissioned) => "use the decommission operation",
                    (DeviceStatus::Pending, _) => "accept or reject the pending device",
                    (DeviceStatus::Provisioning, _) =>
                        "the device becomes active when it provisions",
                    _ => "only active, inactive and error can be set",
                }
            )));
        }
        device.status = status;
    }
    for (key, value) in patch.tags {
        match value {
            Some(value) => device.tags.insert(key, value),
            None => device.tags.remove(&key),
        };
    }
    Ok(())
}

pub async fn update<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    patch: DevicePatch,
    now: Timestamp,
) -> Result<Device, StoreError> {
    let (seq, before) = get_with_seq(db, id, true).await?;
    if before.status == DeviceStatus::Decommissioned {
        return Err(StoreError::Invalid(format!(
            "device {id} is decommissioned; it can only be read or deleted"
        )));
    }
    let mut device = before.clone();
    apply_patch(&mut device, patch)?;
    // `Version` equality ignores build metadata, but the reported build is part of the record, so
    // compare the firmware text too: a patch that changes only the build must still be written.
    let same_firmware_text = device.firmware.as_ref().map(Version::to_string)
        == before.firmware.as_ref().map(Version::to_string);
    if device == before && same_firmware_text {
        return Ok(before);
    }
    if device.hw_id != before.hw_id {
        if let Some(hw_id) = &device.hw_id {
            check_hw_id_free(db, hw_id, Some(seq)).await?;
        }
    }
    device.updated_at = now;
    write_device(db, seq, &before, &device).await?;
    audit::record(
        db,
        actor,
        "device.update",
        "device",
        id.as_str(),
        Some(&DeviceView::from(before)),
        Some(&DeviceView::from(device.clone())),
        now,
    )
    .await?;
    Ok(device)
}

pub async fn delete<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<(), StoreError> {
    let (seq, before) = get_with_seq(db, id, true).await?;
    // Raw samples do not reference the device (see migration 0009): its chain goes first, while
    // its latest-health row still names the head.
    let chain = health::sample_chain_cte(
        "SELECT last_sample, device_seq FROM device_health WHERE device_seq = $1",
        &[],
        "0",
    );
    db.execute(
        &format!(
            "{chain} DELETE FROM heartbeat_samples WHERE seq IN (SELECT s.seq FROM {})",
            health::SAMPLE_OF_CHAIN
        ),
        &[Value::Int(seq)],
    )
    .await?;
    db.execute("DELETE FROM devices WHERE seq = $1", &[Value::Int(seq)])
        .await?;
    audit::record(
        db,
        actor,
        "device.delete",
        "device",
        id.as_str(),
        Some(&DeviceView::from(before)),
        None::<&()>,
        now,
    )
    .await?;
    Ok(())
}

pub async fn decommission<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<Device, StoreError> {
    let (seq, before) = get_with_seq(db, id, true).await?;
    if before.status == DeviceStatus::Decommissioned {
        return Err(StoreError::Conflict(format!(
            "device {id} is already decommissioned"
        )));
    }
    let mut device = before.clone();
    device.status = DeviceStatus::Decommissioned;
    device.updated_at = now;
    write_device(db, seq, &before, &device).await?;
    db.execute(
        "UPDATE device_credentials SET revoked_at = $1 WHERE device_seq = $2 AND revoked_at IS NULL",
        &[ts(now), Value::Int(seq)],
    )
    .await?;
    audit::record(
        db,
        actor,
        "device.decommission",
        "device",
        id.as_str(),
        Some(&DeviceView::from(before)),
        Some(&DeviceView::from(device.clone())),
        now,
    )
    .await?;
    Ok(device)
}

// ---- listing -----------------------------------------------------------------------------------

fn sort_column(sort: DeviceSort) -> &'static str {
    match sort {
        DeviceSort::Id => "d.id",
        DeviceSort::CreatedAt => "d.created_at",
        DeviceSort::UpdatedAt => "d.updated_at",
        DeviceSort::LastSeen => "d.last_seen",
        DeviceSort::Firmware => "d.fw_key",
    }
}

/// How long a SQLite page query may walk the sort index before the planner's plan is used instead.
const PAGE_WALK_BUDGET: std::time::Duration = std::time::Duration::from_millis(25);

/// The index that serves each sort order (named in the migrations).
fn sort_index(sort: DeviceSort) -> &'static str {
    match sort {
        DeviceSort::Id => "devices_id",
        DeviceSort::CreatedAt => "devices_created_at",
        DeviceSort::UpdatedAt => "devices_updated_at",
        DeviceSort::LastSeen => "devices_last_seen",
        DeviceSort::Firmware => "devices_fw_key",
    }
}

fn sort_name(sort: DeviceSort) -> &'static str {
    match sort {
        DeviceSort::Id => "id",
        DeviceSort::CreatedAt => "created_at",
        DeviceSort::UpdatedAt => "updated_at",
        DeviceSort::LastSeen => "last_seen",
        DeviceSort::Firmware => "firmware",
    }
}

/// The sort key of a device as stored.
fn sort_value(sort: DeviceSort, device: &Device) -> Value {
    match sort {
        DeviceSort::Id => Value::from(device.id.as_str()),
        DeviceSort::CreatedAt => ts(device.created_at),
        DeviceSort::UpdatedAt => ts(device.updated_at),
        DeviceSort::LastSeen => Value::Int(device.last_seen.map_or(0, |t| t.as_millis())),
        DeviceSort::Firmware => Value::Bytes(
            device
                .firmware
                .as_ref()
                .map_or(Vec::new(), Version::sort_key),
        ),
    }
}

/// Cursor = base64url("<sort>|<hex key>|<seq>"): opaque to clients, bound to its sort field.
fn encode_cursor(sort: DeviceSort, value: &Value, seq: i64) -> String {
    let key = match value {
        Value::Text(s) => hex::encode(s.as_bytes()),
        Value::Bytes(b) => hex::encode(b),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Null => String::new(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{key}|{seq}", sort_name(sort)))
}

fn decode_cursor(sort: DeviceSort, cursor: &str) -> Result<(Value, i64), StoreError> {
    let bad = || {
        StoreError::Invalid(
            "invalid cursor: pass next_cursor from the previous page unchanged".into(),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, '|');
    let (name, key, seq) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    if name != sort_name(sort) {
        return Err(StoreError::Invalid(format!(
            "cursor belongs to a list sorted by {name}, not {}",
            sort_name(sort)
        )));
    }
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    let value = match sort {
        DeviceSort::Id => {
            Value::Text(String::from_utf8(hex::decode(key).map_err(|_| bad())?).map_err(|_| bad())?)
        }
        DeviceSort::Firmware => Value::Bytes(hex::decode(key).map_err(|_| bad())?),
        _ => Value::Int(key.parse().map_err(|_| bad())?),
    };
    Ok((value, seq))
}

#[allow(clippy::too_many_arguments)]
pub async fn list<D: Db>(
    db: &mut D,
    query: &Query,
    sort: DeviceSort,
    order: SortOrder,
    cursor: Option<&str>,
    limit: usize,
    now: Timestamp,
) -> Result<Page<Device>, StoreError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let fragment = query.to_sql(db.dialect(), now, 1);
    let mut params: Vec<Value> = fragment.params.into_iter().map(Value::from).collect();
    let column = sort_column(sort);
    let (cmp, dir) = match order {
        SortOrder::Asc => (">", "ASC"),
        SortOrder::Desc => ("<", "DESC"),
    };
    let mut sql = format!(
        "SELECT {DEVICE_COLS} FROM devices d{} WHERE {}",
        fragment.joins, fragment.sql
    );
    if let Some(cursor) = cursor {
        let (value, seq) = decode_cursor(sort, cursor)?;
        if sort == DeviceSort::Id {
            // Ids are unique, so the id alone is the key and its unique index serves the scan.
            params.push(value);
            sql.push_str(&format!(" AND d.id {cmp} ${}", params.len()));
        } else {
            params.push(value);
            params.push(Value::Int(seq));
            sql.push_str(&format!(
                " AND ({column}, d.seq) {cmp} (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
    }
    if sort == DeviceSort::Id {
        sql.push_str(&format!(" ORDER BY d.id {dir}"));
    } else {
        sql.push_str(&format!(" ORDER BY {column} {dir}, d.seq {dir}"));
    }
    params.push(Value::Int(limit as i64 + 1));
    sql.push_str(&format!(" LIMIT ${}", params.len()));
    let rows = match db.dialect() {
        // SQLite's planner does not weigh LIMIT against ORDER BY: for a query matching a few
        // percent of a large fleet it collects every match and sorts, where walking the sort
        // index and stopping after one page is a hundred times faster. Try that walk first within
        // a small time budget; if matches are too rare to fill a page in time, let the planner
        // choose (it is good at rare matches).
        Dialect::Sqlite => {
            let walk = sql.replacen(
                "FROM devices d",
                &format!("FROM devices d INDEXED BY {}", sort_index(sort)),
                1,
            );
            db.query_with_fallback(&walk, &sql, &params, PAGE_WALK_BUDGET)
                .await?
        }
        Dialect::Postgres => db.query_adhoc(&sql, &params).await?,
    };
    let more = rows.len() > limit;
    let mut devices = rows
        .iter()
        .take(limit)
        .map(device_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    load_tags(db, &mut devices).await?;
    let next_cursor = if more {
        devices
            .last()
            .map(|(seq, device)| encode_cursor(sort, &sort_value(sort, device), *seq))
    } else {
        None
    };
    Ok(Page {
        items: devices.into_iter().map(|(_, d)| d).collect(),
        next_cursor,
    })
}

pub async fn count<D: Db>(db: &mut D, query: &Query, now: Timestamp) -> Result<u64, StoreError> {
    let fragment = query.to_sql(db.dialect(), now, 1);
    let params: Vec<Value> = fragment.params.into_iter().map(Value::from).collect();
    let sql = format!(
        "SELECT COUNT(*) FROM devices d{} WHERE {}",
        fragment.joins, fragment.sql
    );
    let row = db
        .query_adhoc(&sql, &params)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("COUNT returned no row".into()))?;
    Ok(row.int(0)? as u64)
}

/// Devices per lifecycle status (statuses with none left out), from the fleet rollups: its cost
/// is the number of status × connectivity × firmware × region combinations, not the fleet.
pub async fn count_by_status<D: Db>(db: &mut D) -> Result<Vec<(String, u64)>, StoreError> {
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    for count in crate::ops::fleet::counts(db).await? {
        *by_status.entry(count.status).or_insert(0) += count.devices;
    }
    Ok(by_status.into_iter().filter(|(_, n)| *n > 0).collect())
}

// ---- bulk operations ---------------------------------------------------------------------------

pub async fn bulk_update<D: Db>(
    db: &mut D,
    actor: &Actor,
    query: &Query,
    patch: DevicePatch,
    now: Timestamp,
) -> Result<(u64, u64), StoreError> {
    if query.is_all() {
        return Err(StoreError::Invalid(
            "a bulk update needs a query; to change every device say so, e.g. `status != decommissioned`".into(),
        ));
    }
    if patch.hw_id.is_some() || patch.firmware.is_some() {
        return Err(StoreError::Invalid(
            "hw_id and firmware are per device and cannot be set in bulk".into(),
        ));
    }
    if patch.is_empty() {
        return Err(StoreError::Invalid(
            "the bulk update's `set` changes nothing".into(),
        ));
    }
    if let Some(status) = patch.status {
        if !matches!(
            status,
            DeviceStatus::Active | DeviceStatus::Inactive | DeviceStatus::Error
        ) {
            return Err(StoreError::Invalid(format!(
                "bulk updates can set status to active, inactive or error, not {status}"
            )));
        }
    }
    // Select the matching set once, before changing anything, so a change to a field the query
    // tests cannot move devices in or out of the set half-way.
    let fragment = query.to_sql(db.dialect(), now, 1);
    let params: Vec<Value> = fragment.params.into_iter().map(Value::from).collect();
    let rows = db
        .query_adhoc(
            &format!(
                "SELECT d.seq, d.status FROM devices d{} WHERE d.status <> 'decommissioned' AND ({}) ORDER BY d.seq",
                fragment.joins, fragment.sql
            ),
            &params,
        )
        .await?;
    let matched = rows.len() as u64;
    let mut seqs = Vec::with_capacity(rows.len());
    for row in &rows {
        let status = DeviceStatus::parse(&row.text(1)?).map_err(StoreError::Corrupt)?;
        if patch.status.is_none_or(|to| status.can_set_to(to)) {
            seqs.push(row.int(0)?);
        }
    }
    let mut sets: Vec<(&str, Value)> = Vec::new();
    if let Some(t) = &patch.device_type {
        sets.push(("device_type", Value::from(t.as_str())));
    }
    if let Some(v) = &patch.hw_rev {
        sets.push(("hw_rev", label_value(v)));
    }
    if let Some(v) = &patch.site {
        sets.push(("site", label_value(v)));
    }
    if let Some(v) = &patch.region {
        sets.push(("region", label_value(v)));
    }
    if let Some(s) = patch.status {
        sets.push(("status", Value::from(s.as_str())));
    }
    sets.push(("updated_at", ts(now)));
    let set_sql: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(idx, (col, _))| format!("{col} = ${}", idx + 1))
        .collect();
    for chunk in seqs.chunks(INSERT_CHUNK) {
        let mut params: Vec<Value> = sets.iter().map(|(_, v)| v.clone()).collect();
        let first = params.len() + 1;
        params.extend(chunk.iter().map(|s| Value::Int(*s)));
        db.execute(
            &format!(
                "UPDATE devices SET {} WHERE seq IN ({})",
                set_sql.join(", "),
                placeholders(first, chunk.len())
            ),
            &params,
        )
        .await?;
        for (key, value) in &patch.tags {
            match value {
                Some(value) => {
                    let tags: Vec<(i64, &TagKey, &TagValue)> =
                        chunk.iter().map(|s| (*s, key, value)).collect();
                    upsert_tags(db, &tags).await?;
                }
                None => {
                    let mut params = vec![Value::from(key.as_str())];
                    params.extend(chunk.iter().map(|s| Value::Int(*s)));
                    db.execute(
                        &format!(
                            "DELETE FROM device_tags WHERE key = $1 AND device_seq IN ({})",
                            placeholders(2, chunk.len())
                        ),
                        &params,
                    )
                    .await?;
                }
            }
        }
    }
    let updated = seqs.len() as u64;
    audit::record(
        db,
        actor,
        "device.bulk_update",
        "devices",
        &query.to_string(),
        None::<&()>,
        Some(&serde_json::json!({ "set": patch, "matched": matched, "updated": updated })),
        now,
    )
    .await?;
    Ok((matched, updated))
}

/// Streams batches from `rx` into the devices table inside the caller's transaction.
pub async fn import<D: Db>(
    db: &mut D,
    actor: &Actor,
    on_conflict: OnConflict,
    mut rx: Receiver<ImportMsg>,
    now: Timestamp,
) -> Result<ImportResult, StoreError> {
    let mut result = ImportResult::default();
    // Ids and hardware ids seen so far, across batches: a repeat is an error in the file even when
    // its lines arrive in different batches (where it would otherwise look like an existing device).
    let mut seen = ImportSeen::default();
    loop {
        match rx.recv().await {
            Some(ImportMsg::Batch(rows)) => {
                import_batch(db, on_conflict, rows, now, &mut seen, &mut result).await?
            }
            Some(ImportMsg::Commit) => break,
            Some(ImportMsg::Abort) | None => {
                return Err(StoreError::Invalid(
                    "import aborted before it completed; nothing was written".into(),
                ))
            }
        }
    }
    audit::record(
        db,
        actor,
        "device.import",
        "devices",
        "import",
        None::<&()>,
        Some(&serde_json::json!({ "on_conflict": on_conflict, "result": result })),
        now,
    )
    .await?;
    Ok(result)
}

/// The device ids and hardware ids an import has already read.
#[derive(Default)]
struct ImportSeen {
    ids: HashSet<DeviceId>,
    hw_ids: HashSet<HardwareId>,
}

async fn import_batch<D: Db>(
    db: &mut D,
    on_conflict: OnConflict,
    rows: Vec<ImportRow>,
    now: Timestamp,
    seen: &mut ImportSeen,
    result: &mut ImportResult,
) -> Result<(), StoreError> {
    let mut errors: Vec<(u64, String)> = Vec::new();
    let mut devices: Vec<(u64, Device, Option<String>)> = Vec::with_capacity(rows.len());
    // Lines that set a status explicitly (otherwise an update keeps the stored status).
    let mut requested = HashSet::new();
    for row in rows {
        let status = match creatable_status(row.device.status) {
            Ok(s) => s,
            Err(e) => {
                errors.push((row.line, e));
                continue;
            }
        };
        if row.device.issue_credential {
            errors.push((
                row.line,
                "issue_credential is not available in imports; devices provision themselves".into(),
            ));
            continue;
        }
        if let Err(e) = check_preauth_secret(&row.device) {
            errors.push((row.line, e.to_string()));
            continue;
        }
        let device = device_from_new(&row.device, status, now);
        if !seen.ids.insert(device.id.clone()) {
            errors.push((
                row.line,
                format!(
                    "device {:?} appears twice in the import",
                    device.id.as_str()
                ),
            ));
            continue;
        }
        if let Some(hw) = &device.hw_id {
            if !seen.hw_ids.insert(hw.clone()) {
                errors.push((
                    row.line,
                    format!("hardware id {:?} appears twice in the import", hw.as_str()),
                ));
                continue;
            }
        }
        if row.device.status.is_some() {
            requested.insert(row.line);
        }
        devices.push((
            row.line,
            device,
            row.device.preauth_secret.as_deref().map(secret::hash),
        ));
    }

    // Which ids exist already (earlier batches of this import included: same transaction)?
    let mut existing: HashMap<String, (i64, Device)> = HashMap::new();
    for chunk in devices.chunks(INSERT_CHUNK) {
        let ids: Vec<Value> = chunk
            .iter()
            .map(|(_, d, _)| Value::from(d.id.as_str()))
            .collect();
        let sql = format!(
            "SELECT {DEVICE_COLS} FROM devices d WHERE d.id IN ({})",
            placeholders(1, ids.len())
        );
        for row in db.query(&sql, &ids).await? {
            let (seq, device) = device_from_row(&row)?;
            existing.insert(device.id.as_str().to_owned(), (seq, device));
        }
    }
    // Which hardware ids are held by other live devices?
    let mut hw_owner: HashMap<String, String> = HashMap::new();
    let with_hw: Vec<Value> = devices
        .iter()
        .filter_map(|(_, d, _)| d.hw_id.as_ref().map(|h| Value::from(h.as_str())))
        .collect();
    for chunk in with_hw.chunks(INSERT_CHUNK) {
        let sql = format!(
            "SELECT hw_id, id FROM devices WHERE hw_id IN ({}) AND hw_id <> '' AND status NOT IN ('decommissioned', 'rejected')",
            placeholders(1, chunk.len())
        );
        for row in db.query(&sql, chunk).await? {
            hw_owner.insert(row.text(0)?, row.text(1)?);
        }
    }

    let mut to_insert = Vec::new();
    let mut to_update = Vec::new();
    for (line, device, preauth) in devices {
        if let Some(owner) = device.hw_id.as_ref().and_then(|h| hw_owner.get(h.as_str())) {
            if owner != device.id.as_str() {
                errors.push((
                    line,
                    format!(
                        "hardware id {:?} is already used by device {owner:?}",
                        device.hw_id.as_ref().map_or("", |h| h.as_str())
                    ),
                ));
                continue;
            }
        }
        match (existing.remove(device.id.as_str()), on_conflict) {
            (None, _) => to_insert.push((device, preauth)),
            (Some(_), OnConflict::Error) => errors.push((
                line,
                format!(
                    "device {:?} already exists (use on_conflict=skip or update)",
                    device.id.as_str()
                ),
            )),
            (Some(_), OnConflict::Skip) => result.skipped += 1,
            (Some((seq, old)), OnConflict::Update) => {
                if old.status == DeviceStatus::Decommissioned {
                    errors.push((
                        line,
                        format!(
                            "device {:?} is decommissioned and cannot be updated",
                            device.id.as_str()
                        ),
                    ));
                    continue;
                }
                if requested.contains(&line) && !old.status.can_set_to(device.status) {
                    errors.push((
                        line,
                        format!(
                            "cannot change status of {:?} from {} to {}",
                            device.id.as_str(),
                            old.status,
                            device.status
                        ),
                    ));
                    continue;
                }
                to_update.push((seq, old, device, requested.contains(&line)));
            }
        }
    }
    if !errors.is_empty() {
        return Err(StoreError::Import(errors));
    }

    for chunk in to_insert.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO devices ({INSERT_COLS}) VALUES {} RETURNING seq, id",
            value_rows(chunk.len(), 13)
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(d, p)| insert_values(d, p.clone()))
            .collect();
        let returned = db.query(&sql, &params).await?;
        let seq_by_id: HashMap<String, i64> = returned
            .iter()
            .map(|r| Ok((r.text(1)?, r.int(0)?)))
            .collect::<Result<_, StoreError>>()?;
        let tags: Vec<(i64, &TagKey, &TagValue)> = chunk
            .iter()
            .flat_map(|(d, _)| {
                let seq = seq_by_id.get(d.id.as_str()).copied().unwrap_or_default();
                d.tags.iter().map(move |(k, v)| (seq, k, v))
            })
            .collect();
        upsert_tags(db, &tags).await?;
        result.created += chunk.len() as u64;
    }
    let mut olds: Vec<(i64, Device)> = to_update
        .iter()
        .map(|(seq, old, _, _)| (*seq, old.clone()))
        .collect();
    load_tags(db, &mut olds).await?;
    for ((seq, old), (_, _, mut device, status_given)) in olds.into_iter().zip(to_update) {
        // The row's attributes replace the stored ones; lifecycle history stays.
        if !status_given {
            device.status = old.status;
        }
        device.created_at = old.created_at;
        device.last_seen = device.last_seen.or(old.last_seen);
        write_device(db, seq, &old, &device).await?;
        result.updated += 1;
    }
    Ok(())
}
