//! The small SQL surface both backends share: values, rows and the [`Db`] trait.
//!
//! Every store operation is written once, as an async function generic over [`Db`], with SQL using
//! PostgreSQL-style `$N` placeholders. The PostgreSQL backend awaits it on tokio; the SQLite backend
//! runs the same future to completion on a blocking thread (its methods never pend), rewriting `$N`
//! to SQLite's `?N`. Dialect differences are confined to a few helpers here and to the migrations.

use std::fmt::Write;

use drover_core::query::{Dialect, SqlParam};

use crate::StoreError;

/// A value bound to or read from SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Float(f64),
}

impl From<SqlParam> for Value {
    fn from(p: SqlParam) -> Value {
        match p {
            SqlParam::Text(s) => Value::Text(s),
            SqlParam::Int(i) => Value::Int(i),
            SqlParam::Bytes(b) => Value::Bytes(b),
            SqlParam::Float(f) => Value::Float(f),
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map_or(Value::Null, Into::into)
    }
}

/// One result row, columns in SELECT order.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, idx: usize) -> Result<&Value, StoreError> {
        self.0
            .get(idx)
            .ok_or_else(|| StoreError::Corrupt(format!("row has no column {idx}")))
    }

    pub fn int(&self, idx: usize) -> Result<i64, StoreError> {
        match self.at(idx)? {
            Value::Int(i) => Ok(*i),
            other => Err(StoreError::Corrupt(format!(
                "column {idx}: expected integer, got {other:?}"
            ))),
        }
    }

    pub fn opt_int(&self, idx: usize) -> Result<Option<i64>, StoreError> {
        match self.at(idx)? {
            Value::Null => Ok(None),
            _ => self.int(idx).map(Some),
        }
    }

    pub fn text(&self, idx: usize) -> Result<String, StoreError> {
        match self.at(idx)? {
            Value::Text(s) => Ok(s.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {idx}: expected text, got {other:?}"
            ))),
        }
    }

    pub fn opt_text(&self, idx: usize) -> Result<Option<String>, StoreError> {
        match self.at(idx)? {
            Value::Null => Ok(None),
            _ => self.text(idx).map(Some),
        }
    }

    pub fn float(&self, idx: usize) -> Result<f64, StoreError> {
        match self.at(idx)? {
            Value::Float(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(StoreError::Corrupt(format!(
                "column {idx}: expected a number, got {other:?}"
            ))),
        }
    }

    pub fn bytes(&self, idx: usize) -> Result<Vec<u8>, StoreError> {
        match self.at(idx)? {
            Value::Bytes(b) => Ok(b.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {idx}: expected bytes, got {other:?}"
            ))),
        }
    }
}

/// A connection or transaction of either backend.
#[allow(async_fn_in_trait)]
pub trait Db {
    fn dialect(&self) -> Dialect;
    /// Runs a statement that returns rows.
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs a statement and returns the number of rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;

    /// The first row, if any.
    async fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Exactly one row.
    async fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("expected one row from: {sql}")))
    }

    /// Runs a fleet-query statement. PostgreSQL switches a reused prepared statement to a generic
    /// plan after five runs, and a generic plan ignores the bound values; fleet data is skewed (one
    /// tag value on 70% of devices, another on 2%), so such a plan can be ten times slower. Backends
    /// override this to plan every execution with its values.
    async fn query_adhoc(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.query(sql, params).await
    }

    /// Runs `first`, giving up after `budget` to run `fallback` instead (same parameters, same
    /// result). Backends that cannot interrupt a statement run `fallback` directly.
    async fn query_with_fallback(
        &mut self,
        first: &str,
        fallback: &str,
        params: &[Value],
        budget: std::time::Duration,
    ) -> Result<Vec<Row>, StoreError> {
        let _ = (first, budget);
        self.query(fallback, params).await
    }

    /// `FOR UPDATE` on PostgreSQL; nothing on SQLite, whose single writer already serialises writes.
    fn for_update(&self) -> &'static str {
        match self.dialect() {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }
}

/// `$first, $first+1, …` — `n` comma-separated placeholders.
pub fn placeholders(first: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 4);
    for idx in 0..n {
        if idx > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "${}", first + idx);
    }
    out
}

/// `($1, $2, $3), ($4, $5, $6), …` — `rows` tuples of `cols` placeholders.
pub fn value_rows(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        out.push_str(&placeholders(1 + row * cols, cols));
        out.push(')');
    }
    out
}

/// Rewrites `$N` placeholders to SQLite's `?N`. Drover's SQL never contains `$` in literals.
pub fn to_sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}
