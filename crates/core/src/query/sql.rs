//! Compiles a query into a parameterised SQL `WHERE` fragment for SQLite or PostgreSQL.
//!
//! The fragment selects exactly the devices the in-memory evaluator ([`super::eval`]) matches, over
//! this schema (the devices table is aliased `d`):
//!
//! ```text
//! devices d: seq, id, device_type, status, hw_id, hw_rev, site, region  -- TEXT NOT NULL, '' = missing
//!            firmware TEXT ('' = missing), fw_key BLOB/bytea (Version::sort_key, empty = missing)
//!            created_at, updated_at BIGINT ms; last_seen BIGINT ms NOT NULL, 0 = never seen
//!            connectivity TEXT NOT NULL; link_score INTEGER NOT NULL 0-100, -1 = none yet
//! device_tags(device_seq, key, value)      -- one row per tag
//! group_members(group_name, device_seq)    -- static group membership
//! device_health(device_seq, metrics, …)    -- latest heartbeat; metrics TEXT, a JSON object
//!                                          -- of name -> number; no row before the first
//! ```
//!
//! Every value from the query is a bound parameter; user text never reaches the SQL string. Because
//! the schema stores "missing" as a sentinel (`''`, an empty key, `0`) rather than NULL, a comparison
//! that the sentinel could satisfy gets a guard such as `d.site <> '' AND …`, which keeps the rule that
//! a comparison on a missing value is false. Comparisons the sentinel can never satisfy are left
//! unguarded so they stay simple index lookups. Firmware ordering uses the byte-sortable
//! [`Version::sort_key`](crate::version::Version::sort_key), so the database compares versions
//! semantically with a plain `memcmp` on BLOB/bytea.
//!
//! A metric predicate is an `EXISTS` over the device's `device_health` row that extracts the metric
//! from the JSON (SQLite's `json_extract`, PostgreSQL's `->>`): no row, or no such key, makes the
//! extracted value NULL and the `EXISTS` false, never NULL, so `NOT` still turns it true.

use crate::health::MetricName;
use crate::query::ast::{Expr, Field, Number, Op, Predicate, Value};
use crate::query::eval::glob_match;
use crate::time::Timestamp;

/// The SQL dialect to emit; it decides the placeholder style and how globs are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `?N` placeholders; globs use `GLOB`.
    Sqlite,
    /// `$N` placeholders; globs use `LIKE … ESCAPE '\'`.
    Postgres,
}

/// A compiled query: joins to append after `FROM devices d`, a boolean `WHERE` expression, and the
/// parameters their placeholders refer to, in placeholder order.
///
/// Tag tests in the query's top-level `AND` (and `group = x`) become joins rather than subqueries:
/// a join lets the database's planner weigh the tag's own selectivity (its statistics on
/// `(key, value)`) and start from whichever side is smaller. Each join matches at most one row per
/// device (one row per device and tag key; one per device and group), so joins never duplicate
/// devices. Tests under `OR` or `NOT` stay subqueries.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFragment {
    /// Zero or more ` JOIN … ON …` clauses (each starting with a space).
    pub joins: String,
    pub sql: String,
    /// `params[i]` binds placeholder number `first_param + i`.
    pub params: Vec<SqlParam>,
}

/// A value bound to a placeholder. Callers bind `Text` as text, `Int` as a 64-bit integer, `Bytes`
/// as BLOB/bytea and `Float` as a double (REAL/double precision); a `Float` is always finite.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
    Float(f64),
}

/// Compiles `expr` with relative times resolved against `now` and placeholders numbered from
/// `first_param`.
pub(crate) fn compile(
    expr: &Expr,
    dialect: Dialect,
    now: Timestamp,
    first_param: usize,
) -> SqlFragment {
    let mut compiler = Compiler {
        dialect,
        now,
        next_param: first_param,
        params: Vec::new(),
    };
    let conjuncts: Vec<&Expr> = match expr {
        Expr::And(operands) => operands.iter().collect(),
        other => vec![other],
    };
    let mut joins = String::new();
    let mut rest = Vec::new();
    for conjunct in conjuncts {
        match compiler.join(conjunct, joins.matches(" JOIN ").count() + 1) {
            Some(join) => joins.push_str(&join),
            None => rest.push(conjunct),
        }
    }
    let sql = match rest.as_slice() {
        [] => ALWAYS.to_owned(),
        [only] => compiler.expr(only).text,
        many => {
            let parts: Vec<String> = many
                .iter()
                .map(|operand| compiler.expr(operand).text)
                .collect();
            format!("({})", parts.join(" AND "))
        }
    };
    SqlFragment {
        joins,
        sql,
        params: compiler.params,
    }
}

struct Compiler {
    dialect: Dialect,
    now: Timestamp,
    next_param: usize,
    params: Vec<SqlParam>,
}

