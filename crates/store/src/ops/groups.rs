//! Groups: static (explicit members, optional parent) and dynamic (a fleet query evaluated on
//! every read, so membership is always current and needs no rebuild).

use drover_core::query::Query;
use drover_core::{DeviceId, GroupName, Timestamp};
use drover_proto::groups::{GroupKind, GroupPatch, GroupView, NewGroup};

use crate::db::{placeholders, Db, Row, Value};
use crate::ops::devices::{count, get_with_seq};
use crate::ops::{audit, auth::Actor, ts};
use crate::StoreError;

const GROUP_COLS: &str = "name, kind, query, parent, description, created_at, updated_at";
const MAX_DESCRIPTION: usize = 1024;
/// Most device ids one membership change may name.
pub const MAX_MEMBER_CHANGE: usize = 10_000;

fn group_from_row(row: &Row) -> Result<GroupView, StoreError> {
    let corrupt = |e: drover_core::ids::IdError| StoreError::Corrupt(e.to_string());
    Ok(GroupView {
        name: GroupName::parse(&row.text(0)?).map_err(corrupt)?,
        kind: match row.text(1)?.as_str() {
            "static" => GroupKind::Static,
            "dynamic" => GroupKind::Dynamic,
            other => return Err(StoreError::Corrupt(format!("unknown group kind {other:?}"))),
        },
        query: row.opt_text(2)?,
        parent: row
            .opt_text(3)?
            .map(|p| GroupName::parse(&p))
            .transpose()
            .map_err(corrupt)?,
        description: row.text(4)?,
        created_at: Timestamp::from_millis(row.int(5)?),
        updated_at: Timestamp::from_millis(row.int(6)?),
        member_count: None,
    })
}

async fn find<D: Db>(db: &mut D, name: &GroupName) -> Result<GroupView, StoreError> {
    let sql = format!("SELECT {GROUP_COLS} FROM groups WHERE name = $1");
    let row = db
        .query_opt(&sql, &[Value::from(name.as_str())])
        .await?
        .ok_or_else(|| StoreError::not_found("group", name))?;
    group_from_row(&row)
}

fn parse_query(text: &str) -> Result<Query, StoreError> {
    let query = Query::parse(text).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if query.is_all() {
        return Err(StoreError::Invalid(
            "a dynamic group's query must not be empty".into(),
        ));
    }
    Ok(query)
}

fn check_description(text: &str) -> Result<(), StoreError> {
    if text.chars().count() > MAX_DESCRIPTION || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(StoreError::Invalid(format!(
            "description must be at most {MAX_DESCRIPTION} characters without control characters"
        )));
    }
    Ok(())
}

/// Fails unless `parent` exists, is static, and is not `child` or one of its descendants.
async fn check_parent<D: Db>(
    db: &mut D,
    child: &GroupName,
    parent: &GroupName,
) -> Result<(), StoreError> {
    let mut cursor = Some(parent.clone());
    let mut depth = 0;
    while let Some(name) = cursor {
        if &name == child {
            return Err(StoreError::Invalid(format!(
                "group {parent} cannot be the parent of {child}: that would make a cycle"
            )));
        }
        let group = find(db, &name).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                StoreError::Invalid(format!("parent group {:?} does not exist", name.as_str()))
            }
            other => other,
        })?;
        if depth == 0 && group.kind != GroupKind::Static {
            return Err(StoreError::Invalid(format!(
                "parent group {name} is dynamic; only static groups can be parents"
            )));
        }
        depth += 1;
        if depth > 64 {
            return Err(StoreError::Invalid(
                "group hierarchy is deeper than 64 levels".into(),
            ));
        }
        cursor = group.parent;
    }
    Ok(())
}

pub async fn create<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: NewGroup,
    now: Timestamp,
) -> Result<GroupView, StoreError> {
    check_description(&new.description)?;
    let query = new.query.as_deref().map(parse_query).transpose()?;
    if query.is_some() && new.parent.is_some() {
        return Err(StoreError::Invalid(
            "a dynamic group cannot have a parent".into(),
        ));
    }
    if db
        .query_opt(
            "SELECT 1 FROM groups WHERE name = $1",
            &[Value::from(new.name.as_str())],
        )
        .await?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "group {:?} already exists",
            new.name.as_str()
        )));
    }
    if let Some(parent) = &new.parent {
        check_parent(db, &new.name, parent).await?;
    }
    let kind = if query.is_some() {
        GroupKind::Dynamic
    } else {
        GroupKind::Static
    };
    db.execute(
        &format!(
            "INSERT INTO groups ({GROUP_COLS}) VALUES ({})",
            placeholders(1, 7)
        ),
        &[
            Value::from(new.name.as_str()),
            Value::from(kind.as_str()),
            query.as_ref().map(|q| q.to_string()).into(),
            new.parent.as_ref().map(|p| p.as_str()).into(),
            Value::from(new.description.as_str()),
            ts(now),
            ts(now),
        ],
    )
    .await?;
    let group = find(db, &new.name).await?;
    audit::record(
        db,
        actor,
        "group.create",
        "group",
        new.name.as_str(),
        None::<&()>,
        Some(&group),
        now,
    )
    .await?;
    Ok(group)
}

