//! Operator API tokens (roles, expiry, revocation), claim tokens, and the first-start admin token.

use std::collections::BTreeMap;

use drover_core::{DeviceType, Duration, GroupName, TagKey, TagValue, Timestamp};
use drover_proto::auth::{ClaimView, NewClaim, NewToken, Role, TokenView};

use crate::db::{Db, Row, Value};
use crate::ops::{audit, opt_ts, ts};
use crate::{secret, StoreError};

/// Who is acting, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id>`, `device:<id>` or `system`.
    pub id: String,
    /// A human name (the token's name, the device id).
    pub name: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: "system".into(),
            name: "drover".into(),
        }
    }

    pub fn token(id: &str, name: &str) -> Actor {
        Actor {
            id: format!("token:{id}"),
            name: name.to_owned(),
        }
    }

    pub fn device(id: &str) -> Actor {
        Actor {
            id: format!("device:{id}"),
            name: id.to_owned(),
        }
    }
}

/// An authenticated operator token.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub last_used_at: Option<Timestamp>,
}

impl TokenAuth {
    pub fn actor(&self) -> Actor {
        Actor::token(&self.id, &self.name)
    }
}

const TOKEN_COLS: &str =
    "id, name, role, created_at, created_by, expires_at, revoked_at, last_used_at";
const MAX_NAME: usize = 128;

fn token_from_row(row: &Row) -> Result<TokenView, StoreError> {
    Ok(TokenView {
        id: row.text(0)?,
        name: row.text(1)?,
        role: Role::parse(&row.text(2)?).map_err(StoreError::Corrupt)?,
        created_at: Timestamp::from_millis(row.int(3)?),
        created_by: row.text(4)?,
        expires_at: opt_ts(row.opt_int(5)?),
        revoked_at: opt_ts(row.opt_int(6)?),
        last_used_at: opt_ts(row.opt_int(7)?),
    })
}

fn check_name(kind: &str, name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME
        || name.chars().any(char::is_control)
    {
        return Err(StoreError::Invalid(format!(
            "{kind} name must be 1-{MAX_NAME} characters without control characters"
        )));
    }
    Ok(())
}

fn parse_lifetime(text: &str, max: Option<Duration>) -> Result<Duration, StoreError> {
    let lifetime = Duration::parse(text).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if lifetime.as_millis() <= 0 {
        return Err(StoreError::Invalid("lifetime must be positive".into()));
    }
    if let Some(max) = max {
        if lifetime > max {
            return Err(StoreError::Invalid(format!(
                "lifetime must be at most {max}"
            )));
        }
    }
    Ok(lifetime)
}

async fn insert_token<D: Db>(
    db: &mut D,
    name: &str,
    role: Role,
    secret: &str,
    created_by: &str,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<TokenView, StoreError> {
    let id = secret::short_id("tok_");
    db.execute(
        "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            Value::from(id.as_str()),
            Value::from(name),
            Value::from(role.as_str()),
            Value::from(secret::hash(secret)),
            ts(now),
            Value::from(created_by),
            expires_at.map(|t| t.as_millis()).into(),
        ],
    )
    .await?;
    get_token(db, &id).await
}

async fn get_token<D: Db>(db: &mut D, id: &str) -> Result<TokenView, StoreError> {
    let row = db
        .query_opt(
            &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE id = $1"),
            &[Value::from(id)],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("token", id))?;
    token_from_row(&row)
}

pub async fn bootstrap_admin<D: Db>(
    db: &mut D,
    preset: Option<String>,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    if db.dialect() == drover_core::query::Dialect::Postgres {
        // Two replicas starting on an empty database must not both create an admin token.
        db.query(
            "SELECT pg_advisory_xact_lock($1)",
            &[Value::Int(0x4452_4f56_4144)],
        )
        .await?;
    }
    let n = db
        .query_one("SELECT COUNT(*) FROM api_tokens", &[])
        .await?
        .int(0)?;
    if n > 0 {
        return Ok(None);
    }
    let secret = match preset {
        Some(s) if s.len() < 16 => {
            return Err(StoreError::Config(
                "the preset admin token must be at least 16 characters".into(),
            ))
        }
        Some(s) => s,
        None => secret::generate("drv_op_"),
    };
    let token = insert_token(
        db,
        "bootstrap-admin",
        Role::Admin,
        &secret,
        "system",
        None,
        now,
    )
    .await?;
    audit::record(
        db,
        &Actor::system(),
        "token.create",
        "token",
        &token.id,
        None::<&()>,
        Some(&token),
        now,
    )
    .await?;
    Ok(Some(secret))
}