/// Compiled SQL, and whether it is already enclosed in parentheses. Operands of `NOT` are bracketed
/// unless they are, so the output never relies on the two databases' operator precedence.
struct Sql {
    text: String,
    parenthesised: bool,
}

impl Sql {
    fn atom(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            parenthesised: false,
        }
    }

    fn parenthesised(text: String) -> Sql {
        Sql {
            text: format!("({text})"),
            parenthesised: true,
        }
    }

    /// `cond`, preceded by `guard AND` when `needs_guard`.
    fn guarded(guard: String, cond: String, needs_guard: bool) -> Sql {
        if needs_guard {
            Sql::parenthesised(format!("{guard} AND {cond}"))
        } else {
            Sql::atom(cond)
        }
    }
}

const ALWAYS: &str = "1=1";
const NEVER: &str = "1=0";

impl Compiler {
    /// The join clause for a top-level conjunct that is a tag test or `group = x`, if it is one.
    fn join(&mut self, expr: &Expr, n: usize) -> Option<String> {
        let Expr::Predicate(predicate) = expr else {
            return None;
        };
        if !predicate.is_well_formed() {
            return None;
        }
        match &predicate.field {
            Field::Tag(key) => {
                let alias = format!("t{n}");
                let key = self.bind(SqlParam::Text(key.as_str().to_owned()));
                let mut join = format!(" JOIN device_tags {alias} ON {alias}.device_seq = d.seq AND {alias}.key = {key}");
                if predicate.op != Op::Exists {
                    join.push_str(" AND ");
                    join.push_str(&self.text_condition(&format!("{alias}.value"), predicate));
                }
                Some(join)
            }
            // `group IN (a, b)` could match two rows per device, so only `=` becomes a join.
            Field::Group if predicate.op == Op::Eq => {
                let alias = format!("g{n}");
                let group = self.bind_value(predicate.values.first());
                Some(format!(" JOIN group_members {alias} ON {alias}.device_seq = d.seq AND {alias}.group_name = {group}"))
            }
            _ => None,
        }
    }

    fn expr(&mut self, expr: &Expr) -> Sql {
        match expr {
            Expr::All => Sql::atom(ALWAYS),
            Expr::Or(operands) => self.junction(operands, " OR ", NEVER),
            Expr::And(operands) => self.junction(operands, " AND ", ALWAYS),
            Expr::Not(inner) => {
                let inner = self.expr(inner);
                if inner.parenthesised {
                    Sql::parenthesised(format!("NOT {}", inner.text))
                } else {
                    Sql::parenthesised(format!("NOT ({})", inner.text))
                }
            }
            Expr::Predicate(predicate) => self.predicate(predicate),
        }
    }

    fn junction(&mut self, operands: &[Expr], separator: &str, empty: &str) -> Sql {
        if operands.is_empty() {
            return Sql::atom(empty);
        }
        let parts: Vec<String> = operands
            .iter()
            .map(|operand| self.expr(operand).text)
            .collect();
        Sql::parenthesised(parts.join(separator))
    }

    fn predicate(&mut self, predicate: &Predicate) -> Sql {
        if !predicate.is_well_formed() {
            return Sql::atom(NEVER);
        }
        match &predicate.field {
            // Always present: no guards.
            Field::Id => self.text_column("d.id", false, predicate),
            Field::DeviceType => self.text_column("d.device_type", false, predicate),
            Field::Status => self.text_column("d.status", false, predicate),
            Field::Connectivity => self.text_column("d.connectivity", false, predicate),
            // '' means missing.
            Field::HwId => self.text_column("d.hw_id", true, predicate),
            Field::HwRev => self.text_column("d.hw_rev", true, predicate),
            Field::Site => self.text_column("d.site", true, predicate),
            Field::Region => self.text_column("d.region", true, predicate),
            Field::Tag(key) => {
                // A missing tag has no row, so the subquery needs no guard.
                let key = self.bind(SqlParam::Text(key.as_str().to_owned()));
                let mut sql =
                    format!("d.seq IN (SELECT t.device_seq FROM device_tags t WHERE t.key = {key}");
                if predicate.op != Op::Exists {
                    sql.push_str(" AND ");
                    sql.push_str(&self.text_condition("t.value", predicate));
                }
                sql.push(')');
                Sql::atom(sql)
            }
            Field::Firmware => self.firmware(predicate),
            Field::LastSeen => self.time_column("d.last_seen", true, predicate),
            Field::Created => self.time_column("d.created_at", false, predicate),
            Field::Updated => self.time_column("d.updated_at", false, predicate),
            Field::LinkScore => self.link_score(predicate),
            Field::Metric(name) => self.metric(name, predicate),
            Field::Group => {
                // Membership is never missing, so `!=` and `NOT IN` are plain complements.
                let cond = match predicate.op {
                    Op::In | Op::NotIn => {
                        self.list_condition("g.group_name", Op::In, &predicate.values)
                    }
                    _ => format!(
                        "g.group_name = {}",
                        self.bind_value(predicate.values.first())
                    ),
                };
                let negation = if matches!(predicate.op, Op::Ne | Op::NotIn) {
                    "NOT "
                } else {
                    ""
                };
                Sql::atom(format!(
                    "d.seq {negation}IN (SELECT g.device_seq FROM group_members g WHERE {cond})"
                ))
            }
        }
    }