/// The query selecting a group's members.
pub async fn membership_query<D: Db>(db: &mut D, name: &GroupName) -> Result<Query, StoreError> {
    let group = find(db, name).await?;
    query_of(&group)
}

fn query_of(group: &GroupView) -> Result<Query, StoreError> {
    match (&group.kind, &group.query) {
        (GroupKind::Dynamic, Some(text)) => Query::parse(text)
            .map_err(|e| StoreError::Corrupt(format!("group {}: {e}", group.name))),
        _ => Query::parse(&format!("group = \"{}\"", group.name))
            .map_err(|e| StoreError::Corrupt(format!("group {}: {e}", group.name))),
    }
}

pub async fn get<D: Db>(
    db: &mut D,
    name: &GroupName,
    now: Timestamp,
) -> Result<GroupView, StoreError> {
    let mut group = find(db, name).await?;
    let query = query_of(&group)?;
    group.member_count = Some(count(db, &query, now).await?);
    Ok(group)
}

pub async fn list<D: Db>(db: &mut D) -> Result<Vec<GroupView>, StoreError> {
    let rows = db
        .query(
            &format!("SELECT {GROUP_COLS} FROM groups ORDER BY name"),
            &[],
        )
        .await?;
    rows.iter().map(group_from_row).collect()
}

pub async fn update<D: Db>(
    db: &mut D,
    actor: &Actor,
    name: &GroupName,
    patch: GroupPatch,
    now: Timestamp,
) -> Result<GroupView, StoreError> {
    let before = find(db, name).await?;
    let mut after = before.clone();
    if let Some(text) = &patch.query {
        if before.kind != GroupKind::Dynamic {
            return Err(StoreError::Invalid(format!(
                "group {name} is static; only dynamic groups have a query"
            )));
        }
        after.query = Some(parse_query(text)?.to_string());
    }
    if let Some(parent) = &patch.parent {
        if before.kind != GroupKind::Static {
            return Err(StoreError::Invalid(format!(
                "group {name} is dynamic; only static groups have a parent"
            )));
        }
        if let Some(parent) = parent {
            check_parent(db, name, parent).await?;
        }
        after.parent = parent.clone();
    }
    if let Some(description) = &patch.description {
        check_description(description)?;
        after.description = description.clone();
    }
    after.updated_at = now;
    db.execute(
        "UPDATE groups SET query = $1, parent = $2, description = $3, updated_at = $4 WHERE name = $5",
        &[
            after.query.clone().into(),
            after.parent.as_ref().map(|p| p.as_str()).into(),
            Value::from(after.description.as_str()),
            ts(now),
            Value::from(name.as_str()),
        ],
    )
    .await?;
    audit::record(
        db,
        actor,
        "group.update",
        "group",
        name.as_str(),
        Some(&before),
        Some(&after),
        now,
    )
    .await?;
    Ok(after)
}

pub async fn delete<D: Db>(
    db: &mut D,
    actor: &Actor,
    name: &GroupName,
    now: Timestamp,
) -> Result<(), StoreError> {
    let before = find(db, name).await?;
    let children = db
        .query(
            "SELECT name FROM groups WHERE parent = $1 ORDER BY name LIMIT 10",
            &[Value::from(name.as_str())],
        )
        .await?;
    if !children.is_empty() {
        let names: Vec<String> = children
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        return Err(StoreError::Conflict(format!(
            "group {name} has child groups ({}); move or delete them first",
            names.join(", ")
        )));
    }
    // Dynamic groups may name this group in their query (`group = NAME`); they would silently
    // become empty, so refuse instead.
    let sql = format!("SELECT {GROUP_COLS} FROM groups WHERE kind = 'dynamic' ORDER BY name");
    for row in db.query(&sql, &[]).await? {
        let dynamic = group_from_row(&row)?;
        if query_of(&dynamic)?.mentions_group(name) {
            return Err(StoreError::Conflict(format!(
                "dynamic group {} refers to group {name} in its query; change it first",
                dynamic.name
            )));
        }
    }
    db.execute(
        "DELETE FROM group_members WHERE group_name = $1",
        &[Value::from(name.as_str())],
    )
    .await?;
    db.execute(
        "DELETE FROM groups WHERE name = $1",
        &[Value::from(name.as_str())],
    )
    .await?;
    audit::record(
        db,
        actor,
        "group.delete",
        "group",
        name.as_str(),
        Some(&before),
        None::<&()>,
        now,
    )
    .await?;
    Ok(())
}

