//! Drover's storage: one API ([`Store`]) over two real backends, SQLite (the embedded default) and
//! PostgreSQL (for scale-out), chosen by the URL scheme.
//!
//! Every operation is one transaction. Mutations write their audit-log entry in the same
//! transaction, so an action is either done and audited or not done at all.
//!
//! # Layout
//! - [`db`]: the value/row types and the `Db` trait that both backends implement.
//! - `sqlite`, `postgres`: the backends (connections, transactions, type mapping).
//! - `migrate`: versioned schema migrations per backend (`migrations/{sqlite,postgres}/*.sql`).
//! - `ops`: the operations, written once against `Db`: devices, groups, credentials and
//!   provisioning, tokens and claims, audit, heartbeats, device shadows, rollouts, fleet jobs and
//!   diagnostics, fleet rollups for the dashboard (`ops::fleet`).
//! - [`secret`]: random secrets and their hashes.

pub mod db;
mod migrate;
mod ops;
mod postgres;
pub mod secret;
mod sqlite;
pub mod testing;

use std::path::PathBuf;

use drover_core::query::Query;
use drover_core::shadow::{
    ShadowDocument, ShadowError, ShadowLimits, ShadowName, ShadowUpdate, UpdateOutcome,
};
use drover_core::{ArtifactName, Device, DeviceId, GroupName, Timestamp, Version};
use drover_proto::artifacts::{ArtifactView, DeploymentView, NewDeployment};
use drover_proto::audit::AuditEntry;
use drover_proto::auth::{ClaimView, NewClaim, NewToken, TokenView};
use drover_proto::devices::{
    DevicePatch, DeviceSort, ImportResult, NewDevice, OnConflict, SortOrder,
};
use drover_proto::groups::{GroupPatch, GroupView, NewGroup};
use drover_proto::shadow::ShadowSummary;
use drover_proto::update::{DeploymentId, DeploymentReport};
use drover_proto::Page;

pub use ops::artifacts::{
    ArtifactRef, NewArtifact, NewDelta, PublishedTarget, StoredObject, TargetFile,
};
pub use ops::audit::AuditFilter;
pub use ops::auth::{Actor, TokenAuth, SESSION_NAME_PREFIX};
pub use ops::deployments::Offer;
pub use ops::devices::{ImportMsg, ImportRow};
pub use ops::diagnostics::{AnswerOutcome, Confirmation, DiagState};
pub use ops::fleet::{FleetCount, FleetTick, VersionSnapshot, ACCEPTED as ACCEPTED_STATUSES};
pub use ops::health::{
    CohortRollup, ConnectivityChange, DeviceHealth, HealthSample, HeartbeatRecord, IngestOptions,
};
pub use ops::jobs::{JobTickOutcome, ReportOutcome as JobReportOutcome};
pub use ops::provision::{ProvisionOptions, ProvisionOutcome};
pub use ops::rollouts::TickOutcome;
pub use ops::tuf::{StoredKey, StoredMetadata};
pub use sqlite::memory_used as sqlite_memory_used;

use crate::db::Db;
use crate::postgres::PgBackend;
use crate::sqlite::SqliteBackend;

/// Everything that can go wrong in the store, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The request conflicts with existing state (duplicate id, hardware id in use, …).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not allowed in the current state.
    #[error("{0}")]
    Invalid(String),
    /// Authentication failed; the message says why in terms safe to show the caller.
    #[error("{0}")]
    Unauthorized(String),
    /// The request is valid but the caller may not do it.
    #[error("{0}")]
    Forbidden(String),
    /// A shadow update was refused by the shadow rules: a version conflict, a limit, a malformed
    /// state. [`ShadowError::code`] names which.
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    /// A bulk import was rejected; each entry is a line number and what is wrong with it.
    #[error("import rejected: {} line(s) have errors", .0.len())]
    Import(Vec<(u64, String)>),
    /// The store's configuration is wrong (bad URL, unreachable database, unwritable directory).
    #[error("{0}")]
    Config(String),
    /// The database is temporarily unreachable or overloaded.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database returned data Drover cannot read.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Backend(String),
    /// A statement was interrupted by its time budget (internal: callers fall back to another plan).
    #[error("statement interrupted")]
    Interrupted,
}

impl StoreError {
    pub(crate) fn sqlite(e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(err, msg) = &e {
            let detail = msg.clone().unwrap_or_default();
            match err.extended_code {
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    return StoreError::Conflict(format!("already exists ({detail})"));
                }
                rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                    return StoreError::Conflict(format!("still referenced ({detail})"));
                }
                _ => {}
            }
            if err.code == rusqlite::ErrorCode::OperationInterrupted {
                return StoreError::Interrupted;
            }
            if err.code == rusqlite::ErrorCode::DatabaseBusy
                || err.code == rusqlite::ErrorCode::DatabaseLocked
            {
                return StoreError::Unavailable(format!("sqlite busy: {detail}"));
            }
        }
        StoreError::Backend(format!("sqlite: {e}"))
    }

    pub(crate) fn not_found(kind: &'static str, id: impl ToString) -> StoreError {
        StoreError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connection pool size for PostgreSQL.
    pub pg_max_connections: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pg_max_connections: 16,
        }
    }
}

/// Which backend a [`Store`] uses.
#[derive(Clone)]
enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PgBackend),
}