    /// A text column; `optional` columns hold `''` when the attribute is missing.
    fn text_column(&mut self, column: &str, optional: bool, predicate: &Predicate) -> Sql {
        if predicate.op == Op::Exists {
            return Sql::atom(if optional {
                format!("{column} <> ''")
            } else {
                ALWAYS.to_owned()
            });
        }
        let cond = self.text_condition(column, predicate);
        let needs_guard = optional && empty_text_could_match(predicate);
        Sql::guarded(format!("{column} <> ''"), cond, needs_guard)
    }

    /// The comparison of a text column with the predicate's values, without any guard.
    fn text_condition(&mut self, column: &str, predicate: &Predicate) -> String {
        let values = &predicate.values;
        match predicate.op {
            Op::Glob | Op::NotGlob => {
                let pattern = match values.first() {
                    Some(Value::Text(pattern)) => pattern.as_str(),
                    _ => "",
                };
                self.glob(column, pattern, predicate.op == Op::NotGlob)
            }
            Op::In | Op::NotIn => self.list_condition(column, predicate.op, values),
            op => {
                let operator = match op {
                    Op::Ne => "<>",
                    _ => "=",
                };
                let param = self.bind_value(values.first());
                format!("{column} {operator} {param}")
            }
        }
    }

    /// `column IN (…)` or, for [`Op::NotIn`], `column NOT IN (…)`.
    fn list_condition(&mut self, column: &str, op: Op, values: &[Value]) -> String {
        let negation = if op == Op::NotIn { "NOT " } else { "" };
        let placeholders: Vec<String> = values
            .iter()
            .map(|value| self.bind_value(Some(value)))
            .collect();
        format!("{column} {negation}IN ({})", placeholders.join(", "))
    }

    fn glob(&mut self, column: &str, pattern: &str, negated: bool) -> String {
        let negation = if negated { "NOT " } else { "" };
        match self.dialect {
            Dialect::Sqlite => {
                // SQLite's GLOB has `[...]` classes, which the query language does not; `[[]` is a
                // class holding just `[`, i.e. a literal bracket. `*` and `?` mean the same in both.
                let param = self.bind(SqlParam::Text(pattern.replace('[', "[[]")));
                format!("{column} {negation}GLOB {param}")
            }
            Dialect::Postgres => {
                let param = self.bind(SqlParam::Text(like_pattern(pattern)));
                format!("{column} {negation}LIKE {param} ESCAPE '\\'")
            }
        }
    }

    fn firmware(&mut self, predicate: &Predicate) -> Sql {
        let op = predicate.op;
        if matches!(op, Op::Glob | Op::NotGlob | Op::Exists) {
            // Globs and presence look at the version text, which is '' when missing.
            return self.text_column("d.firmware", true, predicate);
        }
        // A missing version has an empty key, which sorts below every real key, so only operators
        // that hold for a smaller or merely different key need a guard. The guard's empty key is a
        // parameter because BLOB and bytea literals are spelled differently. It is bound first so
        // placeholders number left to right.
        let guard = match op {
            Op::Ne | Op::Lt | Op::Le | Op::NotIn => Some(self.bind(SqlParam::Bytes(Vec::new()))),
            _ => None,
        };
        let cond = match op {
            Op::In | Op::NotIn => self.list_condition("d.fw_key", op, &predicate.values),
            _ => {
                let operator = match op {
                    Op::Ne => "<>",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                    _ => "=",
                };
                let key = self.bind_value(predicate.values.first());
                format!("d.fw_key {operator} {key}")
            }
        };
        match guard {
            Some(empty) => Sql::guarded(format!("d.fw_key > {empty}"), cond, true),
            None => Sql::atom(cond),
        }
    }