pub async fn create_token<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: NewToken,
    now: Timestamp,
) -> Result<(TokenView, String), StoreError> {
    check_name("token", &new.name)?;
    let expires_at = match &new.expires_in {
        Some(text) => Some(now.saturating_add(parse_lifetime(text, None)?)),
        None => None,
    };
    let secret = secret::generate("drv_op_");
    let token = insert_token(db, &new.name, new.role, &secret, &actor.id, expires_at, now).await?;
    audit::record(
        db,
        actor,
        "token.create",
        "token",
        &token.id,
        None::<&()>,
        Some(&token),
        now,
    )
    .await?;
    Ok((token, secret))
}

pub async fn list_tokens<D: Db>(db: &mut D) -> Result<Vec<TokenView>, StoreError> {
    let rows = db
        .query(
            &format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at, id"),
            &[],
        )
        .await?;
    rows.iter().map(token_from_row).collect()
}

pub async fn revoke_token<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<TokenView, StoreError> {
    revoke(db, actor, id, true, now).await
}

/// Ends a web session: revokes its token, which may be an admin token while no other admin token
/// is left (logging out must always work; the token that opened the session was checked then).
pub async fn end_session<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<TokenView, StoreError> {
    revoke(db, actor, id, false, now).await
}

async fn revoke<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &str,
    keep_last_admin: bool,
    now: Timestamp,
) -> Result<TokenView, StoreError> {
    let before = get_token(db, id).await?;
    if before.revoked_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "token {id} is already revoked"
        )));
    }
    if keep_last_admin && before.role == Role::Admin {
        // Revoking the last usable admin token would leave nobody able to manage tokens.
        let others = db
            .query_one(
                "SELECT COUNT(*) FROM api_tokens WHERE role = 'admin' AND id <> $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
                &[Value::from(id), ts(now)],
            )
            .await?
            .int(0)?;
        if others == 0 {
            return Err(StoreError::Conflict(format!(
                "token {id} is the last admin token; create another admin token before revoking it"
            )));
        }
    }
    db.execute(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2",
        &[ts(now), Value::from(id)],
    )
    .await?;
    let after = get_token(db, id).await?;
    audit::record(
        db,
        actor,
        "token.revoke",
        "token",
        id,
        Some(&before),
        Some(&after),
        now,
    )
    .await?;
    Ok(after)
}

pub async fn authenticate_token<D: Db>(
    db: &mut D,
    hash: &str,
    now: Timestamp,
) -> Result<TokenAuth, StoreError> {
    let row = db
        .query_opt(
            &format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE secret_hash = $1"),
            &[Value::from(hash)],
        )
        .await?
        .ok_or_else(|| StoreError::Unauthorized("unknown API token".into()))?;
    let token = token_from_row(&row)?;
    if token.revoked_at.is_some() {
        return Err(StoreError::Unauthorized(format!(
            "API token {} has been revoked",
            token.id
        )));
    }
    if token.expires_at.is_some_and(|at| at <= now) {
        return Err(StoreError::Unauthorized(format!(
            "API token {} has expired",
            token.id
        )));
    }
    Ok(TokenAuth {
        id: token.id,
        name: token.name,
        role: token.role,
        last_used_at: token.last_used_at,
    })
}

/// Names of the tokens the web dashboard creates for its sessions start with this.
pub const SESSION_NAME_PREFIX: &str = "web session of ";

/// Deletes dashboard sessions (tokens named [`SESSION_NAME_PREFIX`]…) that expired or were revoked
/// before `before`; returns how many. Their audit entries stay.
pub async fn prune_sessions<D: Db>(db: &mut D, before: Timestamp) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM api_tokens WHERE name LIKE $1 \
         AND ((expires_at IS NOT NULL AND expires_at < $2) OR (revoked_at IS NOT NULL AND revoked_at < $2))",
        &[Value::from(format!("{SESSION_NAME_PREFIX}%")), ts(before)],
    )
    .await
}

pub async fn touch_token<D: Db>(db: &mut D, id: &str, now: Timestamp) -> Result<(), StoreError> {
    db.execute(
        "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2",
        &[ts(now), Value::from(id)],
    )
    .await?;
    Ok(())
}

// ---- claim tokens ------------------------------------------------------------------------------

const CLAIM_COLS: &str =
    "id, name, device_type, tags, group_name, expires_at, max_uses, uses, created_at, created_by, revoked_at";

