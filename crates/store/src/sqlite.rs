//! The SQLite backend: the embedded default.
//!
//! One writer connection (SQLite allows one writer at a time; holding it in-process avoids busy
//! retries) and a small pool of read-only connections that run concurrently under WAL. All calls run
//! on tokio's blocking pool so they never stall the async runtime.

use futures::future::LocalBoxFuture;
use std::path::Path;
use std::sync::{Arc, Mutex};

use drover_core::query::Dialect;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::db::{to_sqlite_placeholders, Db, Row, Value};
use crate::StoreError;

/// Number of read connections: enough for the HTTP server's concurrency on small machines.
const READERS: usize = 4;

/// Heap memory SQLite holds in this process (page caches, prepared statements, schemas) across
/// every connection of every SQLite store; bounded by each connection's `cache_size`.
pub fn memory_used() -> u64 {
    // SAFETY: sqlite3_memory_used only reads SQLite's global allocation counter.
    u64::try_from(unsafe { rusqlite::ffi::sqlite3_memory_used() }).unwrap_or(0)
}

/// Shared handle to one SQLite database file.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Signals a returned reader; waiting on it bounds the number of open read connections.
    reader_returned: std::sync::Condvar,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Config(format!(
                        "cannot create data directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
        let writer = open_conn(path, false)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_conn(path, true)?);
        }
        Ok(SqliteBackend {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                reader_returned: std::sync::Condvar::new(),
            }),
        })
    }

    /// Runs `op` in an immediate write transaction, committing if it returns `Ok`. The commit
    /// reaches the write-ahead log, which survives a crash of the process; the log is synced to
    /// disk at checkpoints and by [`Self::write_synced`] (`synchronous = NORMAL`).
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(SqliteConn<'c>) -> LocalBoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.write_with(false, op).await
    }

    /// Like [`Self::write`], but the commit also syncs the write-ahead log to disk
    /// (`synchronous = FULL` for this transaction), so what it wrote, and everything committed
    /// before it, survives an OS crash or power loss. For group commits, where one sync covers
    /// many callers; a sync per small transaction would halve their rate.
    pub async fn write_synced<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(SqliteConn<'c>) -> LocalBoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.write_with(true, op).await
    }

    /// [`Self::write`] or [`Self::write_synced`] on the blocking pool.
    async fn write_with<T, F>(&self, synced: bool, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(SqliteConn<'c>) -> LocalBoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            if synced {
                conn.execute_batch("PRAGMA synchronous = FULL")
                    .map_err(StoreError::sqlite)?;
            }
            let result = Self::transaction(&mut conn, op);
            if synced {
                if let Err(e) = conn.execute_batch("PRAGMA synchronous = NORMAL") {
                    tracing::warn!(error = %e, "cannot restore synchronous = NORMAL on the SQLite writer");
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite worker failed: {e}")))?
    }

    /// Runs `op` in an immediate transaction on the writer, committing if it returns `Ok`.
    fn transaction<T, F>(conn: &mut Connection, op: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(SqliteConn<'c>) -> LocalBoxFuture<'c, Result<T, StoreError>>,
    {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(StoreError::sqlite)?;
        match futures::executor::block_on(op(SqliteConn { conn })) {
            Ok(value) => match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(value),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(StoreError::sqlite(e))
                }
            },
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// Runs `op` on a read-only connection (a consistent snapshot for the whole call).
    pub async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(SqliteConn<'c>) -> LocalBoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = {
                let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(conn) = pool.pop() {
                        break conn;
                    }
                    pool = inner
                        .reader_returned
                        .wait(pool)
                        .unwrap_or_else(|p| p.into_inner());
                }
            };
            let result = (|| {
                conn.execute_batch("BEGIN").map_err(StoreError::sqlite)?;
                let result = futures::executor::block_on(op(SqliteConn { conn: &mut conn }));
                let _ = conn.execute_batch("COMMIT");
                result
            })();
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            inner.reader_returned.notify_one();
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("sqlite worker failed: {e}")))?
    }
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Config(format!(
            "cannot open SQLite database {}: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(StoreError::sqlite)?;
    // WAL lets readers run beside the writer; NORMAL sync is durable at each checkpoint and safe
    // against corruption; a 64 MiB page cache per connection holds the hot index pages, and
    // memory-mapping the file (up to 1 GiB, only as large as the file) lets scans read the rest
    // from the OS page cache without copying.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;
         PRAGMA mmap_size = 1073741824;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(StoreError::sqlite)?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON;")
            .map_err(StoreError::sqlite)?;
    }
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// A SQLite connection inside a transaction, implementing [`Db`].
pub struct SqliteConn<'a> {
    conn: &'a mut Connection,
}

impl Db for SqliteConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let sql = to_sqlite_placeholders(sql);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(StoreError::sqlite)?;
        let n_cols = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter().map(to_sql)))
            .map_err(StoreError::sqlite)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(StoreError::sqlite)? {
            let mut values = Vec::with_capacity(n_cols);
            for idx in 0..n_cols {
                values.push(match row.get_ref(idx).map_err(StoreError::sqlite)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Float(f),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    async fn query_with_fallback(
        &mut self,
        first: &str,
        fallback: &str,
        params: &[Value],
        budget: std::time::Duration,
    ) -> Result<Vec<Row>, StoreError> {
        let deadline = std::time::Instant::now() + budget;
        // Checked every 1,000 virtual-machine steps: cheap, and fine-grained enough for a budget
        // of milliseconds.
        self.conn
            .progress_handler(1000, Some(move || std::time::Instant::now() >= deadline));
        let first_try = self.query(first, params).await;
        self.conn.progress_handler(1000, None::<fn() -> bool>);
        match first_try {
            Err(StoreError::Interrupted) => self.query(fallback, params).await,
            other => other,
        }
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let sql = to_sqlite_placeholders(sql);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(StoreError::sqlite)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(params.iter().map(to_sql)))
            .map_err(StoreError::sqlite)?;
        Ok(n as u64)
    }
}

fn to_sql(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
        Value::Float(f) => rusqlite::types::Value::Real(*f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// The writer's `synchronous` level as a transaction on it sees it (1 = NORMAL, 2 = FULL).
    fn op(mut conn: SqliteConn<'_>) -> LocalBoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move { conn.query("PRAGMA synchronous", &[]).await?[0].int(0) })
    }

    async fn level(backend: &SqliteBackend, synced: bool) -> i64 {
        if synced {
            backend.write_synced(op).await.unwrap()
        } else {
            backend.write(op).await.unwrap()
        }
    }

    #[tokio::test]
    async fn only_a_synced_write_syncs_its_commit() {
        let dir = TempDir::new();
        let backend = SqliteBackend::open(&dir.path.join("drover.db")).unwrap();
        assert_eq!(level(&backend, false).await, 1);
        assert_eq!(level(&backend, true).await, 2);
        // The writer goes back to NORMAL for the transactions after it.
        assert_eq!(level(&backend, false).await, 1);
    }
}