    /// A millisecond time column; with `never_seen_zero`, 0 means missing.
    fn time_column(&mut self, column: &str, never_seen_zero: bool, predicate: &Predicate) -> Sql {
        if predicate.op == Op::Exists {
            return Sql::atom(if never_seen_zero {
                format!("{column} > 0")
            } else {
                ALWAYS.to_owned()
            });
        }
        let at = match predicate.values.first() {
            Some(Value::Time(time)) => time.resolve(self.now).as_millis(),
            _ => 0,
        };
        let operator = match predicate.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            _ => ">=",
        };
        // The guard is needed exactly when the comparison would hold for the sentinel 0 (or a value
        // below it): always for `<`/`<=`, and for `>`/`>=` only with a bound at or before the epoch.
        let admits_sentinel = match predicate.op {
            Op::Lt | Op::Le => true,
            Op::Gt => at < 0,
            _ => at <= 0,
        };
        let param = self.bind(SqlParam::Int(at));
        Sql::guarded(
            format!("{column} > 0"),
            format!("{column} {operator} {param}"),
            never_seen_zero && admits_sentinel,
        )
    }

    /// `d.link_score`, which is -1 before the first heartbeat. Query values are 0–100, so only
    /// operators that hold for a smaller or merely different value need the presence guard.
    fn link_score(&mut self, predicate: &Predicate) -> Sql {
        // The integer column is compared with integers, so PostgreSQL infers the placeholders as
        // the column's own type (smallint) and the values bind without conversion.
        let cond = self.number_condition("d.link_score", predicate, |number| {
            SqlParam::Int(number.get() as i64)
        });
        let needs_guard = matches!(predicate.op, Op::Ne | Op::Lt | Op::Le | Op::NotIn);
        Sql::guarded("d.link_score >= 0".to_owned(), cond, needs_guard)
    }

    /// One metric of the latest heartbeat, extracted from the JSON in `device_health.metrics`. The
    /// metric name is a parameter like every other value, and missing values need no guard: a
    /// device without a row, or a row without the key, yields NULL, which no comparison accepts.
    fn metric(&mut self, name: &MetricName, predicate: &Predicate) -> Sql {
        let reading = match self.dialect {
            Dialect::Sqlite => {
                // Quoting the key keeps the path a single label whatever the name holds.
                let path = self.bind(SqlParam::Text(format!("$.\"{name}\"")));
                format!("json_extract(h.metrics, {path})")
            }
            Dialect::Postgres => {
                let key = self.bind(SqlParam::Text(name.as_str().to_owned()));
                format!("(h.metrics::jsonb ->> {key})::double precision")
            }
        };
        let cond =
            self.number_condition(&reading, predicate, |number| SqlParam::Float(number.get()));
        Sql::atom(format!(
            "EXISTS (SELECT 1 FROM device_health h WHERE h.device_seq = d.seq AND {cond})"
        ))
    }

    /// The comparison of a numeric SQL expression with the predicate's values, each bound as
    /// `param` makes it, without any guard.
    fn number_condition(
        &mut self,
        expr: &str,
        predicate: &Predicate,
        param: fn(Number) -> SqlParam,
    ) -> String {
        let placeholders: Vec<String> = predicate
            .values
            .iter()
            .filter_map(|value| match value {
                Value::Number(number) => Some(self.bind(param(*number))),
                _ => None,
            })
            .collect();
        match predicate.op {
            Op::In => format!("{expr} IN ({})", placeholders.join(", ")),
            Op::NotIn => format!("{expr} NOT IN ({})", placeholders.join(", ")),
            op => {
                let operator = match op {
                    Op::Ne => "<>",
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                    _ => "=",
                };
                // A comparison has exactly one value.
                format!("{expr} {operator} {}", placeholders.concat())
            }
        }
    }

    /// Binds a query value as the parameter type its column needs: text for text and names, the sort
    /// key for versions, milliseconds for times (resolved against `now`). Only hand-built,
    /// ill-formed predicates could lack the value, and those never get here.
    fn bind_value(&mut self, value: Option<&Value>) -> String {
        let param = match value {
            Some(Value::Text(text)) => SqlParam::Text(text.clone()),
            Some(Value::Status(status)) => SqlParam::Text(status.as_str().to_owned()),
            Some(Value::Version(version)) => SqlParam::Bytes(version.sort_key()),
            Some(Value::Time(time)) => SqlParam::Int(time.resolve(self.now).as_millis()),
            Some(Value::Group(group)) => SqlParam::Text(group.as_str().to_owned()),
            Some(Value::Connectivity(c)) => SqlParam::Text(c.as_str().to_owned()),
            Some(Value::Number(number)) => SqlParam::Float(number.get()),
            None => SqlParam::Text(String::new()),
        };
        self.bind(param)
    }

    /// Appends a parameter and returns its placeholder.
    fn bind(&mut self, param: SqlParam) -> String {
        let number = self.next_param;
        self.next_param += 1;
        self.params.push(param);
        match self.dialect {
            Dialect::Sqlite => format!("?{number}"),
            Dialect::Postgres => format!("${number}"),
        }
    }
}

/// Whether a text comparison could be true for `''`, the value a missing optional attribute has in
/// the table, so that it needs a presence guard. Negative comparisons always could.
fn empty_text_could_match(predicate: &Predicate) -> bool {
    let is_empty = |value: &Value| matches!(value, Value::Text(text) if text.is_empty());
    match predicate.op {
        Op::Ne | Op::NotGlob | Op::NotIn => true,
        Op::Eq | Op::In => predicate.values.iter().any(is_empty),
        Op::Glob => {
            matches!(predicate.values.first(), Some(Value::Text(pattern)) if glob_match(pattern, ""))
        }
        _ => false,
    }
}

