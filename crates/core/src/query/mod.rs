//! The fleet query language: a small boolean language for selecting devices.
//!
//! Operators use it to search the registry and to define dynamic groups; rollouts and jobs will use it
//! to pick their targets. A query such as
//!
//! ```text
//! tags.env = prod AND firmware < 2.3.0 AND last_seen < now-10m AND NOT site ~ "berlin-*"
//! ```
//!
//! is parsed once into a [`Query`], which can then be evaluated against a device and its latest
//! heartbeat metrics in memory ([`Query::matches_with_metrics`]) or compiled to a parameterised SQL
//! fragment ([`Query::to_sql`]); the two always select the same devices. A query's
//! [`Display`](std::fmt::Display) is its canonical text, which is what dynamic groups store. The full
//! language is described in `docs/query-language.md`.
//!
//! ```
//! use drover_core::query::{Dialect, Query, SqlParam};
//! use drover_core::Timestamp;
//!
//! let query = Query::parse("TYPE = thermostat and status in (active, error)").unwrap();
//! assert_eq!(query.to_string(), "device_type = thermostat AND status IN (active, error)");
//!
//! let fragment = query.to_sql(Dialect::Postgres, Timestamp::from_millis(0), 1);
//! assert_eq!(fragment.sql, "(d.device_type = $1 AND d.status IN ($2, $3))");
//! assert_eq!(fragment.params[0], SqlParam::Text("thermostat".into()));
//! ```
//!
//! # Layout
//! - `lexer`: text to tokens, each with its column for error messages.
//! - `parser`: tokens to a validated [`Expr`], enforcing the size, depth and list limits.
//! - [`ast`]: the tree types and their canonical printing.
//! - `eval`: the in-memory semantics, which are the reference.
//! - `sql`: the same semantics compiled to parameterised SQLite or PostgreSQL.

pub mod ast;
mod eval;
mod lexer;
mod parser;
mod sql;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device::Device;
use crate::ids::GroupName;
use crate::time::Timestamp;

pub use ast::{Expr, Field, FieldKind, Number, Op, Predicate, TimeValue, Value};
pub use eval::glob_match;
pub use parser::{MAX_DEPTH, MAX_IN_VALUES, MAX_QUERY_BYTES};
pub use sql::{Dialect, SqlFragment, SqlParam};

/// A parsed, validated query together with its canonical text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    expr: Expr,
    /// The canonical text, computed once because dynamic groups store and compare it.
    text: String,
}

/// Why query text could not be parsed: where, and what was expected versus found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query error at column {column}: {message}")]
pub struct QueryError {
    /// 1-based character (not byte) column of the offending token; one past the last character
    /// when the query ended too early.
    pub column: usize,
    /// What was wrong, e.g. `expected a value after '=', found end of query`.
    pub message: String,
}