/// The storage API. Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// Runs `$body` (generic code over `$db: &mut impl Db`) in a write or read transaction of whichever
/// backend the store uses. The body is type-checked once per backend.
macro_rules! with_db {
    ($store:expr, $mode:ident, |$db:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(backend) => {
                backend
                    .$mode(move |mut conn| {
                        Box::pin(async move {
                            let $db = &mut conn;
                            $body
                        })
                    })
                    .await
            }
            Backend::Postgres(backend) => {
                backend
                    .$mode(move |mut conn| {
                        Box::pin(async move {
                            let $db = &mut conn;
                            $body
                        })
                    })
                    .await
            }
        }
    };
}

impl Store {
    /// Opens the store named by `url` and applies pending migrations.
    ///
    /// `sqlite:PATH` or `sqlite://PATH` (or a plain file path) selects SQLite, creating the file and
    /// its directory on first start; `postgres://` or `postgresql://` selects PostgreSQL.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(PgBackend::open(url, options.pg_max_connections).await?)
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() || path.contains("://") {
                return Err(StoreError::Config(format!(
                    "unsupported store URL {url:?}: use sqlite:PATH or postgres://USER@HOST/DB"
                )));
            }
            let path = PathBuf::from(path);
            let backend = tokio::task::spawn_blocking(move || SqliteBackend::open(&path))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))??;
            Backend::Sqlite(backend)
        };
        let store = Store { backend };
        store.migrate().await?;
        Ok(store)
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        with_db!(self, write, |db| migrate::run(db).await)
    }

    /// Highest applied schema version.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        with_db!(self, read, |db| migrate::current_version(db).await)
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_db!(self, read, |db| db.query("SELECT 1", &[]).await.map(drop))
    }

    /// Refreshes the query planner's statistics (run after large imports and periodically).
    pub async fn analyze(&self) -> Result<(), StoreError> {
        with_db!(self, write, |db| db.execute("ANALYZE", &[]).await.map(drop))
    }

    // ---- devices -------------------------------------------------------------------------------

    /// Registers a device; returns it and, when asked for, its new credential.
    pub async fn create_device(
        &self,
        actor: &Actor,
        new: NewDevice,
        now: Timestamp,
    ) -> Result<(Device, Option<String>), StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::devices::create(db, &actor, new, now)
            .await)
    }

    /// One device by id.
    pub async fn get_device(&self, id: &DeviceId) -> Result<Device, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::devices::get(db, &id).await)
    }

    /// Applies a partial update.
    pub async fn update_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        patch: DevicePatch,
        now: Timestamp,
    ) -> Result<Device, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::devices::update(
            db, &actor, &id, patch, now
        )
        .await)
    }

    /// Deletes a device and everything attached to it (tags, memberships, credentials).
    pub async fn delete_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::devices::delete(db, &actor, &id, now)
            .await)
    }

    /// Decommissions a device: revokes its credentials, keeps its history, frees its hardware id.
    pub async fn decommission_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<Device, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::devices::decommission(
            db, &actor, &id, now
        )
        .await)
    }

    /// A page of devices matching `query`, in `sort` order, after `cursor`.
    pub async fn list_devices(
        &self,
        query: &Query,
        sort: DeviceSort,
        order: SortOrder,
        cursor: Option<&str>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page<Device>, StoreError> {
        let query = query.clone();
        let cursor = cursor.map(str::to_owned);
        with_db!(self, read, |db| ops::devices::list(
            db,
            &query,
            sort,
            order,
            cursor.as_deref(),
            limit,
            now
        )
        .await)
    }

    /// Number of devices matching `query`.
    pub async fn count_devices(&self, query: &Query, now: Timestamp) -> Result<u64, StoreError> {
        let query = query.clone();
        with_db!(self, read, |db| ops::devices::count(db, &query, now).await)
    }

    /// Number of devices in each lifecycle status.
    pub async fn count_devices_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        with_db!(self, read, |db| ops::devices::count_by_status(db).await)
    }

    /// Applies `patch` to every device matching `query`; returns how many matched and how many changed.
    pub async fn bulk_update_devices(
        &self,
        actor: &Actor,
        query: &Query,
        patch: DevicePatch,
        now: Timestamp,
    ) -> Result<(u64, u64), StoreError> {
        let (actor, query) = (actor.clone(), query.clone());
        with_db!(self, write, |db| ops::devices::bulk_update(
            db, &actor, &query, patch, now
        )
        .await)
    }

    /// Imports devices streamed through `rx` in one transaction. The import commits only when
    /// [`ImportMsg::Commit`] arrives; [`ImportMsg::Abort`] or a closed channel rolls everything back.
    pub async fn import_devices(
        &self,
        actor: &Actor,
        on_conflict: OnConflict,
        rx: tokio::sync::mpsc::Receiver<ImportMsg>,
        now: Timestamp,
    ) -> Result<ImportResult, StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::devices::import(
            db,
            &actor,
            on_conflict,
            rx,
            now
        )
        .await)
    }

    // ---- credentials and provisioning ----------------------------------------------------------

    /// Replaces a device's credential; returns the new secret (shown once).
    pub async fn rotate_credential(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<String, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::provision::rotate_credential(
            db, &actor, &id, now
        )
        .await)
    }

    /// Revokes every credential of a device; returns how many were active.
    pub async fn revoke_credentials(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::provision::revoke_credentials(
            db, &actor, &id, now
        )
        .await)
    }

    /// Accepts a pending device: it may fetch its credential with its nonce.
    pub async fn accept_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<Device, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::provision::accept(
            db, &actor, &id, now
        )
        .await)
    }

    /// Rejects a pending device.
    pub async fn reject_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<Device, StoreError> {
        let (actor, id) = (actor.clone(), id.clone());
        with_db!(self, write, |db| ops::provision::reject(
            db, &actor, &id, now
        )
        .await)
    }

    /// Handles a device's provisioning request.
    pub async fn provision(
        &self,
        request: drover_proto::device_api::ProvisionRequest,
        options: ProvisionOptions,
        now: Timestamp,
    ) -> Result<ProvisionOutcome, StoreError> {
        with_db!(self, write, |db| ops::provision::provision(
            db, request, options, now
        )
        .await)
    }

    /// The device that owns an active credential.
    pub async fn authenticate_device(&self, credential: &str) -> Result<Device, StoreError> {
        let hash = secret::hash(credential);
        with_db!(self, read, |db| ops::provision::authenticate(db, &hash)
            .await)
    }

    // ---- groups --------------------------------------------------------------------------------

    pub async fn create_group(
        &self,
        actor: &Actor,
        new: NewGroup,
        now: Timestamp,
    ) -> Result<GroupView, StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::groups::create(db, &actor, new, now)
            .await)
    }

    /// A group with its current member count.
    pub async fn get_group(
        &self,
        name: &GroupName,
        now: Timestamp,
    ) -> Result<GroupView, StoreError> {
        let name = name.clone();
        with_db!(self, read, |db| ops::groups::get(db, &name, now).await)
    }

    /// All groups, by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupView>, StoreError> {
        with_db!(self, read, |db| ops::groups::list(db).await)
    }

    pub async fn update_group(
        &self,
        actor: &Actor,
        name: &GroupName,
        patch: GroupPatch,
        now: Timestamp,
    ) -> Result<GroupView, StoreError> {
        let (actor, name) = (actor.clone(), name.clone());
        with_db!(self, write, |db| ops::groups::update(
            db, &actor, &name, patch, now
        )
        .await)
    }

    pub async fn delete_group(
        &self,
        actor: &Actor,
        name: &GroupName,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (actor, name) = (actor.clone(), name.clone());
        with_db!(self, write, |db| ops::groups::delete(
            db, &actor, &name, now
        )
        .await)
    }

    /// Adds devices to a static group; all ids must exist. Returns how many were newly added.
    pub async fn add_group_members(
        &self,
        actor: &Actor,
        name: &GroupName,
        ids: Vec<DeviceId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let (actor, name) = (actor.clone(), name.clone());
        with_db!(self, write, |db| ops::groups::change_members(
            db, &actor, &name, ids, true, now
        )
        .await)
    }

    /// Removes devices from a static group. Returns how many were members.
    pub async fn remove_group_members(
        &self,
        actor: &Actor,
        name: &GroupName,
        ids: Vec<DeviceId>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let (actor, name) = (actor.clone(), name.clone());
        with_db!(self, write, |db| ops::groups::change_members(
            db, &actor, &name, ids, false, now
        )
        .await)
    }

    /// The query that selects a group's members: `group = NAME` for a static group, the group's own
    /// query for a dynamic one.
    pub async fn group_query(&self, name: &GroupName) -> Result<Query, StoreError> {
        let name = name.clone();
        with_db!(self, read, |db| ops::groups::membership_query(db, &name)
            .await)
    }

    /// The fleet query selecting a rollout's or job's target devices.
    pub async fn target_query(
        &self,
        target: &drover_proto::target::Target,
    ) -> Result<Query, StoreError> {
        let target = target.clone();
        with_db!(self, read, |db| ops::targets::query_of(db, &target).await)
    }

    /// Names of the groups (static and dynamic) a device belongs to right now.
    pub async fn device_groups(
        &self,
        id: &DeviceId,
        now: Timestamp,
    ) -> Result<Vec<GroupName>, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::groups::device_groups(db, &id, now)
            .await)
    }

    // ---- artifacts and deployments ----------------------------------------------------------------

    /// Refuses an artifact name and version that exist already (checked before an upload starts).
    pub async fn check_new_artifact(
        &self,
        name: &ArtifactName,
        version: &Version,
    ) -> Result<(), StoreError> {
        let (name, version) = (name.clone(), version.clone());
        with_db!(self, read, |db| ops::artifacts::check_new(
            db, &name, &version
        )
        .await)
    }

    /// Records an artifact whose bytes are in the object store.
    pub async fn insert_artifact(
        &self,
        actor: &Actor,
        new: NewArtifact,
        now: Timestamp,
    ) -> Result<ArtifactView, StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::artifacts::insert(
            db, &actor, new, now
        )
        .await)
    }

    /// One artifact with its deltas.
    pub async fn get_artifact(
        &self,
        name: &ArtifactName,
        version: &Version,
    ) -> Result<ArtifactView, StoreError> {
        let (name, version) = (name.clone(), version.clone());
        with_db!(self, read, |db| ops::artifacts::get(db, &name, &version)
            .await)
    }

    /// Looks an artifact up by name and version (for deploying and building deltas).
    pub async fn find_artifact(
        &self,
        name: &ArtifactName,
        version: &Version,
    ) -> Result<ArtifactRef, StoreError> {
        let (name, version) = (name.clone(), version.clone());
        with_db!(self, read, |db| ops::artifacts::find(db, &name, &version)
            .await)
    }

    /// Every version of an artifact, newest first.
    pub async fn artifact_versions(
        &self,
        name: &ArtifactName,
    ) -> Result<Vec<ArtifactRef>, StoreError> {
        let name = name.clone();
        with_db!(self, read, |db| ops::artifacts::versions(db, &name).await)
    }

    /// Artifacts, newest upload first.
    pub async fn list_artifacts(
        &self,
        name: Option<&ArtifactName>,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Page<ArtifactView>, StoreError> {
        let name = name.cloned();
        with_db!(self, read, |db| ops::artifacts::list(
            db,
            name.as_ref(),
            before_seq,
            limit
        )
        .await)
    }

    /// Deletes an artifact unless it is being deployed; returns the object keys to remove.
    pub async fn delete_artifact(
        &self,
        actor: &Actor,
        name: &ArtifactName,
        version: &Version,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        let (actor, name, version) = (actor.clone(), name.clone(), version.clone());
        with_db!(self, write, |db| ops::artifacts::delete(
            db, &actor, &name, &version, now
        )
        .await)
    }

    /// Whether any artifact or delta still references object `key`.
    pub async fn object_in_use(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        with_db!(self, read, |db| ops::artifacts::object_in_use(db, &key)
            .await)
    }

    /// The image or delta published under a TUF target path.
    pub async fn target_file(&self, path: &str) -> Result<Option<TargetFile>, StoreError> {
        let path = path.to_owned();
        with_db!(self, read, |db| ops::artifacts::target_file(db, &path)
            .await)
    }

    /// An artifact's debug-symbols file.
    pub async fn artifact_symbols(
        &self,
        name: &ArtifactName,
        version: &Version,
    ) -> Result<Option<StoredObject>, StoreError> {
        let (name, version) = (name.clone(), version.clone());
        with_db!(self, read, |db| ops::artifacts::symbols(
            db, &name, &version
        )
        .await)
    }

    /// Every image and delta the TUF targets metadata lists.
    pub async fn published_targets(&self) -> Result<Vec<PublishedTarget>, StoreError> {
        with_db!(self, read, |db| ops::artifacts::published(db).await)
    }

    /// Records a delta the server built.
    pub async fn insert_delta(&self, delta: NewDelta, now: Timestamp) -> Result<(), StoreError> {
        with_db!(self, write, |db| ops::artifacts::insert_delta(
            db, delta, now
        )
        .await)
    }

    /// Creates a deployment of an artifact to one device.
    pub async fn create_deployment(
        &self,
        actor: &Actor,
        device: &DeviceId,
        new: NewDeployment,
        now: Timestamp,
    ) -> Result<DeploymentView, StoreError> {
        let (actor, device) = (actor.clone(), device.clone());
        with_db!(self, write, |db| ops::deployments::create(
            db, &actor, &device, &new, now
        )
        .await)
    }

    // ---- rollouts ------------------------------------------------------------------------------

    /// Validates, plans and creates a rollout.
    pub async fn create_rollout(
        &self,
        actor: &Actor,
        new: drover_proto::rollouts::NewRollout,
        now: Timestamp,
    ) -> Result<drover_proto::rollouts::RolloutView, StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::rollouts::create(
            db, &actor, &new, now
        )
        .await)
    }

    /// One rollout.
    pub async fn get_rollout(
        &self,
        id: drover_proto::rollouts::RolloutId,
    ) -> Result<drover_proto::rollouts::RolloutView, StoreError> {
        with_db!(self, read, |db| ops::rollouts::get(db, id).await)
    }

    /// Rollouts, newest first.
    pub async fn list_rollouts(
        &self,
        status: Option<String>,
        limit: usize,
    ) -> Result<Vec<drover_proto::rollouts::RolloutView>, StoreError> {
        with_db!(self, read, |db| ops::rollouts::list(
            db,
            status.as_deref(),
            limit
        )
        .await)
    }

    /// A rollout's decision log.
    pub async fn rollout_decisions(
        &self,
        id: drover_proto::rollouts::RolloutId,
    ) -> Result<Vec<drover_proto::rollouts::RolloutDecisionView>, StoreError> {
        with_db!(self, read, |db| ops::rollouts::decisions(db, id).await)
    }

    /// A page of a rollout's devices in rank order.
    pub async fn rollout_devices(
        &self,
        id: drover_proto::rollouts::RolloutId,
        state: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<drover_proto::rollouts::RolloutDeviceView>, StoreError> {
        with_db!(self, read, |db| ops::rollouts::devices(
            db,
            id,
            state.as_deref(),
            cursor.as_deref(),
            limit
        )
        .await)
    }

    /// Applies an operator's command to a rollout.
    pub async fn rollout_command(
        &self,
        actor: &Actor,
        id: drover_proto::rollouts::RolloutId,
        command: drover_core::rollout::machine::Command,
        now: Timestamp,
    ) -> Result<(drover_proto::rollouts::RolloutView, TickOutcome), StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::rollouts::command(
            db,
            &actor,
            id,
            command.clone(),
            now
        )
        .await)
    }

    /// Rollouts the orchestrator has work for.
    pub async fn active_rollouts(
        &self,
    ) -> Result<Vec<drover_proto::rollouts::RolloutId>, StoreError> {
        with_db!(self, read, |db| ops::rollouts::active(db).await)
    }

    /// One orchestrator tick of one rollout; `None` when another replica holds it right now.
    pub async fn tick_rollout(
        &self,
        id: drover_proto::rollouts::RolloutId,
        now: Timestamp,
    ) -> Result<Option<TickOutcome>, StoreError> {
        with_db!(self, write, |db| ops::rollouts::tick(
            db,
            id,
            now,
            Vec::new(),
            true
        )
        .await)
    }

    /// Alerts waiting for delivery.
    pub async fn undelivered_rollout_alerts(
        &self,
        limit: usize,
    ) -> Result<
        Vec<(
            drover_proto::rollouts::RolloutId,
            String,
            drover_proto::rollouts::RolloutDecisionView,
        )>,
        StoreError,
    > {
        with_db!(self, read, |db| ops::rollouts::undelivered_alerts(
            db, limit
        )
        .await)
    }

    /// Marks alerts delivered.
    pub async fn mark_rollout_alerts_delivered(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        with_db!(self, write, |db| ops::rollouts::mark_delivered(db, &seqs)
            .await)
    }

    /// One deployment with its history.
    pub async fn get_deployment(&self, id: DeploymentId) -> Result<DeploymentView, StoreError> {
        with_db!(self, read, |db| ops::deployments::get(db, id).await)
    }

    /// A device's deployments, newest first.
    pub async fn device_deployments(
        &self,
        device: &DeviceId,
        limit: usize,
    ) -> Result<Vec<DeploymentView>, StoreError> {
        let device = device.clone();
        with_db!(self, read, |db| ops::deployments::list_for_device(
            db, &device, limit
        )
        .await)
    }

    /// What the device should install now.
    pub async fn deployment_offer(&self, device: &DeviceId) -> Result<Option<Offer>, StoreError> {
        let device = device.clone();
        with_db!(self, read, |db| ops::deployments::offer(db, &device).await)
    }

    /// Whether a device may download the files of artifact `artifact_seq` (its unfinished
    /// deployment installs it).
    pub async fn may_download(
        &self,
        device: &DeviceId,
        artifact_seq: i64,
    ) -> Result<bool, StoreError> {
        let device = device.clone();
        with_db!(self, read, |db| ops::deployments::may_download(
            db,
            &device,
            artifact_seq
        )
        .await)
    }

    /// Applies a device's step report.
    pub async fn report_deployment(
        &self,
        device: &DeviceId,
        id: DeploymentId,
        report: DeploymentReport,
        now: Timestamp,
        step_timeout: drover_core::Duration,
    ) -> Result<DeploymentView, StoreError> {
        let device = device.clone();
        with_db!(self, write, |db| ops::deployments::report(
            db,
            &device,
            id,
            &report,
            now,
            step_timeout
        )
        .await)
    }

    /// Cancels an unfinished deployment.
    pub async fn cancel_deployment(
        &self,
        actor: &Actor,
        device: &DeviceId,
        id: DeploymentId,
        now: Timestamp,
    ) -> Result<DeploymentView, StoreError> {
        let (actor, device) = (actor.clone(), device.clone());
        with_db!(self, write, |db| ops::deployments::cancel(
            db, &actor, &device, id, now
        )
        .await)
    }

    /// Times out deployments whose device went silent; returns them.
    pub async fn time_out_deployments(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<DeploymentId>, StoreError> {
        with_db!(self, write, |db| ops::deployments::time_out(db, now, limit)
            .await)
    }

    // ---- fleet jobs and diagnostics ------------------------------------------------------------

    /// Validates a job and creates it with one queued execution per target device.
    pub async fn create_job(
        &self,
        actor: &Actor,
        new: drover_proto::jobs::NewJob,
        now: Timestamp,
    ) -> Result<drover_proto::jobs::JobView, StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::jobs::create(db, &actor, &new, now)
            .await)
    }

    /// One job.
    pub async fn get_job(
        &self,
        id: drover_proto::jobs::JobId,
    ) -> Result<drover_proto::jobs::JobView, StoreError> {
        with_db!(self, read, |db| ops::jobs::get(db, id).await)
    }

    /// Jobs, newest first, optionally in one state (`running`, `completed`, `canceled`).
    pub async fn list_jobs(
        &self,
        state: Option<String>,
        limit: usize,
    ) -> Result<Vec<drover_proto::jobs::JobView>, StoreError> {
        with_db!(self, read, |db| ops::jobs::list(
            db,
            state.as_deref(),
            limit
        )
        .await)
    }

    /// A page of a job's executions.
    pub async fn job_executions(
        &self,
        id: drover_proto::jobs::JobId,
        state: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<drover_proto::jobs::JobExecutionView>, StoreError> {
        with_db!(self, read, |db| ops::jobs::executions(
            db,
            id,
            state.as_deref(),
            cursor.as_deref(),
            limit
        )
        .await)
    }

    /// Cancels a running job; returns it and the devices that were running it.
    pub async fn cancel_job(
        &self,
        actor: &Actor,
        id: drover_proto::jobs::JobId,
        reason: &str,
        now: Timestamp,
    ) -> Result<(drover_proto::jobs::JobView, Vec<DeviceId>), StoreError> {
        let (actor, reason) = (actor.clone(), reason.to_owned());
        with_db!(self, write, |db| ops::jobs::cancel(
            db, &actor, id, &reason, now
        )
        .await)
    }

    /// Jobs the tick has work for.
    pub async fn active_jobs(&self) -> Result<Vec<drover_proto::jobs::JobId>, StoreError> {
        with_db!(self, read, |db| ops::jobs::active(db).await)
    }

    /// One tick of one job; `None` when another replica holds it right now.
    pub async fn tick_job(
        &self,
        id: drover_proto::jobs::JobId,
        now: Timestamp,
    ) -> Result<Option<JobTickOutcome>, StoreError> {
        with_db!(self, write, |db| ops::jobs::tick(db, id, now, true).await)
    }

    /// The job execution a device should run now.
    pub async fn next_job(
        &self,
        device: &DeviceId,
    ) -> Result<Option<drover_proto::jobs::JobOffer>, StoreError> {
        let device = device.clone();
        with_db!(self, read, |db| ops::jobs::next_for_device(db, &device)
            .await)
    }

    /// Records a device's report on one of its job executions.
    pub async fn report_job(
        &self,
        device: &DeviceId,
        execution: drover_proto::jobs::ExecutionId,
        report: drover_proto::jobs::JobStatusReport,
        now: Timestamp,
    ) -> Result<JobReportOutcome, StoreError> {
        let device = device.clone();
        with_db!(self, write, |db| ops::jobs::report(
            db, &device, execution, &report, now
        )
        .await)
    }

    /// Issues a single-use confirmation token for a diagnostics action on a device.
    pub async fn create_diag_confirmation(
        &self,
        device: &DeviceId,
        action: drover_proto::jobs::DiagAction,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<String, StoreError> {
        let device = device.clone();
        with_db!(self, write, |db| ops::diagnostics::create_confirmation(
            db, &device, action, expires_at, now
        )
        .await)
    }

    /// Consumes a confirmation token if it is valid for the device and action.
    pub async fn consume_diag_confirmation(
        &self,
        device: &DeviceId,
        action: drover_proto::jobs::DiagAction,
        token: &str,
        now: Timestamp,
    ) -> Result<Confirmation, StoreError> {
        let (device, token) = (device.clone(), token.to_owned());
        with_db!(self, write, |db| ops::diagnostics::consume_confirmation(
            db, &device, action, &token, now
        )
        .await)
    }

    /// Records a diagnostics request (audited); returns its id.
    pub async fn create_diag_request(
        &self,
        actor: &Actor,
        device: &DeviceId,
        action: drover_proto::jobs::DiagAction,
        lines: Option<u32>,
        deadline: Timestamp,
        now: Timestamp,
    ) -> Result<String, StoreError> {
        let (actor, device) = (actor.clone(), device.clone());
        with_db!(self, write, |db| ops::diagnostics::create_request(
            db, &actor, &device, action, lines, deadline, now
        )
        .await)
    }

    /// The oldest diagnostics request a device has to answer.
    pub async fn next_diag_request(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<Option<drover_proto::jobs::DiagCommand>, StoreError> {
        let device = device.clone();
        with_db!(self, write, |db| ops::diagnostics::next_for_device(
            db, &device, now
        )
        .await)
    }

    /// Records a device's answer to a diagnostics request.
    pub async fn answer_diag_request(
        &self,
        device: &DeviceId,
        request_id: &str,
        response: drover_proto::jobs::DiagResponse,
        now: Timestamp,
    ) -> Result<AnswerOutcome, StoreError> {
        let (device, request_id) = (device.clone(), request_id.to_owned());
        with_db!(self, write, |db| ops::diagnostics::answer(
            db,
            &device,
            &request_id,
            &response,
            now
        )
        .await)
    }

    /// Where a diagnostics request stands.
    pub async fn diag_request_state(&self, request_id: &str) -> Result<DiagState, StoreError> {
        let request_id = request_id.to_owned();
        with_db!(self, read, |db| ops::diagnostics::state(db, &request_id)
            .await)
    }

    /// Gives up on a diagnostics request; returns its answer if it arrived meanwhile.
    pub async fn expire_diag_request(&self, request_id: &str) -> Result<DiagState, StoreError> {
        let request_id = request_id.to_owned();
        with_db!(self, write, |db| ops::diagnostics::expire(db, &request_id)
            .await)
    }

    // ---- TUF repository --------------------------------------------------------------------------

    /// Stores new metadata versions and prunes old non-root versions, in one transaction: a
    /// snapshot and the timestamp naming it appear together or not at all.
    pub async fn publish_tuf_metadata(
        &self,
        files: Vec<StoredMetadata>,
        keep: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        with_db!(self, write, |db| {
            for file in &files {
                ops::tuf::put(db, file, now).await?;
                if file.role != "root" {
                    ops::tuf::prune(db, &file.role, keep).await?;
                }
            }
            Ok(())
        })
    }

    /// The newest version of a role's metadata.
    pub async fn latest_tuf_metadata(
        &self,
        role: &str,
    ) -> Result<Option<StoredMetadata>, StoreError> {
        let role = role.to_owned();
        with_db!(self, read, |db| ops::tuf::latest(db, &role).await)
    }

    /// One version of a role's metadata.
    pub async fn tuf_metadata(
        &self,
        role: &str,
        version: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let role = role.to_owned();
        with_db!(self, read, |db| ops::tuf::get(db, &role, version).await)
    }

    /// Stores an online signing key.
    pub async fn put_tuf_key(&self, key: StoredKey, now: Timestamp) -> Result<(), StoreError> {
        with_db!(self, write, |db| ops::tuf::put_key(db, &key, now).await)
    }

    /// The online keys of a role.
    pub async fn tuf_keys(&self, role: &str) -> Result<Vec<StoredKey>, StoreError> {
        let role = role.to_owned();
        with_db!(self, read, |db| ops::tuf::keys(db, &role).await)
    }

    /// Removes an online key.
    pub async fn delete_tuf_key(&self, keyid: &str) -> Result<(), StoreError> {
        let keyid = keyid.to_owned();
        with_db!(self, write, |db| ops::tuf::delete_key(db, &keyid).await)
    }

    // ---- health ---------------------------------------------------------------------------------

    /// Stores a batch of heartbeats in one transaction (group commit), synced to disk before it
    /// returns; returns how many belonged to live devices and were stored.
    pub async fn record_heartbeats(
        &self,
        records: Vec<HeartbeatRecord>,
        options: IngestOptions,
    ) -> Result<u64, StoreError> {
        // One sync per group commit: an acknowledged heartbeat survives power loss too.
        with_db!(self, write_synced, |db| ops::health::record(
            db, records, options
        )
        .await)
    }

    /// A device's latest reported health.
    pub async fn device_health(&self, id: &DeviceId) -> Result<Option<DeviceHealth>, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::health::latest(db, &id).await)
    }

    /// A device's raw heartbeat samples since `since`, oldest first (the newest `limit` of them).
    pub async fn health_samples(
        &self,
        id: &DeviceId,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<HealthSample>, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::health::samples(db, &id, since, limit)
            .await)
    }

    /// Rollups of one metric for one firmware version over `[from, to)`.
    pub async fn cohort_rollups(
        &self,
        firmware: &str,
        metric: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<CohortRollup>, StoreError> {
        let (firmware, metric) = (firmware.to_owned(), metric.to_owned());
        with_db!(self, read, |db| ops::health::rollups(
            db, &firmware, &metric, from, to
        )
        .await)
    }

    /// Rollups of one metric for every firmware version that has some over `[from, to)`, ordered
    /// by firmware (byte order) and bucket.
    pub async fn metric_rollups(
        &self,
        metric: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<CohortRollup>, StoreError> {
        let metric = metric.to_owned();
        with_db!(self, read, |db| ops::health::metric_rollups(
            db, &metric, from, to
        )
        .await)
    }

    /// Marks offline up to `limit` devices whose heartbeat deadline passed; returns their ids.
    pub async fn mark_offline(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<DeviceId>, StoreError> {
        with_db!(self, write, |db| ops::health::mark_offline(db, now, limit)
            .await)
    }

    /// A device's connectivity changes, newest first.
    pub async fn connectivity_history(
        &self,
        id: &DeviceId,
        limit: usize,
    ) -> Result<Vec<ConnectivityChange>, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::health::connectivity_history(
            db, &id, limit
        )
        .await)
    }

    /// Deletes raw heartbeat samples older than `before`.
    pub async fn prune_heartbeat_samples(&self, before: Timestamp) -> Result<u64, StoreError> {
        with_db!(self, write, |db| ops::health::prune_samples(db, before)
            .await)
    }

    // ---- fleet rollups ---------------------------------------------------------------------------

    /// Folds the devices' pending count deltas into the fleet counts; returns how many it folded.
    pub async fn fold_fleet_counts(&self) -> Result<u64, StoreError> {
        with_db!(self, write, |db| ops::fleet::fold(db).await)
    }

    /// Device counts per (status, connectivity, firmware, region), exact at this moment, read
    /// from the rollups (never a scan of the devices).
    pub async fn fleet_counts(&self) -> Result<Vec<FleetCount>, StoreError> {
        with_db!(self, read, |db| ops::fleet::counts(db).await)
    }

    /// Writes a snapshot of accepted devices per firmware version if it changed since the last
    /// one; returns whether it wrote one.
    pub async fn snapshot_versions(&self, now: Timestamp) -> Result<bool, StoreError> {
        with_db!(self, write, |db| ops::fleet::snapshot(db, now).await)
    }

    /// Version snapshots in `[since, now]` for `versions`, oldest first, at most `max_points`.
    pub async fn version_history(
        &self,
        since: Timestamp,
        now: Timestamp,
        versions: Vec<String>,
        max_points: usize,
    ) -> Result<Vec<VersionSnapshot>, StoreError> {
        with_db!(self, read, |db| ops::fleet::history(
            db, since, now, &versions, max_points
        )
        .await)
    }

    /// Deletes version snapshots taken before `before`; returns how many.
    pub async fn prune_version_history(&self, before: Timestamp) -> Result<u64, StoreError> {
        with_db!(self, write, |db| ops::fleet::prune(db, before).await)
    }

    /// Versions targeted by rollouts that were not aborted or rolled back, each with when its
    /// first such rollout was created.
    pub async fn rollout_versions(&self) -> Result<Vec<(String, Timestamp)>, StoreError> {
        with_db!(self, read, |db| ops::fleet::rollout_versions(db).await)
    }

    /// Rollouts not in a final state (running or paused), newest first.
    pub async fn unfinished_rollouts(
        &self,
    ) -> Result<Vec<drover_proto::rollouts::RolloutView>, StoreError> {
        with_db!(self, read, |db| ops::rollouts::unfinished(db).await)
    }

    /// One fleet rollup tick: fold the count deltas, snapshot the per-version counts if they
    /// changed, prune snapshots before `prune_before`. `None` when another replica is running one.
    pub async fn fleet_rollup_tick(
        &self,
        now: Timestamp,
        prune_before: Timestamp,
    ) -> Result<Option<FleetTick>, StoreError> {
        with_db!(self, write, |db| ops::fleet::tick(db, now, prune_before)
            .await)
    }

    // ---- device shadows -------------------------------------------------------------------------

    /// A device's shadow (`name` `None`: the classic shadow), or `None` if it was never written or
    /// has been deleted. An unknown device is `NotFound`.
    pub async fn get_shadow(
        &self,
        id: &DeviceId,
        name: Option<&ShadowName>,
    ) -> Result<Option<ShadowDocument>, StoreError> {
        let (id, name) = (id.clone(), name.cloned());
        with_db!(self, read, |db| ops::shadow::get(db, &id, name.as_ref())
            .await)
    }

    /// Applies an update to a device's shadow, storing it only if it changed something. Returns what
    /// the update did and the document after it. Rejections are [`StoreError::Shadow`].
    pub async fn update_shadow(
        &self,
        actor: &Actor,
        id: &DeviceId,
        name: Option<&ShadowName>,
        update: ShadowUpdate,
        now: Timestamp,
        limits: ShadowLimits,
    ) -> Result<(UpdateOutcome, ShadowDocument), StoreError> {
        let (actor, id, name) = (actor.clone(), id.clone(), name.cloned());
        with_db!(self, write, |db| ops::shadow::update(
            db,
            &actor,
            &id,
            name.as_ref(),
            update,
            now,
            &limits
        )
        .await)
    }

    /// Deletes a device's shadow, keeping its version for the next one. Returns that version, or
    /// `None` if there was no shadow.
    pub async fn delete_shadow(
        &self,
        actor: &Actor,
        id: &DeviceId,
        name: Option<&ShadowName>,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let (actor, id, name) = (actor.clone(), id.clone(), name.cloned());
        with_db!(self, write, |db| ops::shadow::delete(
            db,
            &actor,
            &id,
            name.as_ref(),
            now
        )
        .await)
    }

    /// The shadows of a device, the classic one first.
    pub async fn list_shadows(&self, id: &DeviceId) -> Result<Vec<ShadowSummary>, StoreError> {
        let id = id.clone();
        with_db!(self, read, |db| ops::shadow::list(db, &id).await)
    }

    // ---- operator tokens, claims, audit --------------------------------------------------------

    /// Creates the first admin token if there are no tokens at all. Returns the secret when one was
    /// created (`preset` is used as the secret when given).
    pub async fn bootstrap_admin(
        &self,
        preset: Option<String>,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        with_db!(self, write, |db| ops::auth::bootstrap_admin(
            db, preset, now
        )
        .await)
    }

    pub async fn create_token(
        &self,
        actor: &Actor,
        new: NewToken,
        now: Timestamp,
    ) -> Result<(TokenView, String), StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::auth::create_token(
            db, &actor, new, now
        )
        .await)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        with_db!(self, read, |db| ops::auth::list_tokens(db).await)
    }

    pub async fn revoke_token(
        &self,
        actor: &Actor,
        id: &str,
        now: Timestamp,
    ) -> Result<TokenView, StoreError> {
        let (actor, id) = (actor.clone(), id.to_owned());
        with_db!(self, write, |db| ops::auth::revoke_token(
            db, &actor, &id, now
        )
        .await)
    }

    /// Checks an operator token secret; returns who it belongs to, or why it is refused.
    /// Deletes dashboard sessions that expired or were revoked before `before`; returns how many.
    pub async fn prune_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        with_db!(self, write, |db| ops::auth::prune_sessions(db, before)
            .await)
    }

    /// Ends a web session by revoking its token, even when it is the last admin token.
    pub async fn end_session(
        &self,
        actor: &Actor,
        id: &str,
        now: Timestamp,
    ) -> Result<TokenView, StoreError> {
        let (actor, id) = (actor.clone(), id.to_owned());
        with_db!(self, write, |db| ops::auth::end_session(
            db, &actor, &id, now
        )
        .await)
    }

    pub async fn authenticate_token(
        &self,
        secret: &str,
        now: Timestamp,
    ) -> Result<TokenAuth, StoreError> {
        let hash = secret::hash(secret);
        with_db!(self, read, |db| ops::auth::authenticate_token(
            db, &hash, now
        )
        .await)
    }

    /// Records that a token was used (callers throttle this; it is a write).
    pub async fn touch_token(&self, id: &str, now: Timestamp) -> Result<(), StoreError> {
        let id = id.to_owned();
        with_db!(self, write, |db| ops::auth::touch_token(db, &id, now).await)
    }

    pub async fn create_claim(
        &self,
        actor: &Actor,
        new: NewClaim,
        now: Timestamp,
    ) -> Result<(ClaimView, String), StoreError> {
        let actor = actor.clone();
        with_db!(self, write, |db| ops::auth::create_claim(
            db, &actor, new, now
        )
        .await)
    }

    pub async fn list_claims(&self) -> Result<Vec<ClaimView>, StoreError> {
        with_db!(self, read, |db| ops::auth::list_claims(db).await)
    }

    pub async fn get_claim(&self, id: &str) -> Result<ClaimView, StoreError> {
        let id = id.to_owned();
        with_db!(self, read, |db| ops::auth::get_claim(db, &id).await)
    }

    pub async fn revoke_claim(
        &self,
        actor: &Actor,
        id: &str,
        now: Timestamp,
    ) -> Result<ClaimView, StoreError> {
        let (actor, id) = (actor.clone(), id.to_owned());
        with_db!(self, write, |db| ops::auth::revoke_claim(
            db, &actor, &id, now
        )
        .await)
    }

    /// Audit entries matching `filter`, newest first.
    pub async fn list_audit(&self, filter: AuditFilter) -> Result<Page<AuditEntry>, StoreError> {
        with_db!(self, read, |db| ops::audit::list(db, &filter).await)
    }
}
