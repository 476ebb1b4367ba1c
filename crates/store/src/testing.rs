//! Test support shared by Drover's test suites: fresh stores on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests run against the server named by `DROVER_TEST_PG`; each test gets its own schema
//! (selected through the connection's `search_path`), so tests run in parallel without seeing each
//! other. Under `CI=true` a missing `DROVER_TEST_PG` is an error rather than a skip.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Store, StoreError, StoreOptions};

/// The PostgreSQL URL for tests, if configured. Panics under `CI=true` when it is missing, so a
/// CI run can never silently skip the PostgreSQL suite.
pub fn pg_url() -> Option<String> {
    match std::env::var("DROVER_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "CI=true but DROVER_TEST_PG is not set: the PostgreSQL suite must run in CI"
                );
            }
            None
        }
    }
}

/// A database location for one test: a temporary SQLite file or a fresh PostgreSQL schema.
pub struct TestDb {
    /// The URL to open with [`Store::open`].
    pub url: String,
    schema: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new SQLite database in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = TempDir::new();
        let url = format!("sqlite:{}", dir.path.join("drover.db").display());
        TestDb {
            url,
            schema: None,
            _dir: Some(dir),
        }
    }

    /// A new, empty PostgreSQL schema, or `None` when `DROVER_TEST_PG` is unset (outside CI).
    pub async fn postgres() -> Option<TestDb> {
        let base = pg_url()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let schema = format!("drover_test_{now}_{}", &crate::secret::short_id("")[..8]);
        let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DROVER_TEST_PG={base}: {e}"));
        tokio::spawn(connection);
        // Remove schemas that crashed tests left behind more than an hour ago.
        let stale = client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'drover_test_%'",
                &[],
            )
            .await
            .expect("list schemas");
        for row in stale {
            let name: String = row.get(0);
            let created: u64 = name
                .split('_')
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if created + 3600 < now {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
            }
        }
        client
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        Some(TestDb {
            url,
            schema: Some((base, schema)),
            _dir: None,
        })
    }

    /// Opens a store on this database (applying migrations).
    pub async fn open(&self) -> Result<Store, StoreError> {
        Store::open(
            &self.url,
            &StoreOptions {
                pg_max_connections: 4,
            },
        )
        .await
    }

    /// Drops the PostgreSQL schema (SQLite files go with the temporary directory).
    pub async fn cleanup(self) {
        if let Some((base, schema)) = &self.schema {
            if let Ok((client, connection)) =
                tokio_postgres::connect(base, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            }
        }
    }
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(crate::secret::short_id("drover-test-"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
