//! Device identity: provisioning (claim tokens, pre-authorised devices, pending approval),
//! credentials (issue, rotate, revoke) and device authentication.

use drover_core::{Device, DeviceId, DeviceStatus, Timestamp};
use drover_proto::device_api::ProvisionRequest;
use drover_proto::devices::DeviceView;

use crate::db::{Db, Value};
use crate::ops::auth::{claim_from_row, Actor, CLAIM_SELECT};
use crate::ops::devices::{
    device_from_row, get_with_seq, insert_device, load_tags, write_device, DEVICE_COLS,
};
use crate::ops::{audit, ts};
use crate::{secret, StoreError};

/// Server policy for provisioning.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProvisionOptions {
    /// Let unknown devices (no claim token, not pre-authorised) wait in `pending` for an operator.
    pub allow_pending: bool,
}

/// What a provisioning request achieved.
#[derive(Debug, Clone)]
pub struct ProvisionOutcome {
    pub device: Device,
    /// The new credential; `None` while the device is pending.
    pub credential: Option<String>,
}

/// Checks a caller-chosen secret (pre-authorisation secret, pending nonce) is usable.
pub(crate) fn check_secret_shape(name: &str, value: &str) -> Result<(), StoreError> {
    let n = value.chars().count();
    if !(16..=256).contains(&n) || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(StoreError::Invalid(format!(
            "{name} must be 16-256 characters without whitespace or control characters"
        )));
    }
    Ok(())
}

/// Revokes the device's active credentials and issues a new one; returns the secret.
pub(crate) async fn issue_credential<D: Db>(
    db: &mut D,
    seq: i64,
    now: Timestamp,
) -> Result<String, StoreError> {
    db.execute(
        "UPDATE device_credentials SET revoked_at = $1 WHERE device_seq = $2 AND revoked_at IS NULL",
        &[ts(now), Value::Int(seq)],
    )
    .await?;
    let secret = secret::generate("drv_dev_");
    db.execute(
        "INSERT INTO device_credentials (id, device_seq, secret_hash, created_at) VALUES ($1, $2, $3, $4)",
        &[Value::from(secret::short_id("crd_")), Value::Int(seq), Value::from(secret::hash(&secret)), ts(now)],
    )
    .await?;
    Ok(secret)
}

async fn active_credentials<D: Db>(db: &mut D, seq: i64) -> Result<i64, StoreError> {
    db.query_one(
        "SELECT COUNT(*) FROM device_credentials WHERE device_seq = $1 AND revoked_at IS NULL",
        &[Value::Int(seq)],
    )
    .await?
    .int(0)
}

pub async fn rotate_credential<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<String, StoreError> {
    let (seq, device) = get_with_seq(db, id, true).await?;
    if !matches!(
        device.status,
        DeviceStatus::Active
            | DeviceStatus::Inactive
            | DeviceStatus::Error
            | DeviceStatus::Provisioning
    ) {
        return Err(StoreError::Invalid(format!(
            "device {id} is {}; it cannot hold a credential",
            device.status
        )));
    }
    let secret = issue_credential(db, seq, now).await?;
    let mut after = device.clone();
    if after.status == DeviceStatus::Provisioning {
        after.status = DeviceStatus::Active;
        after.updated_at = now;
        write_device(db, seq, &device, &after).await?;
    }
    audit::record(
        db,
        actor,
        "device.credential.rotate",
        "device",
        id.as_str(),
        None::<&()>,
        None::<&()>,
        now,
    )
    .await?;
    Ok(secret)
}

pub async fn revoke_credentials<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let (seq, _) = get_with_seq(db, id, true).await?;
    let n = db
        .execute(
            "UPDATE device_credentials SET revoked_at = $1 WHERE device_seq = $2 AND revoked_at IS NULL",
            &[ts(now), Value::Int(seq)],
        )
        .await?;
    audit::record(
        db,
        actor,
        "device.credential.revoke",
        "device",
        id.as_str(),
        None::<&()>,
        Some(&serde_json::json!({ "revoked": n })),
        now,
    )
    .await?;
    Ok(n)
}