/// Translates a query glob into a PostgreSQL `LIKE` pattern with `\` as the escape character.
fn like_pattern(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 8);
    for c in glob.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Query;
    use crate::version::Version;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    fn text(value: &str) -> SqlParam {
        SqlParam::Text(value.to_owned())
    }

    fn key(version: &str) -> SqlParam {
        SqlParam::Bytes(Version::parse(version).unwrap().sort_key())
    }

    fn float(value: f64) -> SqlParam {
        SqlParam::Float(value)
    }

    fn empty_key() -> SqlParam {
        SqlParam::Bytes(Vec::new())
    }

    fn compile(text: &str, dialect: Dialect) -> SqlFragment {
        Query::parse(text)
            .unwrap_or_else(|err| panic!("{text}: {err}"))
            .to_sql(dialect, NOW, 1)
    }

    /// The `WHERE` form of a query, as it is compiled under `OR` or `NOT` (no joins).
    fn compile_where(text: &str, dialect: Dialect) -> SqlFragment {
        let query = Query::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
        let mut compiler = Compiler {
            dialect,
            now: NOW,
            next_param: 1,
            params: Vec::new(),
        };
        let sql = compiler.expr(query.expr()).text;
        SqlFragment {
            joins: String::new(),
            sql,
            params: compiler.params,
        }
    }

    #[test]
    fn predicates_compile_to_guarded_parameterised_sql() {
        use Dialect::{Postgres, Sqlite};
        let tag_subquery = "d.seq IN (SELECT t.device_seq FROM device_tags t WHERE t.key = ";
        let group_subquery = "IN (SELECT g.device_seq FROM group_members g WHERE g.group_name";
        let health_subquery =
            "EXISTS (SELECT 1 FROM device_health h WHERE h.device_seq = d.seq AND ";
        let cases: Vec<(&str, Dialect, String, Vec<SqlParam>)> = vec![
            ("", Sqlite, "1=1".into(), vec![]),
            (
                "tags.env = prod",
                Sqlite,
                format!("{tag_subquery}?1 AND t.value = ?2)"),
                vec![text("env"), text("prod")],
            ),
            (
                "tags.env != prod",
                Postgres,
                format!("{tag_subquery}$1 AND t.value <> $2)"),
                vec![text("env"), text("prod")],
            ),
            (
                "tags.env EXISTS",
                Sqlite,
                format!("{tag_subquery}?1)"),
                vec![text("env")],
            ),
            (
                "tags.env IN (a, b)",
                Postgres,
                format!("{tag_subquery}$1 AND t.value IN ($2, $3))"),
                vec![text("env"), text("a"), text("b")],
            ),
            (
                "tags.env NOT IN (a)",
                Sqlite,
                format!("{tag_subquery}?1 AND t.value NOT IN (?2))"),
                vec![text("env"), text("a")],
            ),
            (
                "tags.env ~ 'p*_[x]?'",
                Sqlite,
                format!("{tag_subquery}?1 AND t.value GLOB ?2)"),
                vec![text("env"), text("p*_[[]x]?")],
            ),
            (
                r"tags.env !~ 'p*_%\\?'",
                Postgres,
                format!(r"{tag_subquery}$1 AND t.value NOT LIKE $2 ESCAPE '\')"),
                vec![text("env"), text(r"p%\_\%\\_")],
            ),
            ("site = x", Sqlite, "d.site = ?1".into(), vec![text("x")]),
            (
                "site = ''",
                Sqlite,
                "(d.site <> '' AND d.site = ?1)".into(),
                vec![text("")],
            ),
            (
                "site != x",
                Sqlite,
                "(d.site <> '' AND d.site <> ?1)".into(),
                vec![text("x")],
            ),
            (
                "site ~ berlin-*",
                Postgres,
                r"d.site LIKE $1 ESCAPE '\'".into(),
                vec![text("berlin-%")],
            ),
            (
                "site ~ *",
                Sqlite,
                "(d.site <> '' AND d.site GLOB ?1)".into(),
                vec![text("*")],
            ),
            (
                "site !~ b*",
                Sqlite,
                "(d.site <> '' AND d.site NOT GLOB ?1)".into(),
                vec![text("b*")],
            ),
            (
                "region IN (eu, us)",
                Postgres,
                "d.region IN ($1, $2)".into(),
                vec![text("eu"), text("us")],
            ),
            (
                "region IN (eu, '')",
                Postgres,
                "(d.region <> '' AND d.region IN ($1, $2))".into(),
                vec![text("eu"), text("")],
            ),
            (
                "hw_rev NOT IN (rev1)",
                Sqlite,
                "(d.hw_rev <> '' AND d.hw_rev NOT IN (?1))".into(),
                vec![text("rev1")],
            ),
            ("serial EXISTS", Sqlite, "d.hw_id <> ''".into(), vec![]),
            ("id != x", Postgres, "d.id <> $1".into(), vec![text("x")]),
            ("type EXISTS", Postgres, "1=1".into(), vec![]),
            (
                "status IN (active, error)",
                Postgres,
                "d.status IN ($1, $2)".into(),
                vec![text("active"), text("error")],
            ),
            (
                "status != active",
                Sqlite,
                "d.status <> ?1".into(),
                vec![text("active")],
            ),
            (
                "firmware = 2.3",
                Sqlite,
                "d.fw_key = ?1".into(),
                vec![key("2.3.0")],
            ),
            (
                "firmware != 2.3.0",
                Sqlite,
                "(d.fw_key > ?1 AND d.fw_key <> ?2)".into(),
                vec![empty_key(), key("2.3.0")],
            ),
            (
                "firmware < 2.3.0",
                Sqlite,
                "(d.fw_key > ?1 AND d.fw_key < ?2)".into(),
                vec![empty_key(), key("2.3.0")],
            ),
            (
                "firmware <= 2.3.0",
                Postgres,
                "(d.fw_key > $1 AND d.fw_key <= $2)".into(),
                vec![empty_key(), key("2.3.0")],
            ),
            (
                "firmware > 2.3.0",
                Postgres,
                "d.fw_key > $1".into(),
                vec![key("2.3.0")],
            ),
            (
                "firmware >= 2.3.0-rc.1",
                Sqlite,
                "d.fw_key >= ?1".into(),
                vec![key("2.3.0-rc.1")],
            ),
            (
                "firmware IN (1.0.0, 2.0.0)",
                Sqlite,
                "d.fw_key IN (?1, ?2)".into(),
                vec![key("1.0.0"), key("2.0.0")],
            ),
            (
                "firmware NOT IN (1.0.0, 2.0.0)",
                Postgres,
                "(d.fw_key > $1 AND d.fw_key NOT IN ($2, $3))".into(),
                vec![empty_key(), key("1.0.0"), key("2.0.0")],
            ),
            (
                "firmware ~ '2.*'",
                Sqlite,
                "d.firmware GLOB ?1".into(),
                vec![text("2.*")],
            ),
            (
                "firmware !~ '2.*'",
                Postgres,
                r"(d.firmware <> '' AND d.firmware NOT LIKE $1 ESCAPE '\')".into(),
                vec![text("2.%")],
            ),
            ("firmware EXISTS", Sqlite, "d.firmware <> ''".into(), vec![]),
            (
                "last_seen < now-10m",
                Sqlite,
                "(d.last_seen > 0 AND d.last_seen < ?1)".into(),
                vec![SqlParam::Int(NOW.as_millis() - 600_000)],
            ),
            (
                "last_seen <= now",
                Postgres,
                "(d.last_seen > 0 AND d.last_seen <= $1)".into(),
                vec![SqlParam::Int(NOW.as_millis())],
            ),
            (
                "last_seen > now-10m",
                Sqlite,
                "d.last_seen > ?1".into(),
                vec![SqlParam::Int(NOW.as_millis() - 600_000)],
            ),
            (
                "last_seen >= 1970-01-01T00:00:00Z",
                Sqlite,
                "(d.last_seen > 0 AND d.last_seen >= ?1)".into(),
                vec![SqlParam::Int(0)],
            ),
            (
                "last_seen EXISTS",
                Postgres,
                "d.last_seen > 0".into(),
                vec![],
            ),
            (
                "created > 2026-11-23T10:00:00Z",
                Postgres,
                "d.created_at > $1".into(),
                vec![SqlParam::Int(1_795_428_000_000)],
            ),
            (
                "updated < now+1h",
                Sqlite,
                "d.updated_at < ?1".into(),
                vec![SqlParam::Int(NOW.as_millis() + 3_600_000)],
            ),
            (
                "group = canary",
                Sqlite,
                format!("d.seq {group_subquery} = ?1)"),
                vec![text("canary")],
            ),
            (
                "group != canary",
                Postgres,
                format!("d.seq NOT {group_subquery} = $1)"),
                vec![text("canary")],
            ),
            (
                "group IN (a, b)",
                Sqlite,
                format!("d.seq {group_subquery} IN (?1, ?2))"),
                vec![text("a"), text("b")],
            ),
            (
                "group NOT IN (a, b)",
                Postgres,
                format!("d.seq NOT {group_subquery} IN ($1, $2))"),
                vec![text("a"), text("b")],
            ),
            (
                "connectivity IN (online, degraded)",
                Postgres,
                "d.connectivity IN ($1, $2)".into(),
                vec![text("online"), text("degraded")],
            ),
            (
                "battery_v < 3.0",
                Sqlite,
                format!("{health_subquery}json_extract(h.metrics, ?1) < ?2)"),
                vec![text(r#"$."battery_v""#), float(3.0)],
            ),
            (
                "battery_v < 3.0",
                Postgres,
                format!("{health_subquery}(h.metrics::jsonb ->> $1)::double precision < $2)"),
                vec![text("battery_v"), float(3.0)],
            ),
            (
                "rssi_dbm != -100",
                Sqlite,
                format!("{health_subquery}json_extract(h.metrics, ?1) <> ?2)"),
                vec![text(r#"$."rssi_dbm""#), float(-100.0)],
            ),
            (
                "metrics.custom_x >= 2.5",
                Postgres,
                format!("{health_subquery}(h.metrics::jsonb ->> $1)::double precision >= $2)"),
                vec![text("custom_x"), float(2.5)],
            ),
            (
                "metrics.custom_x IN (1, 2.5)",
                Sqlite,
                format!("{health_subquery}json_extract(h.metrics, ?1) IN (?2, ?3))"),
                vec![text(r#"$."custom_x""#), float(1.0), float(2.5)],
            ),
            (
                "temp_c NOT IN (-5)",
                Postgres,
                format!(
                    "{health_subquery}(h.metrics::jsonb ->> $1)::double precision NOT IN ($2))"
                ),
                vec![text("temp_c"), float(-5.0)],
            ),
            (
                "NOT battery_v <= 3",
                Sqlite,
                format!("(NOT ({health_subquery}json_extract(h.metrics, ?1) <= ?2)))"),
                vec![text(r#"$."battery_v""#), float(3.0)],
            ),
            (
                "link_score = 48",
                Sqlite,
                "d.link_score = ?1".into(),
                vec![SqlParam::Int(48)],
            ),
            (
                "link_score > 50",
                Postgres,
                "d.link_score > $1".into(),
                vec![SqlParam::Int(50)],
            ),
            (
                "link_score >= 0",
                Sqlite,
                "d.link_score >= ?1".into(),
                vec![SqlParam::Int(0)],
            ),
            (
                "link_score IN (0, 100)",
                Postgres,
                "d.link_score IN ($1, $2)".into(),
                vec![SqlParam::Int(0), SqlParam::Int(100)],
            ),
            (
                "link_score < 50",
                Sqlite,
                "(d.link_score >= 0 AND d.link_score < ?1)".into(),
                vec![SqlParam::Int(50)],
            ),
            (
                "link_score <= 10",
                Postgres,
                "(d.link_score >= 0 AND d.link_score <= $1)".into(),
                vec![SqlParam::Int(10)],
            ),
            (
                "link_score != 100",
                Sqlite,
                "(d.link_score >= 0 AND d.link_score <> ?1)".into(),
                vec![SqlParam::Int(100)],
            ),
            (
                "link_score NOT IN (0)",
                Postgres,
                "(d.link_score >= 0 AND d.link_score NOT IN ($1))".into(),
                vec![SqlParam::Int(0)],
            ),
            (
                "NOT site = x",
                Sqlite,
                "(NOT (d.site = ?1))".into(),
                vec![text("x")],
            ),
            (
                "NOT site != x",
                Sqlite,
                "(NOT (d.site <> '' AND d.site <> ?1))".into(),
                vec![text("x")],
            ),
            (
                "site = a OR region = b AND NOT id = c",
                Postgres,
                "(d.site = $1 OR (d.region = $2 AND (NOT (d.id = $3))))".into(),
                vec![text("a"), text("b"), text("c")],
            ),
        ];
        for (query, dialect, sql, params) in cases {
            let fragment = compile_where(query, dialect);
            assert_eq!(fragment.sql, sql, "{query} ({dialect:?})");
            assert_eq!(fragment.params, params, "{query} ({dialect:?})");
        }
    }

    #[test]
    fn the_documented_example_compiles_for_both_dialects() {
        let query = r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND last_seen < now-10m AND NOT site ~ "berlin-*""#;
        let params = vec![
            text("env"),
            text("prod"),
            empty_key(),
            key("2.3.0"),
            text("rev2"),
            text("rev2.1"),
            SqlParam::Int(NOW.as_millis() - 600_000),
        ];
        let sqlite = compile(query, Dialect::Sqlite);
        assert_eq!(
            sqlite.joins,
            " JOIN device_tags t1 ON t1.device_seq = d.seq AND t1.key = ?1 AND t1.value = ?2"
        );
        assert_eq!(
            sqlite.sql,
            "((d.fw_key > ?3 AND d.fw_key < ?4) AND d.hw_rev IN (?5, ?6) \
             AND (d.last_seen > 0 AND d.last_seen < ?7) AND (NOT (d.site GLOB ?8)))"
        );
        assert_eq!(
            sqlite.params,
            [params.clone(), vec![text("berlin-*")]].concat()
        );
        let postgres = compile(query, Dialect::Postgres);
        assert_eq!(
            postgres.joins,
            " JOIN device_tags t1 ON t1.device_seq = d.seq AND t1.key = $1 AND t1.value = $2"
        );
        assert_eq!(
            postgres.sql,
            "((d.fw_key > $3 AND d.fw_key < $4) AND d.hw_rev IN ($5, $6) \
             AND (d.last_seen > 0 AND d.last_seen < $7) AND (NOT (d.site LIKE $8 ESCAPE '\\')))"
        );
        assert_eq!(postgres.params, [params, vec![text("berlin-%")]].concat());
    }

    #[test]
    fn top_level_tag_tests_and_group_equality_become_joins() {
        let fragment = compile(
            "tags.env = prod AND group = lab AND tags.ring EXISTS AND group IN (a, b)",
            Dialect::Postgres,
        );
        assert_eq!(
            fragment.joins,
            " JOIN device_tags t1 ON t1.device_seq = d.seq AND t1.key = $1 AND t1.value = $2\
             \x20JOIN group_members g2 ON g2.device_seq = d.seq AND g2.group_name = $3\
             \x20JOIN device_tags t3 ON t3.device_seq = d.seq AND t3.key = $4"
        );
        assert_eq!(
            fragment.sql,
            "d.seq IN (SELECT g.device_seq FROM group_members g WHERE g.group_name IN ($5, $6))"
        );
        let single = compile("tags.env != prod", Dialect::Sqlite);
        assert_eq!(
            single.joins,
            " JOIN device_tags t1 ON t1.device_seq = d.seq AND t1.key = ?1 AND t1.value <> ?2"
        );
        assert_eq!(single.sql, "1=1");
        let nested = compile("tags.env = prod OR site = x", Dialect::Sqlite);
        assert_eq!(nested.joins, "");
        assert!(
            nested
                .sql
                .starts_with("(d.seq IN (SELECT t.device_seq FROM device_tags t"),
            "{}",
            nested.sql
        );
    }

    #[test]
    fn metric_predicates_number_their_placeholders_after_the_joins() {
        let query = "tags.env = prod AND battery_v < 3.0 AND link_score < 50";
        let sqlite = compile(query, Dialect::Sqlite);
        assert_eq!(
            sqlite.sql,
            "(EXISTS (SELECT 1 FROM device_health h WHERE h.device_seq = d.seq \
             AND json_extract(h.metrics, ?3) < ?4) AND (d.link_score >= 0 AND d.link_score < ?5))"
        );
        assert_eq!(
            sqlite.params,
            vec![
                text("env"),
                text("prod"),
                text(r#"$."battery_v""#),
                float(3.0),
                SqlParam::Int(50)
            ]
        );
        let postgres = compile(query, Dialect::Postgres);
        assert_eq!(
            postgres.sql,
            "(EXISTS (SELECT 1 FROM device_health h WHERE h.device_seq = d.seq \
             AND (h.metrics::jsonb ->> $3)::double precision < $4) \
             AND (d.link_score >= 0 AND d.link_score < $5))"
        );
        assert_eq!(postgres.params[2], text("battery_v"));
    }

    #[test]
    fn ill_formed_numeric_predicates_compile_to_false() {
        // The parser rejects these; hand-built trees must still agree with evaluation.
        let number = |value: f64| Value::Number(Number::new(value).unwrap());
        let cases = [
            Predicate {
                field: Field::LinkScore,
                op: Op::Lt,
                values: vec![number(50.5)],
            },
            Predicate {
                field: Field::LinkScore,
                op: Op::Gt,
                values: vec![number(-1.0)],
            },
            Predicate {
                field: Field::Metric(crate::health::MetricName::parse("battery_v").unwrap()),
                op: Op::Glob,
                values: vec![Value::Text("3*".into())],
            },
        ];
        for predicate in cases {
            let expr = Expr::Predicate(predicate);
            let fragment = super::compile(&expr, Dialect::Sqlite, NOW, 1);
            assert_eq!(
                (fragment.sql.as_str(), fragment.params.len()),
                (NEVER, 0),
                "{expr}"
            );
        }
    }

    #[test]
    fn placeholders_start_at_the_requested_number() {
        let query = Query::parse("status = active AND site = x").unwrap();
        let fragment = query.to_sql(Dialect::Postgres, NOW, 5);
        assert_eq!(fragment.sql, "(d.status = $5 AND d.site = $6)");
        assert_eq!(
            query.to_sql(Dialect::Sqlite, NOW, 3).sql,
            "(d.status = ?3 AND d.site = ?4)"
        );
    }

    #[test]
    fn user_text_never_appears_in_the_sql() {
        let query =
            Query::parse(r#"site = "x' OR 1=1 --" OR tags.env ~ "'; DROP TABLE devices; --""#)
                .unwrap();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let fragment = query.to_sql(dialect, NOW, 1);
            assert!(
                !fragment.sql.contains("DROP") && !fragment.sql.contains("1=1 --"),
                "{}",
                fragment.sql
            );
        }
    }
}
