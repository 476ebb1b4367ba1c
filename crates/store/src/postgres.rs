//! The PostgreSQL backend, for scale-out: a connection pool (deadpool) with prepared-statement caching.

use futures::future::BoxFuture;

use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use drover_core::query::Dialect;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use crate::db::{Db, Row, Value};
use crate::StoreError;

/// Shared handle to a PostgreSQL database.
#[derive(Clone)]
pub struct PgBackend {
    pool: Pool,
}

impl PgBackend {
    /// Connects to `url` (`postgres://user@host:port/db?options=...`) and checks the connection.
    pub async fn open(url: &str, max_connections: usize) -> Result<PgBackend, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build PostgreSQL pool: {e}")))?;
        let backend = PgBackend { pool };
        // Fail at start-up, with the reason, rather than on the first request.
        let _probe = backend.pool.get().await.map_err(|e| {
            StoreError::Config(format!("cannot connect to PostgreSQL: {}", error_chain(&e)))
        })?;
        Ok(backend)
    }

    /// [`Self::write`]: a PostgreSQL commit is already synced to disk (`synchronous_commit`, on by
    /// default). The counterpart of the SQLite backend's `write_synced`.
    pub async fn write_synced<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(PgConn<'c>) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        self.write(op).await
    }

    /// Runs `op` in a transaction, committing if it returns `Ok`.
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(PgConn<'c>) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut client = self.pool.get().await.map_err(StoreError::pool)?;
        let tx = client.transaction().await.map_err(StoreError::pg)?;
        let result = { op(PgConn { tx: &tx }).await };
        match result {
            Ok(value) => {
                tx.commit().await.map_err(StoreError::pg)?;
                Ok(value)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Runs `op` in a read-only, repeatable-read transaction (one consistent snapshot).
    pub async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(PgConn<'c>) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut client = self.pool.get().await.map_err(StoreError::pool)?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(StoreError::pg)?;
        let result = op(PgConn { tx: &tx }).await;
        let _ = tx.commit().await;
        result
    }
}

/// A PostgreSQL transaction, implementing [`Db`].
pub struct PgConn<'c> {
    tx: &'c deadpool_postgres::Transaction<'c>,
}

impl Db for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let client = self.tx;
        let stmt = client.prepare_cached(sql).await.map_err(StoreError::pg)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&stmt, &refs).await.map_err(StoreError::pg)?;
        rows.iter().map(convert_row).collect()
    }

    async fn query_adhoc(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        // A statement prepared for this one execution is planned with its actual values.
        let stmt = self.tx.prepare(sql).await.map_err(StoreError::pg)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.tx.query(&stmt, &refs).await.map_err(StoreError::pg)?;
        rows.iter().map(convert_row).collect()
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let client = self.tx;
        let stmt = client.prepare_cached(sql).await.map_err(StoreError::pg)?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        client.execute(&stmt, &refs).await.map_err(StoreError::pg)
    }
}

fn convert_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (idx, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::VOID {
            // e.g. `SELECT pg_advisory_xact_lock(…)`: there is nothing to read.
            Ok(Value::Null)
        } else if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(idx)
                .map(|v| v.map_or(Value::Null, Value::Int))
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(idx)
                .map(|v| v.map_or(Value::Null, |i| Value::Int(i.into())))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(idx)
                .map(|v| v.map_or(Value::Null, |i| Value::Int(i.into())))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(idx)
                .map(|v| v.map_or(Value::Null, |b| Value::Int(b.into())))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(idx)
                .map(|v| v.map_or(Value::Null, Value::Float))
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(idx)
                .map(|v| v.map_or(Value::Null, |f| Value::Float(f.into())))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(idx)
                .map(|v| v.map_or(Value::Null, Value::Bytes))
        } else {
            row.try_get::<_, Option<String>>(idx)
                .map(|v| v.map_or(Value::Null, Value::Text))
        };
        values.push(
            value.map_err(|e| StoreError::Corrupt(format!("column {}: {e}", column.name())))?,
        );
    }
    Ok(Row(values))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else {
                    i.to_sql(ty, out)
                }
            }
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Bytes(b) => b.as_slice().to_sql(ty, out),
            Value::Float(f) => {
                if *ty == Type::FLOAT4 {
                    (*f as f32).to_sql(ty, out)
                } else {
                    f.to_sql(ty, out)
                }
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl StoreError {
    pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict(format!(
                    "already exists ({})",
                    db.constraint().unwrap_or("unique constraint")
                ));
            }
            if *code == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION {
                return StoreError::Conflict(format!(
                    "still referenced ({})",
                    db.constraint().unwrap_or("foreign key")
                ));
            }
            return StoreError::Backend(format!("postgres: {} ({})", db.message(), code.code()));
        }
        StoreError::Backend(format!("postgres: {}", error_chain(&e)))
    }

    pub(crate) fn pool(e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Unavailable(format!("postgres pool: {}", error_chain(&e)))
    }
}