async fn set_status<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    from: DeviceStatus,
    to: DeviceStatus,
    action: &str,
    now: Timestamp,
) -> Result<Device, StoreError> {
    let (seq, before) = get_with_seq(db, id, true).await?;
    if before.status != from {
        return Err(StoreError::Invalid(format!(
            "device {id} is {}, not {from}",
            before.status
        )));
    }
    let mut after = before.clone();
    after.status = to;
    after.updated_at = now;
    write_device(db, seq, &before, &after).await?;
    audit::record(
        db,
        actor,
        action,
        "device",
        id.as_str(),
        Some(&DeviceView::from(before)),
        Some(&DeviceView::from(after.clone())),
        now,
    )
    .await?;
    Ok(after)
}

pub async fn accept<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<Device, StoreError> {
    set_status(
        db,
        actor,
        id,
        DeviceStatus::Pending,
        DeviceStatus::Provisioning,
        "device.accept",
        now,
    )
    .await
}

pub async fn reject<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    now: Timestamp,
) -> Result<Device, StoreError> {
    set_status(
        db,
        actor,
        id,
        DeviceStatus::Pending,
        DeviceStatus::Rejected,
        "device.reject",
        now,
    )
    .await
}

pub async fn authenticate<D: Db>(db: &mut D, hash: &str) -> Result<Device, StoreError> {
    let sql = format!(
        "SELECT {DEVICE_COLS} FROM device_credentials c JOIN devices d ON d.seq = c.device_seq WHERE c.secret_hash = $1 AND c.revoked_at IS NULL"
    );
    let row = db
        .query_opt(&sql, &[Value::from(hash)])
        .await?
        .ok_or_else(|| StoreError::Unauthorized("unknown or revoked device credential".into()))?;
    let mut devices = [device_from_row(&row)?];
    if !matches!(
        devices[0].1.status,
        DeviceStatus::Active | DeviceStatus::Inactive | DeviceStatus::Error
    ) {
        return Err(StoreError::Unauthorized(format!(
            "device is {}",
            devices[0].1.status
        )));
    }
    load_tags(db, &mut devices).await?;
    let [(_, device)] = devices;
    Ok(device)
}