impl Query {
    /// Parses query text. Empty or whitespace-only text is the query that matches every device.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        parser::parse(text).map(Query::from_expr)
    }

    /// The query that matches every device.
    pub fn all() -> Query {
        Query::from_expr(Expr::All)
    }

    /// True for the query that matches every device (whose canonical text is empty).
    pub fn is_all(&self) -> bool {
        matches!(self.expr, Expr::All)
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The canonical text, as [`Display`](fmt::Display) prints it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `device` matches. `static_groups` are the static groups the device belongs to (for
    /// `group` predicates); relative times such as `now-10m` are resolved against `now`.
    ///
    /// The device record carries no heartbeat metrics, so here every metric is missing (and a metric
    /// predicate false); use [`Query::matches_with_metrics`] when the query
    /// [uses metrics](Query::uses_metrics).
    pub fn matches(&self, device: &Device, static_groups: &[GroupName], now: Timestamp) -> bool {
        self.matches_with_metrics(device, static_groups, None, now)
    }

    /// Like [`Query::matches`], with `metrics` the readings of the device's latest heartbeat by
    /// metric name (`None` if it has sent none), which predicates such as `battery_v < 3.0` test.
    pub fn matches_with_metrics(
        &self,
        device: &Device,
        static_groups: &[GroupName],
        metrics: Option<&BTreeMap<String, f64>>,
        now: Timestamp,
    ) -> bool {
        let subject = eval::Subject {
            device,
            static_groups,
            metrics,
        };
        eval::eval(&self.expr, subject, now)
    }

    /// Compiles to a boolean SQL expression over the devices table aliased `d`, selecting exactly the
    /// devices [`Query::matches`] would. Placeholders are numbered from `first_param` (so the fragment
    /// can follow the caller's own parameters), and relative times are resolved against `now`.
    pub fn to_sql(&self, dialect: Dialect, now: Timestamp, first_param: usize) -> SqlFragment {
        sql::compile(&self.expr, dialect, now, first_param)
    }

    /// True if the query tests a heartbeat metric, so evaluating it in memory needs the device's
    /// latest metrics ([`Query::matches_with_metrics`]).
    pub fn uses_metrics(&self) -> bool {
        fn walk(expr: &Expr) -> bool {
            match expr {
                Expr::All => false,
                Expr::Or(items) | Expr::And(items) => items.iter().any(walk),
                Expr::Not(inner) => walk(inner),
                Expr::Predicate(p) => matches!(p.field, Field::Metric(_)),
            }
        }
        walk(&self.expr)
    }

    /// True if the query tests membership of the static group `name`.
    pub fn mentions_group(&self, name: &GroupName) -> bool {
        fn walk(expr: &Expr, name: &GroupName) -> bool {
            match expr {
                Expr::All => false,
                Expr::Or(items) | Expr::And(items) => items.iter().any(|e| walk(e, name)),
                Expr::Not(inner) => walk(inner, name),
                Expr::Predicate(p) => {
                    p.field == Field::Group
                        && p.values
                            .iter()
                            .any(|v| matches!(v, Value::Group(g) if g == name))
                }
            }
        }
        walk(&self.expr, name)
    }

    /// Devices matching both queries (used to narrow a group's members by a search).
    pub fn and(self, other: Query) -> Query {
        let mut operands = Vec::new();
        for expr in [self.expr, other.expr] {
            match expr {
                Expr::All => {}
                Expr::And(inner) => operands.extend(inner),
                other => operands.push(other),
            }
        }
        match operands.len() {
            0 => Query::all(),
            1 => Query::from_expr(operands.pop().expect("one operand")),
            _ => Query::from_expr(Expr::And(operands)),
        }
    }

    fn from_expr(expr: Expr) -> Query {
        let text = expr.to_string();
        Query { expr, text }
    }
}

impl Default for Query {
    fn default() -> Query {
        Query::all()
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Query {
    type Err = QueryError;
    fn from_str(text: &str) -> Result<Query, QueryError> {
        Query::parse(text)
    }
}

/// Serialised as its canonical text, so stored queries stay readable and re-validate on load.
impl Serialize for Query {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Query, D::Error> {
        let text = String::deserialize(d)?;
        Query::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl QueryError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            column,
            message: message.into(),
        }
    }

    /// The query on one line with a caret under the error column, for terminals and plain-text
    /// responses:
    ///
    /// ```text
    /// tags.env = prod AND
    ///                    ^
    /// ```
    ///
    /// Line breaks and other control characters are shown as spaces so the caret stays aligned, and
    /// a long query is cut to a window around the column (marked with `…`).
    pub fn render(&self, source: &str) -> String {
        const WINDOW: usize = 100;
        let chars: Vec<char> = source
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let caret_idx = self.column.saturating_sub(1).min(chars.len());
        let start = caret_idx
            .saturating_sub(WINDOW / 2)
            .min(chars.len().saturating_sub(WINDOW));
        let end = (start + WINDOW).min(chars.len());
        let mut line = String::new();
        let mut caret_offset = caret_idx - start;
        if start > 0 {
            line.push('…');
            caret_offset += 1;
        }
        line.extend(&chars[start..end]);
        if end < chars.len() {
            line.push('…');
        }
        format!("{line}\n{}^", " ".repeat(caret_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_their_column_and_render_a_caret_under_it() {
        let source = "tags.site =";
        let err = Query::parse(source).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query error at column 12: expected a value after '=', found end of query"
        );
        assert_eq!(err.render(source), "tags.site =\n           ^");

        let source = "site = a\nOR region < b";
        let err = Query::parse(source).unwrap_err();
        assert_eq!(err.column, 20);
        assert_eq!(
            err.render(source),
            "site = a OR region < b\n                   ^"
        );
    }

    #[test]
    fn long_queries_render_a_window_around_the_column() {
        let source = format!(
            "{} AND site < b AND {}",
            vec!["site = a"; 20].join(" AND "),
            vec!["site = a"; 20].join(" AND ")
        );
        let err = Query::parse(&source).unwrap_err();
        let rendered = err.render(&source);
        let (line, caret) = rendered.split_once('\n').unwrap();
        assert!(line.starts_with('…') && line.ends_with('…'), "{line}");
        assert_eq!(line.chars().nth(caret.len() - 1), Some('<'), "{rendered}");
    }

    #[test]
    fn the_all_query_is_empty_and_matches_the_empty_text() {
        assert!(Query::all().is_all());
        assert_eq!(Query::all().to_string(), "");
        assert_eq!(Query::parse("   ").unwrap(), Query::all());
        assert!(!Query::parse("site EXISTS").unwrap().is_all());
    }

    #[test]
    fn queries_serialise_as_canonical_text_and_validate_when_deserialised() {
        let query = Query::parse("TYPE = thermostat and version >= v2.3").unwrap();
        let json = serde_json::to_string(&query).unwrap();
        assert_eq!(json, r#""device_type = thermostat AND firmware >= 2.3.0""#);
        assert_eq!(serde_json::from_str::<Query>(&json).unwrap(), query);
        let err = serde_json::from_str::<Query>(r#""created <""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("query error at column 10: expected a value"),
            "{err}"
        );
    }
}
