//! The harness that runs a scenario on each backend, and the fixtures and helpers scenarios share.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use drover_core::query::Query;
use drover_core::{
    Device, DeviceId, DeviceType, GroupName, HardwareId, Label, TagKey, TagValue, Timestamp,
    Version,
};
use drover_proto::devices::{DeviceSort, NewDevice, SortOrder};
use drover_store::testing::TestDb;
use drover_store::{Actor, Store, StoreOptions};
use futures::FutureExt;

/// The instant scenarios treat as "now" unless they move it: 2027-01-15T08:00:00Z.
pub const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
pub const MINUTE: i64 = 60_000;

/// `NOW` shifted by `minutes` (negative for the past).
pub fn at(minutes: i64) -> Timestamp {
    Timestamp::from_millis(NOW.as_millis() + minutes * MINUTE)
}

/// Runs `scenario` on a new SQLite database in a temporary directory.
pub async fn run_on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_sqlite_url(|url| async move { scenario(open(&url, "sqlite").await).await }).await;
}

/// Runs `scenario` on a new PostgreSQL schema (see [`with_postgres_url`]).
pub async fn run_on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_url(|url| async move { scenario(open(&url, "postgres").await).await }).await;
}

/// Calls `scenario` with the URL of a new SQLite database, for scenarios that open it themselves.
pub async fn with_sqlite_url<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::sqlite();
    scenario(db.url.clone()).await;
}

/// Calls `scenario` with the URL of a new PostgreSQL schema and drops the schema afterwards, even
/// when the scenario fails. Skips (with a note on stderr) when `DROVER_TEST_PG` is not set.
pub async fn with_postgres_url<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipped: set DROVER_TEST_PG=postgres://… to run the PostgreSQL contract tests");
        return;
    };
    let outcome = AssertUnwindSafe(scenario(db.url.clone()))
        .catch_unwind()
        .await;
    db.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Opens (and migrates) the store at `url`, checking it picked the expected backend.
pub async fn open(url: &str, backend: &str) -> Store {
    let store = Store::open(
        url,
        &StoreOptions {
            pg_max_connections: 4,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("open {backend} store: {e}"));
    assert_eq!(store.backend_name(), backend);
    store
}

// ---- values --------------------------------------------------------------------------------------

pub fn id(text: &str) -> DeviceId {
    DeviceId::parse(text).unwrap()
}

pub fn group(text: &str) -> GroupName {
    GroupName::parse(text).unwrap()
}

pub fn hw(text: &str) -> HardwareId {
    HardwareId::parse(text).unwrap()
}

pub fn label(text: &str) -> Label {
    Label::parse(text).unwrap()
}

pub fn version(text: &str) -> Version {
    Version::parse(text).unwrap()
}

pub fn device_type(text: &str) -> DeviceType {
    DeviceType::parse(text).unwrap()
}

pub fn query(text: &str) -> Query {
    Query::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A tag map from pairs.
pub fn tags(pairs: &[(&str, &str)]) -> BTreeMap<TagKey, TagValue> {
    pairs
        .iter()
        .map(|(k, v)| (TagKey::parse(k).unwrap(), TagValue::parse(v).unwrap()))
        .collect()
}

/// A tag patch: `Some` sets a key, `None` removes it.
pub fn tag_patch(pairs: &[(&str, Option<&str>)]) -> BTreeMap<TagKey, Option<TagValue>> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                TagKey::parse(k).unwrap(),
                v.map(|v| TagValue::parse(v).unwrap()),
            )
        })
        .collect()
}

/// The operator every scenario acts as unless it says otherwise.
pub fn operator() -> Actor {
    Actor::token("tok_operator", "ops-alice")
}

/// A device of type `thermostat` with nothing else set; fill in the rest with struct update syntax.
pub fn new_device(device_id: &str) -> NewDevice {
    NewDevice {
        id: Some(id(device_id)),
        device_type: device_type("thermostat"),
        hw_id: None,
        hw_rev: None,
        site: None,
        region: None,
        status: None,
        firmware: None,
        tags: BTreeMap::new(),
        last_seen: None,
        preauth_secret: None,
        issue_credential: false,
    }
}

/// Creates an `active` device with default attributes.
pub async fn create_active(store: &Store, device_id: &str, now: Timestamp) -> Device {
    let new = NewDevice {
        status: Some(drover_core::DeviceStatus::Active),
        ..new_device(device_id)
    };
    store.create_device(&operator(), new, now).await.unwrap().0
}

// ---- reading back ---------------------------------------------------------------------------------

/// Every device `list_devices` returns for `query`, page by page, and the size of each page.
pub async fn list_all(
    store: &Store,
    query: &Query,
    sort: DeviceSort,
    order: SortOrder,
    limit: usize,
    now: Timestamp,
) -> (Vec<Device>, Vec<usize>) {
    let mut devices = Vec::new();
    let mut page_sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_devices(query, sort, order, cursor.as_deref(), limit, now)
            .await
            .unwrap_or_else(|e| panic!("list {query} by {sort:?} {order:?}: {e}"));
        page_sizes.push(page.items.len());
        devices.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return (devices, page_sizes),
        }
        assert!(page_sizes.len() <= 1000, "pagination does not terminate");
    }
}

/// Ids of every device matching `query`, sorted by id.
pub async fn ids_matching(store: &Store, text: &str) -> Vec<String> {
    let (devices, _) = list_all(
        store,
        &query(text),
        DeviceSort::Id,
        SortOrder::Asc,
        1000,
        NOW,
    )
    .await;
    devices.into_iter().map(|d| d.id.into_string()).collect()
}

/// The ids of `devices`, in order.
pub fn ids_of(devices: &[Device]) -> Vec<String> {
    devices.iter().map(|d| d.id.as_str().to_owned()).collect()
}

/// `["a", "b"]` as owned strings, for comparing with id lists.
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
