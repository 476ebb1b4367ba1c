//! The audit log: written inside each mutating transaction, read with filters and keyset paging.

use drover_core::Timestamp;
use drover_proto::audit::AuditEntry;
use drover_proto::Page;
use serde::Serialize;

use crate::db::{Db, Value};
use crate::ops::auth::Actor;
use crate::StoreError;

/// What to select from the audit log. All filters are optional and combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` / `*` (`device.` matches `device.create`, …).
    pub action: Option<String>,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Return entries older than this sequence number (the previous page's cursor).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// Appends one entry. `before` / `after` are serialised as JSON.
#[allow(clippy::too_many_arguments)]
pub async fn record<D: Db, B: Serialize, A: Serialize>(
    db: &mut D,
    actor: &Actor,
    action: &str,
    target_kind: &str,
    target_id: &str,
    before: Option<&B>,
    after: Option<&A>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let json = |v: Option<String>| v.map_or(Value::Null, Value::Text);
    let before = json(before.map(|b| serde_json::to_string(b).unwrap_or_default()));
    let after = json(after.map(|a| serde_json::to_string(a).unwrap_or_default()));
    db.execute(
        "INSERT INTO audit_log (at, actor, actor_name, action, target_kind, target_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Value::Int(now.as_millis()),
            Value::from(actor.id.as_str()),
            Value::from(actor.name.as_str()),
            Value::from(action),
            Value::from(target_kind),
            Value::from(target_id),
            before,
            after,
        ],
    )
    .await?;
    Ok(())
}

pub async fn list<D: Db>(db: &mut D, filter: &AuditFilter) -> Result<Page<AuditEntry>, StoreError> {
    let mut sql = String::from(
        "SELECT seq, at, actor, actor_name, action, target_kind, target_id, before, after FROM audit_log WHERE 1=1",
    );
    let mut params: Vec<Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, value: Value| {
        params.push(value);
        sql.push_str(&clause.replace("$?", &format!("${}", params.len())));
    };
    if let Some(actor) = &filter.actor {
        push(&mut sql, " AND actor = $?", Value::from(actor.as_str()));
    }
    if let Some(action) = &filter.action {
        if let Some(prefix) = action
            .strip_suffix('*')
            .or_else(|| action.ends_with('.').then_some(action.as_str()))
        {
            push(
                &mut sql,
                &format!(" AND substr(action, 1, {}) = $?", prefix.chars().count()),
                Value::from(prefix),
            );
        } else {
            push(&mut sql, " AND action = $?", Value::from(action.as_str()));
        }
    }
    if let Some(kind) = &filter.target_kind {
        push(
            &mut sql,
            " AND target_kind = $?",
            Value::from(kind.as_str()),
        );
    }
    if let Some(id) = &filter.target_id {
        push(&mut sql, " AND target_id = $?", Value::from(id.as_str()));
    }
    if let Some(since) = filter.since {
        push(&mut sql, " AND at >= $?", Value::Int(since.as_millis()));
    }
    if let Some(until) = filter.until {
        push(&mut sql, " AND at < $?", Value::Int(until.as_millis()));
    }
    if let Some(seq) = filter.before_seq {
        push(&mut sql, " AND seq < $?", Value::Int(seq));
    }
    let limit = filter.limit.clamp(1, 1000);
    push(
        &mut sql,
        " ORDER BY seq DESC LIMIT $?",
        Value::Int(limit as i64 + 1),
    );
    let rows = db.query(&sql, &params).await?;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    for row in rows.iter().take(limit) {
        let parse = |v: Option<String>| v.and_then(|s| serde_json::from_str(&s).ok());
        items.push(AuditEntry {
            seq: row.int(0)?,
            at: Timestamp::from_millis(row.int(1)?),
            actor: row.text(2)?,
            actor_name: row.text(3)?,
            action: row.text(4)?,
            target_kind: row.text(5)?,
            target_id: row.text(6)?,
            before: parse(row.opt_text(7)?),
            after: parse(row.opt_text(8)?),
        });
    }
    let next_cursor = (rows.len() > limit)
        .then(|| items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Page { items, next_cursor })
}
