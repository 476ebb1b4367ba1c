//! The storage contract: one suite of scenarios that every backend of [`drover_store::Store`] must
//! pass, run on SQLite always and on PostgreSQL when `DROVER_TEST_PG` names a server (and always
//! under `CI=true`, where a missing URL is an error rather than a skip).
//!
//! Each scenario is written once as `async fn name(store: Store)` inside [`contract_tests!`], which
//! expands it into a module `name` with two tests, `name::on_sqlite` and `name::on_postgres`, each on
//! a fresh, empty database. Filter with `cargo test -p drover-store on_postgres` to run one backend.
//!
//! # Layout
//! - `support`: the harness that runs a scenario on a backend, fixtures, and assertion helpers.
//! - `devices`: the device registry: CRUD, hardware-id uniqueness, lifecycle, counts, migrations.
//! - `listing`: keyset pagination in every sort order, cursor stability and validation.
//! - `query_agreement`: SQL compilation of fleet queries selects exactly what in-memory evaluation does.
//! - `bulk`: bulk update by query and streaming import.
//! - `groups`: static and dynamic groups, hierarchy, deletion rules.
//! - `provisioning`: claim tokens, pre-authorised and pending devices, credentials.
//! - `auth`: operator tokens and the first-start admin token.
//! - `audit`: what mutations record, and reading the log back with filters and paging.
//! - `fleet`: fleet rollups (counts per status, connectivity, firmware, region) and version history.
//! - `health`: heartbeat ingest, latest health and cohort rollups.
//! - `jobs`: fleet jobs (max_parallel, timeouts, retries, cancel, config) and diagnostics requests.
//! - `shadow`: device shadows: merge and persistence, versions under concurrency, tombstones, limits.

/// Expands each `async fn name(store: Store) { … }` into a module `name` holding the scenario and
/// the tests `on_sqlite` and `on_postgres` that run it on a fresh database of each backend.
macro_rules! contract_tests {
    ($(
        $(#[doc = $doc:literal])*
        async fn $name:ident($store:ident: Store) $body:block
    )*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn scenario($store: drover_store::Store) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    $crate::support::run_on_sqlite(scenario).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    $crate::support::run_on_postgres(scenario).await;
                }
            }
        )*
    };
}

/// Asserts that `$result` is an `Err` matching `$pattern` (and `$guard`), printing what it got
/// otherwise.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            other => panic!("expected Err({}), got {:?}", stringify!($pattern $(if $guard)?), other),
        }
    };
}

mod support;

mod audit;
mod auth;
mod bulk;
mod devices;
mod fleet;
mod groups;
mod health;
mod jobs;
mod listing;
mod metric_queries;
mod provisioning;
mod query_agreement;
mod rollouts;
mod shadow;