pub(crate) fn claim_from_row(row: &Row) -> Result<ClaimView, StoreError> {
    let tags: BTreeMap<TagKey, TagValue> = serde_json::from_str(&row.text(3)?)
        .map_err(|e| StoreError::Corrupt(format!("claim tags: {e}")))?;
    Ok(ClaimView {
        id: row.text(0)?,
        name: row.text(1)?,
        device_type: row
            .opt_text(2)?
            .map(|t| DeviceType::parse(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        tags,
        group: row
            .opt_text(4)?
            .map(|g| GroupName::parse(&g))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        expires_at: Timestamp::from_millis(row.int(5)?),
        max_uses: row.opt_int(6)?.map(|n| n as u64),
        uses: row.int(7)? as u64,
        created_at: Timestamp::from_millis(row.int(8)?),
        created_by: row.text(9)?,
        revoked_at: opt_ts(row.opt_int(10)?),
    })
}

pub(crate) const CLAIM_SELECT: &str = "SELECT id, name, device_type, tags, group_name, expires_at, max_uses, uses, created_at, created_by, revoked_at FROM claim_tokens";

pub async fn create_claim<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: NewClaim,
    now: Timestamp,
) -> Result<(ClaimView, String), StoreError> {
    check_name("claim", &new.name)?;
    let lifetime = parse_lifetime(
        new.expires_in.as_deref().unwrap_or("24h"),
        Some(Duration::parse("365d").unwrap_or(Duration::from_secs(0))),
    )?;
    if new.max_uses == Some(0) {
        return Err(StoreError::Invalid("max_uses must be at least 1".into()));
    }
    if let Some(group) = &new.group {
        let kind = db
            .query_opt(
                "SELECT kind FROM groups WHERE name = $1",
                &[Value::from(group.as_str())],
            )
            .await?
            .ok_or_else(|| {
                StoreError::Invalid(format!("group {:?} does not exist", group.as_str()))
            })?
            .text(0)?;
        if kind != "static" {
            return Err(StoreError::Invalid(format!(
                "group {:?} is dynamic; a claim can only add devices to a static group",
                group.as_str()
            )));
        }
    }
    let id = secret::short_id("clm_");
    let secret = secret::generate("drv_claim_");
    let tags = serde_json::to_string(&new.tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
    db.execute(
        &format!("INSERT INTO claim_tokens (id, name, secret_hash, device_type, tags, group_name, expires_at, max_uses, uses, created_at, created_by) VALUES ({})", crate::db::placeholders(1, 11)),
        &[
            Value::from(id.as_str()),
            Value::from(new.name.as_str()),
            Value::from(secret::hash(&secret)),
            new.device_type.as_ref().map(|t| t.as_str()).into(),
            Value::from(tags),
            new.group.as_ref().map(|g| g.as_str()).into(),
            ts(now.saturating_add(lifetime)),
            new.max_uses.map(|n| n.min(i64::MAX as u64) as i64).into(),
            Value::Int(0),
            ts(now),
            Value::from(actor.id.as_str()),
        ],
    )
    .await?;
    let claim = get_claim(db, &id).await?;
    audit::record(
        db,
        actor,
        "claim.create",
        "claim",
        &id,
        None::<&()>,
        Some(&claim),
        now,
    )
    .await?;
    Ok((claim, secret))
}

pub async fn list_claims<D: Db>(db: &mut D) -> Result<Vec<ClaimView>, StoreError> {
    let rows = db
        .query(
            &format!("SELECT {CLAIM_COLS} FROM claim_tokens ORDER BY created_at, id"),
            &[],
        )
        .await?;
    rows.iter().map(claim_from_row).collect()
}

pub async fn get_claim<D: Db>(db: &mut D, id: &str) -> Result<ClaimView, StoreError> {
    let row = db
        .query_opt(&format!("{CLAIM_SELECT} WHERE id = $1"), &[Value::from(id)])
        .await?
        .ok_or_else(|| StoreError::not_found("claim", id))?;
    claim_from_row(&row)
}

pub async fn revoke_claim<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &str,
    now: Timestamp,
) -> Result<ClaimView, StoreError> {
    let before = get_claim(db, id).await?;
    if before.revoked_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "claim {id} is already revoked"
        )));
    }
    db.execute(
        "UPDATE claim_tokens SET revoked_at = $1 WHERE id = $2",
        &[ts(now), Value::from(id)],
    )
    .await?;
    let after = get_claim(db, id).await?;
    audit::record(
        db,
        actor,
        "claim.revoke",
        "claim",
        id,
        Some(&before),
        Some(&after),
        now,
    )
    .await?;
    Ok(after)
}
