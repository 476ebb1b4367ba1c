//! Recursive-descent parser from query text to [`Expr`], with validation and resource limits.
//!
//! Grammar (keywords case-insensitive; precedence NOT > AND > OR):
//!
//! ```text
//! query     := or | ""
//! or        := and ("OR" and)*
//! and       := not ("AND" not)*
//! not       := "NOT" not | "(" or ")" | predicate
//! predicate := field op value | field ["NOT"] "IN" "(" value ("," value)* ")" | field "EXISTS"
//! number    := ["-"] digit+ ["." digit+]      (the value of a metric or link_score)
//! ```
//!
//! Values are validated against their field while parsing, so every error carries the column of the
//! offending token and a typed tree never needs re-checking. Query text comes from API callers and is
//! stored in dynamic groups, so the parser bounds its input size, nesting depth and list lengths: a
//! hostile query gets an error, never a stack overflow or an unbounded allocation.

use crate::device::DeviceStatus;
use crate::ids::GroupName;
use crate::query::ast::{
    truncate, Expr, Field, FieldKind, Number, Op, Predicate, TimeValue, Value,
};
use crate::query::lexer::{is_keyword, Lexer, Token, TokenKind};
use crate::query::QueryError;
use crate::time::{Duration, Timestamp};
use crate::version::Version;

/// Longest accepted query text, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Deepest accepted nesting of parentheses and `NOT`s.
pub const MAX_DEPTH: usize = 64;
/// Most values accepted in one `IN` list.
pub const MAX_IN_VALUES: usize = 10_000;

/// The resource limits a parse enforces; a parameter so tests can exercise each limit on its own.
/// (With the real limits a 10,000-value list cannot fit in 16 KiB, but the list limit stays as a
/// separate guard in case the size limit is ever raised.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_in_values: usize,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        max_bytes: MAX_QUERY_BYTES,
        max_depth: MAX_DEPTH,
        max_in_values: MAX_IN_VALUES,
    };
}

/// Parses query text; empty or whitespace-only text is [`Expr::All`].
pub(crate) fn parse(text: &str) -> Result<Expr, QueryError> {
    parse_with_limits(text, Limits::DEFAULT)
}