pub async fn change_members<D: Db>(
    db: &mut D,
    actor: &Actor,
    name: &GroupName,
    ids: Vec<DeviceId>,
    add: bool,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let group = find(db, name).await?;
    if group.kind != GroupKind::Static {
        return Err(StoreError::Invalid(format!(
            "group {name} is dynamic: its members are the devices matching its query"
        )));
    }
    if ids.is_empty() {
        return Err(StoreError::Invalid("device_ids must not be empty".into()));
    }
    if ids.len() > MAX_MEMBER_CHANGE {
        return Err(StoreError::Invalid(format!(
            "at most {MAX_MEMBER_CHANGE} device ids per request"
        )));
    }
    let mut seqs = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for chunk in ids.chunks(500) {
        let params: Vec<Value> = chunk.iter().map(|id| Value::from(id.as_str())).collect();
        let rows = db
            .query(
                &format!(
                    "SELECT id, seq FROM devices WHERE id IN ({})",
                    placeholders(1, chunk.len())
                ),
                &params,
            )
            .await?;
        let found: std::collections::HashMap<String, i64> = rows
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?)))
            .collect::<Result<_, StoreError>>()?;
        for id in chunk {
            match found.get(id.as_str()) {
                Some(seq) => seqs.push(*seq),
                None => missing.push(id.as_str().to_owned()),
            }
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        return Err(StoreError::NotFound {
            kind: "device",
            id: format!(
                "{}{}",
                shown.join(", "),
                if missing.len() > 10 {
                    format!(" and {} more", missing.len() - 10)
                } else {
                    String::new()
                }
            ),
        });
    }
    seqs.sort_unstable();
    seqs.dedup();
    let mut changed = 0;
    for chunk in seqs.chunks(500) {
        if add {
            let mut params = Vec::with_capacity(chunk.len() * 3);
            for seq in chunk {
                params.extend([Value::from(name.as_str()), Value::Int(*seq), ts(now)]);
            }
            changed += db
                .execute(
                    &format!(
                        "INSERT INTO group_members (group_name, device_seq, added_at) VALUES {} ON CONFLICT DO NOTHING",
                        crate::db::value_rows(chunk.len(), 3)
                    ),
                    &params,
                )
                .await?;
        } else {
            let mut params = vec![Value::from(name.as_str())];
            params.extend(chunk.iter().map(|s| Value::Int(*s)));
            changed += db
                .execute(
                    &format!(
                        "DELETE FROM group_members WHERE group_name = $1 AND device_seq IN ({})",
                        placeholders(2, chunk.len())
                    ),
                    &params,
                )
                .await?;
        }
    }
    let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
    audit::record(
        db,
        actor,
        if add {
            "group.members.add"
        } else {
            "group.members.remove"
        },
        "group",
        name.as_str(),
        None::<&()>,
        Some(&serde_json::json!({ "device_ids": ids, "changed": changed })),
        now,
    )
    .await?;
    Ok(changed)
}

pub async fn device_groups<D: Db>(
    db: &mut D,
    id: &DeviceId,
    now: Timestamp,
) -> Result<Vec<GroupName>, StoreError> {
    let (seq, device) = get_with_seq(db, id, false).await?;
    let rows = db
        .query(
            "SELECT group_name FROM group_members WHERE device_seq = $1 ORDER BY group_name",
            &[Value::Int(seq)],
        )
        .await?;
    let static_groups: Vec<GroupName> = rows
        .iter()
        .map(|r| GroupName::parse(&r.text(0)?).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<_, _>>()?;
    let mut groups = static_groups.clone();
    // Dynamic groups are few and their queries cheap to evaluate in memory against one device.
    let sql = format!("SELECT {GROUP_COLS} FROM groups WHERE kind = 'dynamic' ORDER BY name");
    // The latest metrics, read once and only if some group's query tests them.
    let mut metrics: Option<Option<std::collections::BTreeMap<String, f64>>> = None;
    for row in db.query(&sql, &[]).await? {
        let group = group_from_row(&row)?;
        let query = query_of(&group)?;
        if query.uses_metrics() && metrics.is_none() {
            metrics = Some(crate::ops::health::latest(db, id).await?.map(|h| h.metrics));
        }
        let latest = metrics.as_ref().and_then(Option::as_ref);
        if query.matches_with_metrics(&device, &static_groups, latest, now) {
            groups.push(group.name);
        }
    }
    groups.sort();
    Ok(groups)
}