fn hashes_match(stored: &Option<String>, presented: Option<&str>) -> bool {
    match (stored, presented) {
        (Some(stored), Some(presented)) => {
            // Compare hashes, not secrets, and without early exit.
            let presented = secret::hash(presented);
            stored.len() == presented.len()
                && stored
                    .bytes()
                    .zip(presented.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        _ => false,
    }
}

pub async fn provision<D: Db>(
    db: &mut D,
    request: ProvisionRequest,
    options: ProvisionOptions,
    now: Timestamp,
) -> Result<ProvisionOutcome, StoreError> {
    if let Some(token) = &request.claim_token {
        return provision_with_claim(db, token, &request, now).await;
    }
    let sql = format!(
        "SELECT {DEVICE_COLS}, d.preauth_secret_hash, d.pending_nonce_hash FROM devices d
         WHERE d.hw_id = $1 AND d.hw_id <> '' AND d.status NOT IN ('decommissioned', 'rejected'){}",
        db.for_update()
    );
    let Some(row) = db
        .query_opt(&sql, &[Value::from(request.hardware_id.as_str())])
        .await?
    else {
        if options.allow_pending {
            return enroll_pending(db, &request, now).await;
        }
        return Err(StoreError::Unauthorized(format!(
            "hardware id {:?} is not pre-authorised and no claim token was given",
            request.hardware_id.as_str()
        )));
    };
    let preauth_hash = row.opt_text(14)?;
    let nonce_hash = row.opt_text(15)?;
    let mut found = [device_from_row(&row)?];
    load_tags(db, &mut found).await?;
    let [(seq, before)] = found;
    match before.status {
        DeviceStatus::Pending => {
            if hashes_match(&nonce_hash, request.nonce.as_deref()) {
                Ok(ProvisionOutcome {
                    device: before,
                    credential: None,
                })
            } else {
                Err(StoreError::Conflict(format!(
                    "hardware id {:?} is awaiting approval for a different requester (nonce mismatch)",
                    request.hardware_id.as_str()
                )))
            }
        }
        DeviceStatus::Provisioning => {
            if preauth_hash.is_some()
                && !hashes_match(&preauth_hash, request.preauth_secret.as_deref())
            {
                return Err(StoreError::Unauthorized(
                    "missing or wrong preauth_secret for this hardware id".into(),
                ));
            }
            if nonce_hash.is_some() && !hashes_match(&nonce_hash, request.nonce.as_deref()) {
                return Err(StoreError::Unauthorized(
                    "missing or wrong nonce for this accepted device".into(),
                ));
            }
            if active_credentials(db, seq).await? > 0 {
                return Err(already_provisioned(&request, &before));
            }
            if let Some(requested) = &request.device_type {
                if requested != &before.device_type {
                    return Err(StoreError::Invalid(format!(
                        "device {} is registered as type {}, not {requested}",
                        before.id, before.device_type
                    )));
                }
            }
            let mut device = before.clone();
            device.status = DeviceStatus::Active;
            device.hw_rev = request.hw_rev.clone().or(device.hw_rev);
            device.firmware = request.firmware.clone().or(device.firmware);
            device.last_seen = Some(now);
            device.updated_at = now;
            write_device(db, seq, &before, &device).await?;
            db.execute(
                "UPDATE devices SET preauth_secret_hash = NULL, pending_nonce_hash = NULL WHERE seq = $1",
                &[Value::Int(seq)],
            )
            .await?;
            let credential = issue_credential(db, seq, now).await?;
            audit::record(
                db,
                &Actor::device(device.id.as_str()),
                "device.provision",
                "device",
                device.id.as_str(),
                Some(&DeviceView::from(before)),
                Some(&serde_json::json!({ "device": DeviceView::from(device.clone()), "via": "pre-authorisation" })),
                now,
            )
            .await?;
            Ok(ProvisionOutcome {
                device,
                credential: Some(credential),
            })
        }
        _ => Err(already_provisioned(&request, &before)),
    }
}

fn already_provisioned(request: &ProvisionRequest, device: &Device) -> StoreError {
    StoreError::Conflict(format!(
        "hardware id {:?} is already provisioned as device {}; an operator can rotate its credential or decommission it",
        request.hardware_id.as_str(),
        device.id
    ))
}

async fn provision_with_claim<D: Db>(
    db: &mut D,
    token: &str,
    request: &ProvisionRequest,
    now: Timestamp,
) -> Result<ProvisionOutcome, StoreError> {
    let sql = format!("{CLAIM_SELECT} WHERE secret_hash = $1{}", db.for_update());
    let row = db
        .query_opt(&sql, &[Value::from(secret::hash(token))])
        .await?
        .ok_or_else(|| StoreError::Unauthorized("unknown claim token".into()))?;
    let claim = claim_from_row(&row)?;
    if claim.revoked_at.is_some() {
        return Err(StoreError::Unauthorized(format!(
            "claim token {} has been revoked",
            claim.id
        )));
    }
    if claim.expires_at <= now {
        return Err(StoreError::Unauthorized(format!(
            "claim token {} expired at {}",
            claim.id, claim.expires_at
        )));
    }
    if claim.max_uses.is_some_and(|max| claim.uses >= max) {
        return Err(StoreError::Unauthorized(format!(
            "claim token {} has been used {} time(s), its limit",
            claim.id, claim.uses
        )));
    }
    let device_type = match (&claim.device_type, &request.device_type) {
        (Some(scoped), Some(asked)) if scoped != asked => {
            return Err(StoreError::Invalid(format!(
                "this claim token is for device type {scoped}, not {asked}"
            )))
        }
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(StoreError::Invalid(
                "device_type is required: the claim token does not set one".into(),
            ))
        }
    };
    let existing = db
        .query_opt(
            "SELECT id FROM devices WHERE hw_id = $1 AND hw_id <> '' AND status NOT IN ('decommissioned', 'rejected')",
            &[Value::from(request.hardware_id.as_str())],
        )
        .await?;
    if let Some(row) = existing {
        return Err(StoreError::Conflict(format!(
            "hardware id {:?} is already registered as device {}; an operator can rotate its credential or decommission it",
            request.hardware_id.as_str(),
            row.text(0)?
        )));
    }
    let device = Device {
        id: request.device_id.clone().unwrap_or_else(|| {
            DeviceId::parse(&secret::short_id("dev-")).expect("generated ids are valid")
        }),
        device_type,
        hw_id: Some(request.hardware_id.clone()),
        hw_rev: request.hw_rev.clone(),
        site: None,
        region: None,
        status: DeviceStatus::Active,
        firmware: request.firmware.clone(),
        tags: claim.tags.clone(),
        created_at: now,
        updated_at: now,
        last_seen: Some(now),
        connectivity: Default::default(),
        link_score: None,
    };
    let seq = insert_device(db, &device, None).await?;
    if let Some(group) = &claim.group {
        db.execute(
            "INSERT INTO group_members (group_name, device_seq, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[Value::from(group.as_str()), Value::Int(seq), ts(now)],
        )
        .await?;
    }
    db.execute(
        "UPDATE claim_tokens SET uses = uses + 1 WHERE id = $1",
        &[Value::from(claim.id.as_str())],
    )
    .await?;
    let credential = issue_credential(db, seq, now).await?;
    audit::record(
        db,
        &Actor::device(device.id.as_str()),
        "device.provision",
        "device",
        device.id.as_str(),
        None::<&()>,
        Some(&serde_json::json!({ "device": DeviceView::from(device.clone()), "via": "claim", "claim": claim.id })),
        now,
    )
    .await?;
    Ok(ProvisionOutcome {
        device,
        credential: Some(credential),
    })
}

async fn enroll_pending<D: Db>(
    db: &mut D,
    request: &ProvisionRequest,
    now: Timestamp,
) -> Result<ProvisionOutcome, StoreError> {
    let nonce = request.nonce.as_deref().ok_or_else(|| {
        StoreError::Invalid(
            "an unknown device must send a random nonce (16-256 characters) to wait for approval"
                .into(),
        )
    })?;
    check_secret_shape("nonce", nonce)?;
    let device_type = request.device_type.clone().ok_or_else(|| {
        StoreError::Invalid("device_type is required to enrol without a claim token".into())
    })?;
    let device = Device {
        id: request.device_id.clone().unwrap_or_else(|| {
            DeviceId::parse(&secret::short_id("dev-")).expect("generated ids are valid")
        }),
        device_type,
        hw_id: Some(request.hardware_id.clone()),
        hw_rev: request.hw_rev.clone(),
        site: None,
        region: None,
        status: DeviceStatus::Pending,
        firmware: request.firmware.clone(),
        tags: Default::default(),
        created_at: now,
        updated_at: now,
        last_seen: Some(now),
        connectivity: Default::default(),
        link_score: None,
    };
    let seq = insert_device(db, &device, None).await?;
    db.execute(
        "UPDATE devices SET pending_nonce_hash = $1 WHERE seq = $2",
        &[Value::from(secret::hash(nonce)), Value::Int(seq)],
    )
    .await?;
    audit::record(
        db,
        &Actor::device(device.id.as_str()),
        "device.enroll",
        "device",
        device.id.as_str(),
        None::<&()>,
        Some(&DeviceView::from(device.clone())),
        now,
    )
    .await?;
    Ok(ProvisionOutcome {
        device,
        credential: None,
    })
}