pub(crate) fn parse_with_limits(text: &str, limits: Limits) -> Result<Expr, QueryError> {
    if text.len() > limits.max_bytes {
        let mut boundary = limits.max_bytes;
        while !text.is_char_boundary(boundary) {
            boundary -= 1;
        }
        return Err(QueryError::new(
            text[..boundary].chars().count() + 1,
            format!(
                "query is too long ({} bytes; at most {})",
                text.len(),
                limits.max_bytes
            ),
        ));
    }
    if text.trim().is_empty() {
        return Ok(Expr::All);
    }
    let mut parser = Parser::new(text, limits)?;
    let expr = parser.or()?;
    match parser.current.kind {
        TokenKind::End => Ok(expr),
        _ => Err(parser.unexpected("expected AND, OR or end of query")),
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    /// The lookahead token.
    current: Token,
    /// How many parentheses and `NOT`s enclose the current position.
    depth: usize,
    limits: Limits,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, limits: Limits) -> Result<Parser<'a>, QueryError> {
        let mut lexer = Lexer::new(text);
        let current = lexer.next_token()?;
        Ok(Parser {
            lexer,
            current,
            depth: 0,
            limits,
        })
    }

    /// Moves past the current token and returns it.
    fn advance(&mut self) -> Result<Token, QueryError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.current, next))
    }

    /// An error at the current token: "`expected`, found <token>".
    fn unexpected(&self, expected: &str) -> QueryError {
        QueryError::new(
            self.current.column,
            format!("{expected}, found {}", self.current.kind.describe()),
        )
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut operands = vec![self.and()?];
        while self.current.kind.is_keyword("OR") {
            self.advance()?;
            operands.push(self.and()?);
        }
        Ok(flatten(operands, false))
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut operands = vec![self.not()?];
        while self.current.kind.is_keyword("AND") {
            self.advance()?;
            operands.push(self.not()?);
        }
        Ok(flatten(operands, true))
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        match &self.current.kind {
            kind if kind.is_keyword("NOT") => {
                self.enter()?;
                self.advance()?;
                let inner = self.not()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            TokenKind::LParen => {
                self.enter()?;
                self.advance()?;
                let inner = self.or()?;
                if self.current.kind != TokenKind::RParen {
                    return Err(self.unexpected("expected AND, OR or ')'"));
                }
                self.advance()?;
                self.depth -= 1;
                Ok(inner)
            }
            TokenKind::Word(word) if !is_keyword(word) => {
                let name = word.clone();
                self.predicate(name)
            }
            _ => Err(self.unexpected("expected a field name, NOT or '('")),
        }
    }

    /// Counts one more level of nesting at the current token, failing past the depth limit.
    fn enter(&mut self) -> Result<(), QueryError> {
        if self.depth == self.limits.max_depth {
            return Err(QueryError::new(
                self.current.column,
                format!(
                    "query nests too deeply (at most {} levels of parentheses and NOT)",
                    self.limits.max_depth
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    /// Parses a predicate whose field token, the word `name`, is the current token.
    fn predicate(&mut self, name: String) -> Result<Expr, QueryError> {
        let field_token = self.advance()?;
        let field = Field::from_name(&name).map_err(|message| {
            // Point tag key and metric name errors at the key or name rather than at the prefix.
            let lower = name.to_ascii_lowercase();
            let offset = ["tags.", "metrics."]
                .into_iter()
                .find(|prefix| lower.starts_with(prefix))
                .map_or(0, str::len);
            QueryError::new(field_token.column + offset, message)
        })?;

        let op_column = self.current.column;
        let op = match &self.current.kind {
            TokenKind::Op(op) => *op,
            kind if kind.is_keyword("IN") => Op::In,
            kind if kind.is_keyword("EXISTS") => Op::Exists,
            kind if kind.is_keyword("NOT") => {
                self.advance()?;
                if !self.current.kind.is_keyword("IN") {
                    return Err(self.unexpected("expected IN after NOT"));
                }
                Op::NotIn
            }
            _ => {
                let expected = format!(
                    "expected an operator after {field} ({})",
                    list_ops(field.allowed_ops(), "or")
                );
                return Err(self.unexpected(&expected));
            }
        };
        check_op_allowed(&field, op, op_column)?;
        self.advance()?;

        let values = match op {
            Op::Exists => Vec::new(),
            Op::In | Op::NotIn => self.value_list(&field, op)?,
            _ => vec![self.value(&field, op, &format!("after '{op}'"))?],
        };
        Ok(Expr::Predicate(Predicate { field, op, values }))
    }

    /// Parses `"(" value ("," value)* ")"` after `IN` or `NOT IN`.
    fn value_list(&mut self, field: &Field, op: Op) -> Result<Vec<Value>, QueryError> {
        if self.current.kind != TokenKind::LParen {
            return Err(self.unexpected(&format!("expected '(' after {op}")));
        }
        self.advance()?;
        if self.current.kind == TokenKind::RParen {
            return Err(self.unexpected(&format!("expected at least one value in the {op} list")));
        }
        let mut values = vec![self.value(field, op, &format!("in the {op} list"))?];
        loop {
            match self.current.kind {
                TokenKind::RParen => {
                    self.advance()?;
                    return Ok(values);
                }
                TokenKind::Comma => {
                    self.advance()?;
                    if values.len() == self.limits.max_in_values {
                        return Err(QueryError::new(
                            self.current.column,
                            format!(
                                "too many values in the {op} list (at most {})",
                                self.limits.max_in_values
                            ),
                        ));
                    }
                    values.push(self.value(field, op, "after ','")?);
                }
                _ => return Err(self.unexpected(&format!("expected ',' or ')' in the {op} list"))),
            }
        }
    }

    /// Parses one value for `field` and `op`; `place` says where it was expected, for errors.
    fn value(&mut self, field: &Field, op: Op, place: &str) -> Result<Value, QueryError> {
        let text = match &self.current.kind {
            TokenKind::Word(word) if is_keyword(word) => {
                let found = self.current.kind.describe();
                return Err(QueryError::new(
                    self.current.column,
                    format!("expected a value {place}, found {found} (quote it to use it as text: \"{word}\")"),
                ));
            }
            TokenKind::Word(text) | TokenKind::Str(text) => text.clone(),
            _ => return Err(self.unexpected(&format!("expected a value {place}"))),
        };
        let column = self.current.column;
        let value =
            typed_value(field, op, &text).map_err(|message| QueryError::new(column, message))?;
        self.advance()?;
        Ok(value)
    }
}

/// Interprets the text of a value according to the field it is compared with. Quoting never changes
/// the meaning: `firmware = "2.3.0"` and `firmware = 2.3.0` are the same query.
fn typed_value(field: &Field, op: Op, text: &str) -> Result<Value, String> {
    if matches!(op, Op::Glob | Op::NotGlob) {
        return Ok(Value::Text(text.to_owned()));
    }
    match field.kind() {
        FieldKind::Text => Ok(Value::Text(text.to_owned())),
        FieldKind::Status => DeviceStatus::parse(text).map(Value::Status),
        FieldKind::Connectivity => {
            crate::device::Connectivity::parse(text).map(Value::Connectivity)
        }
        FieldKind::Number => parse_number(text).map(Value::Number).ok_or_else(|| {
            format!(
                "expected a number (such as 3, -100 or 2.5), found '{}'",
                truncate(text)
            )
        }),
        FieldKind::Score => parse_number(text)
            .filter(|number| number.is_score())
            .map(Value::Number)
            .ok_or_else(|| {
                format!(
                    "expected a whole number from 0 to 100, found '{}'",
                    truncate(text)
                )
            }),
        FieldKind::Version => Version::parse(text)
            .map(Value::Version)
            .map_err(|e| e.to_string()),
        FieldKind::Time => parse_time(text).map(Value::Time),
        FieldKind::Group => GroupName::parse(text)
            .map(Value::Group)
            .map_err(|e| e.to_string()),
    }
}

/// Parses `["-"] digit+ ["." digit+]`. The grammar is narrower than Rust's float syntax on purpose:
/// no `inf`, `NaN`, exponents or bare `.5`, so every accepted number reads the same to a person.
/// `None` also for digits too many to be finite.
fn parse_number(text: &str) -> Option<Number> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !(is_digits(whole) && is_digits(fraction)) {
        return None;
    }
    text.parse::<f64>().ok().and_then(Number::new)
}

/// Parses `now`, `now-<duration>`, `now+<duration>` or an RFC 3339 timestamp.
fn parse_time(text: &str) -> Result<TimeValue, String> {
    let lower = text.to_ascii_lowercase();
    if lower == "now" {
        return Ok(TimeValue::Relative(Duration::from_millis(0)));
    }
    if let Some(rest) = lower
        .strip_prefix("now-")
        .or_else(|| lower.strip_prefix("now+"))
    {
        // Parse the original spelling: duration units are lower case and should be reported as typed.
        let duration =
            Duration::parse(&text[text.len() - rest.len()..]).map_err(|e| e.to_string())?;
        let offset = if lower.starts_with("now-") {
            duration.neg()
        } else {
            duration
        };
        return Ok(TimeValue::Relative(offset));
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return Timestamp::parse_rfc3339(text)
            .map(TimeValue::Absolute)
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "expected a time (now, now-<duration>, now+<duration> or an RFC 3339 timestamp such as \
         2026-11-23T10:00:00Z), found '{}'",
        truncate(text)
    ))
}

/// Rejects an operator the field does not support, naming what it does support.
fn check_op_allowed(field: &Field, op: Op, column: usize) -> Result<(), QueryError> {
    let allowed = field.allowed_ops();
    if allowed.contains(&op) {
        return Ok(());
    }
    let hint = match field.kind() {
        FieldKind::Text if op.is_ordering() => {
            " (text has no order because databases sort it differently; use = or ~ instead)"
        }
        FieldKind::Time if !op.is_ordering() => {
            " (compare times with a range, e.g. last_seen > now-1h)"
        }
        _ => "",
    };
    Err(QueryError::new(
        column,
        format!(
            "{field} does not support {}; it supports {}{hint}",
            quoted(op),
            list_ops(allowed, "and")
        ),
    ))
}

/// Names an operator in a message: symbols quoted (`'<'`), keywords bare (`NOT IN`).
fn quoted(op: Op) -> String {
    if op.as_str().starts_with(|c: char| c.is_ascii_alphabetic()) {
        op.as_str().to_owned()
    } else {
        format!("'{op}'")
    }
}

/// Lists operators for a message: `=, !=, IN and NOT IN` (with `conjunction` "and").
fn list_ops(ops: &[Op], conjunction: &str) -> String {
    let names: Vec<&str> = ops.iter().map(|op| op.as_str()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} {conjunction} {last}", rest.join(", "))
        }
        _ => names.join(""),
    }
}

/// Builds an `And` (or an `Or`) from operands, splicing in operands of the same kind that came from
/// parentheses, so `(a AND b) AND c` and `a AND b AND c` are the same tree; one operand stands alone.
fn flatten(operands: Vec<Expr>, is_and: bool) -> Expr {
    if operands.len() == 1 {
        return operands.into_iter().next().unwrap_or(Expr::All);
    }
    let mut flat = Vec::with_capacity(operands.len());
    for operand in operands {
        match operand {
            Expr::And(inner) if is_and => flat.extend(inner),
            Expr::Or(inner) if !is_and => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if is_and {
        Expr::And(flat)
    } else {
        Expr::Or(flat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{MetricName, KNOWN_METRICS};
    use crate::ids::TagKey;

    /// Prints a tree with explicit structure, so tests can see precedence that canonical text hides.
    fn sexpr(expr: &Expr) -> String {
        let list = |name: &str, operands: &[Expr]| {
            let inner: Vec<String> = operands.iter().map(sexpr).collect();
            format!("({name} {})", inner.join(" "))
        };
        match expr {
            Expr::All => "all".to_owned(),
            Expr::Or(operands) => list("or", operands),
            Expr::And(operands) => list("and", operands),
            Expr::Not(inner) => format!("(not {})", sexpr(inner)),
            Expr::Predicate(predicate) => format!("[{predicate}]"),
        }
    }

    fn parse_ok(text: &str) -> Expr {
        parse(text).unwrap_or_else(|err| panic!("{text:?} failed: {err}"))
    }

    fn predicate(field: Field, op: Op, values: Vec<Value>) -> Expr {
        Expr::Predicate(Predicate { field, op, values })
    }

    fn text(value: &str) -> Value {
        Value::Text(value.to_owned())
    }

    #[test]
    fn the_documented_example_parses_into_typed_predicates() {
        let expr = parse_ok(
            r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND last_seen < now-10m AND NOT site ~ "berlin-*""#,
        );
        let expected = Expr::And(vec![
            predicate(
                Field::Tag(TagKey::parse("env").unwrap()),
                Op::Eq,
                vec![text("prod")],
            ),
            predicate(
                Field::Firmware,
                Op::Lt,
                vec![Value::Version(Version::parse("2.3.0").unwrap())],
            ),
            predicate(Field::HwRev, Op::In, vec![text("rev2"), text("rev2.1")]),
            predicate(
                Field::LastSeen,
                Op::Lt,
                vec![Value::Time(TimeValue::Relative(Duration::from_secs(-600)))],
            ),
            Expr::Not(Box::new(predicate(
                Field::Site,
                Op::Glob,
                vec![text("berlin-*")],
            ))),
        ]);
        assert_eq!(expr, expected);
    }

    #[test]
    fn not_binds_tighter_than_and_which_binds_tighter_than_or() {
        let cases = [
            (
                "site = a OR site = b AND site = c",
                "(or [site = a] (and [site = b] [site = c]))",
            ),
            (
                "site = a AND site = b OR site = c",
                "(or (and [site = a] [site = b]) [site = c])",
            ),
            (
                "(site = a OR site = b) AND site = c",
                "(and (or [site = a] [site = b]) [site = c])",
            ),
            (
                "NOT site = a AND site = b",
                "(and (not [site = a]) [site = b])",
            ),
            (
                "NOT (site = a AND site = b)",
                "(not (and [site = a] [site = b]))",
            ),
            ("NOT NOT site = a", "(not (not [site = a]))"),
            (
                "site = a or site = b or site = c",
                "(or [site = a] [site = b] [site = c])",
            ),
            (
                "(site = a AND site = b) AND (site = c AND site = d)",
                "(and [site = a] [site = b] [site = c] [site = d])",
            ),
            ("((site = a))", "[site = a]"),
            (
                "site NOT IN (a) OR site EXISTS",
                "(or [site NOT IN (a)] [site EXISTS])",
            ),
            ("", "all"),
            ("  \n\t ", "all"),
        ];
        for (text, tree) in cases {
            assert_eq!(sexpr(&parse_ok(text)), tree, "{text}");
        }
    }

    #[test]
    fn canonical_text_normalises_spelling_and_parses_back_to_the_same_tree() {
        let cases = [
            (
                r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND last_seen < now-10m AND NOT site ~ "berlin-*""#,
                "tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, rev2.1) AND last_seen < now-10m AND NOT site ~ berlin-*",
            ),
            ("TYPE=thermostat and Serial!='A 1'", r#"device_type = thermostat AND hw_id != "A 1""#),
            ("version >= v2.3 or version = 1.0.0-rc.1+b7", "firmware >= 2.3.0 OR firmware = 1.0.0-rc.1+b7"),
            ("created_at > 2026-11-23T11:00:00+01:00", "created > 2026-11-23T10:00:00.000Z"),
            ("updated_at <= NOW+90m AND last_seen > now-0s", "updated <= now+90m AND last_seen > now"),
            ("last_seen > now-1h30m", "last_seen > now-90m"),
            ("(site = a OR region = b) AND NOT (status = active OR status = error)", "(site = a OR region = b) AND NOT (status = active OR status = error)"),
            ("site = a OR (region = b AND id = c)", "site = a OR region = b AND id = c"),
            (r#"tags.note = "say \"hi\" \\ bye""#, r#"tags.note = "say \"hi\" \\ bye""#),
            (r#"tags.note = 'it\'s' AND tags.x = """#, r#"tags.note = "it's" AND tags.x = """#),
            (r#"tags.word IN ("and", 'Or', "not in")"#, r#"tags.word IN ("and", "Or", "not in")"#),
            ("group not in (Canary, beta-1) AND tags._internal exists", "group NOT IN (Canary, beta-1) AND tags._internal EXISTS"),
            ("firmware !~ '2.*' AND id ~ 'AA:BB:*'", "firmware !~ 2.* AND id ~ AA:BB:*"),
            ("Battery_V < 3.0 AND metrics.battery_v >= 2.50", "battery_v < 3 AND battery_v >= 2.5"),
            ("metrics.my_custom_gauge > 5 OR metrics.x1 = '7'", "metrics.my_custom_gauge > 5 OR metrics.x1 = 7"),
            ("rssi_dbm IN (-100, '-90.5') AND link_score NOT IN (0, 100)", "rssi_dbm IN (-100, -90.5) AND link_score NOT IN (0, 100)"),
            ("temp_c != -0 AND mem_free_bytes < 1000000000000", "temp_c != 0 AND mem_free_bytes < 1000000000000"),
            ("NOT (link_score >= 050 OR connectivity = online)", "NOT (link_score >= 50 OR connectivity = online)"),
        ];
        for (text, canonical) in cases {
            let expr = parse_ok(text);
            assert_eq!(expr.to_string(), canonical, "{text}");
            assert_eq!(parse_ok(canonical), expr, "re-parsing {canonical}");
        }
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let cases = [
            ("tags.env =", 11, "expected a value after '=', found end of query"),
            ("created<", 9, "expected a value after '<', found end of query"),
            ("site = a site = b", 10, "expected AND, OR or end of query, found 'site'"),
            ("site = b c", 10, "expected AND, OR or end of query, found 'c'"),
            ("site = a AND", 13, "expected a field name, NOT or '(', found end of query"),
            ("AND site = a", 1, "expected a field name, NOT or '(', found keyword AND"),
            ("(site = a", 10, "expected AND, OR or ')', found end of query"),
            ("site = a)", 9, "expected AND, OR or end of query, found ')'"),
            ("()", 2, "expected a field name, NOT or '(', found ')'"),
            ("site", 5, "expected an operator after site (=, !=, ~, !~, IN, NOT IN or EXISTS), found end of query"),
            ("site a", 6, "expected an operator after site (=, !=, ~, !~, IN, NOT IN or EXISTS), found 'a'"),
            ("site < b", 6, "site does not support '<'; it supports =, !=, ~, !~, IN, NOT IN and EXISTS (text has no order because databases sort it differently; use = or ~ instead)"),
            ("status ~ act*", 8, "status does not support '~'; it supports =, !=, IN and NOT IN"),
            ("status EXISTS", 8, "status does not support EXISTS; it supports =, !=, IN and NOT IN"),
            ("last_seen = now", 11, "last_seen does not support '='; it supports <, <=, >, >= and EXISTS (compare times with a range, e.g. last_seen > now-1h)"),
            ("group ~ a*", 7, "group does not support '~'; it supports =, !=, IN and NOT IN"),
            ("status = actve", 10, "unknown device status \"actve\" (expected one of pending, rejected, provisioning, active, inactive, error, decommissioned)"),
            ("firmware < 2.x", 12, "invalid version \"2.x\": MAJOR, MINOR and PATCH must be numbers without leading zeros"),
            ("last_seen < now-10", 13, "invalid duration \"10\": missing unit: use ms, s, m, h, d or w"),
            ("last_seen < yesterday", 13, "expected a time (now, now-<duration>, now+<duration> or an RFC 3339 timestamp such as 2026-11-23T10:00:00Z), found 'yesterday'"),
            ("group = 'a b'", 9, "invalid group name \"a b\": character ' ' is not allowed (use letters, digits and \"._-\")"),
            ("tags.a:b = x", 6, "invalid tag key \"a:b\": character ':' is not allowed (use letters, digits and \"._-\")"),
            ("tags = x", 1, "'tags' needs a tag key, e.g. tags.env"),
            ("site IN ()", 10, "expected at least one value in the IN list, found ')'"),
            ("site IN (a,)", 12, "expected a value after ',', found ')'"),
            ("site IN (a b)", 12, "expected ',' or ')' in the IN list, found 'b'"),
            ("site IN a", 9, "expected '(' after IN, found 'a'"),
            ("site NOT IN (a", 15, "expected ',' or ')' in the NOT IN list, found end of query"),
            ("site NOT = a", 10, "expected IN after NOT, found '='"),
            ("site = AND", 8, "expected a value after '=', found keyword AND (quote it to use it as text: \"AND\")"),
            ("site = (a)", 8, "expected a value after '=', found '('"),
            ("\"site\" = a", 1, "expected a field name, NOT or '(', found string \"site\""),
            ("site = a ⚠", 10, "unexpected character '⚠'; quote values that contain it, e.g. \"a b\""),
            ("battery_v < low", 13, "expected a number (such as 3, -100 or 2.5), found 'low'"),
            ("rssi_dbm IN (-100, - 90)", 20, "expected a number (such as 3, -100 or 2.5), found '-'"),
            ("temp_c >= 1e3", 11, "expected a number (such as 3, -100 or 2.5), found '1e3'"),
            ("battery_v =", 12, "expected a value after '=', found end of query"),
            ("link_score < 0.5", 14, "expected a whole number from 0 to 100, found '0.5'"),
            ("link_score NOT IN (50, 101)", 24, "expected a whole number from 0 to 100, found '101'"),
            ("link_score = high", 14, "expected a whole number from 0 to 100, found 'high'"),
            ("battery_v ~ '3*'", 11, "battery_v does not support '~'; it supports =, !=, <, <=, >, >=, IN and NOT IN"),
            ("metrics.custom_x EXISTS", 18, "metrics.custom_x does not support EXISTS; it supports =, !=, <, <=, >, >=, IN and NOT IN"),
            ("link_score", 11, "expected an operator after link_score (=, !=, <, <=, >, >=, IN or NOT IN), found end of query"),
            ("metrics.Custom_X > 1", 9, "invalid metric name \"Custom_X\": use 1-64 characters from [a-z0-9_], starting with a letter"),
            ("site = a OR METRICS.9lives > 1", 21, "invalid metric name \"9lives\": use 1-64 characters from [a-z0-9_], starting with a letter"),
            ("metrics > 1", 1, "'metrics' needs a metric name, e.g. metrics.battery_v"),
        ];
        for (text, column, message) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(
                (err.column, err.message.as_str()),
                (column, message),
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_fields_list_every_field_and_say_how_to_write_a_custom_metric() {
        let known_metrics: Vec<&str> = KNOWN_METRICS.iter().map(|known| known.name).collect();
        let fields = format!(
            "known fields are id, device_type (or type), hw_id (or serial), hw_rev, site, region, \
             status, firmware (or version), last_seen, created (or created_at), updated (or \
             updated_at), group, connectivity, link_score, tags.<key>, metrics.<name> and the \
             heartbeat metrics {}",
            known_metrics.join(", ")
        );
        assert!(fields.contains("battery_v, "), "{fields}");
        let cases = [
            (
                "my_custom_gauge > 5",
                1,
                format!("unknown field 'my_custom_gauge'; {fields}; a custom metric is written metrics.my_custom_gauge"),
            ),
            (
                "site = a AND Colour = red",
                14,
                format!("unknown field 'Colour'; {fields}"),
            ),
        ];
        for (text, column, message) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!((err.column, err.message), (column, message), "{text}");
        }
    }

    #[test]
    fn every_known_metric_is_a_bare_field_that_prints_bare() {
        for known in KNOWN_METRICS {
            let metric = MetricName::parse(known.name).unwrap();
            let bare = parse_ok(&format!("{} > 1", known.name));
            let prefixed = parse_ok(&format!("metrics.{} > 1", known.name));
            let expected = predicate(
                Field::Metric(metric),
                Op::Gt,
                vec![Value::Number(Number::new(1.0).unwrap())],
            );
            assert_eq!(bare, expected, "{}", known.name);
            assert_eq!(prefixed, expected, "{}", known.name);
            assert_eq!(bare.to_string(), format!("{} > 1", known.name));
        }
    }

    #[test]
    fn numbers_are_optionally_negative_integers_or_decimals() {
        let number = |text: &str| match parse(&format!("temp_c = {text}")) {
            Ok(Expr::Predicate(Predicate { values, .. })) => match values.as_slice() {
                [Value::Number(number)] => Ok(number.get()),
                other => panic!("{text}: {other:?}"),
            },
            Ok(other) => panic!("{text}: {other:?}"),
            Err(err) => Err(err.message),
        };
        let accepted = [
            ("3", 3.0),
            ("3.0", 3.0),
            ("-100", -100.0),
            ("0.25", 0.25),
            ("007", 7.0),
            ("-0", 0.0),
            ("'2.5'", 2.5),
        ];
        for (text, value) in accepted {
            assert_eq!(number(text), Ok(value), "{text}");
        }
        let huge = format!("1{}", "0".repeat(400));
        for text in [
            "1e3",
            ".5",
            "3.",
            "+3",
            "inf",
            "NaN",
            "--1",
            "1.2.3",
            "0x10",
            "''",
            "1_000",
            huge.as_str(),
        ] {
            let message = number(text).expect_err(text);
            assert!(
                message.starts_with("expected a number (such as 3, -100 or 2.5), found '"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn nesting_is_limited_to_the_maximum_depth() {
        let nested = |depth: usize| format!("{}site = a{}", "(".repeat(depth), ")".repeat(depth));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err.column, MAX_DEPTH + 1);
        assert_eq!(
            err.message,
            "query nests too deeply (at most 64 levels of parentheses and NOT)"
        );

        let nots = |depth: usize| format!("{}site = a", "NOT ".repeat(depth));
        assert!(parse(&nots(MAX_DEPTH)).is_ok());
        assert_eq!(
            parse(&nots(MAX_DEPTH + 1)).unwrap_err().column,
            MAX_DEPTH * 4 + 1
        );
        // A long flat chain is not nesting.
        assert!(parse(&vec!["site = a"; 1000].join(" AND ")).is_ok());
    }

    #[test]
    fn oversized_queries_and_lists_are_rejected_without_panicking() {
        let long = format!("site = \"{}\"", "x".repeat(MAX_QUERY_BYTES));
        let err = parse(&long).unwrap_err();
        assert_eq!(err.column, MAX_QUERY_BYTES + 1);
        assert_eq!(
            err.message,
            format!("query is too long ({} bytes; at most 16384)", long.len())
        );

        // Multi-byte characters straddling the limit must not split a character.
        let wide = format!("site = \"{}\"", "é".repeat(MAX_QUERY_BYTES / 2));
        assert!(parse(&wide)
            .unwrap_err()
            .message
            .starts_with("query is too long"));

        let small = Limits {
            max_in_values: 3,
            ..Limits::DEFAULT
        };
        assert!(parse_with_limits("site IN (a,b,c)", small).is_ok());
        let err = parse_with_limits("site NOT IN (a,b,c,d)", small).unwrap_err();
        assert_eq!(
            (err.column, err.message.as_str()),
            (20, "too many values in the NOT IN list (at most 3)")
        );
    }
}
