//! The syntax tree of a fleet query, and its canonical text form.
//!
//! The parser produces these types and the evaluator and SQL compiler consume them. Values are stored
//! already validated and typed (a `firmware` value is a [`Version`], a `status` value a
//! [`DeviceStatus`], a metric value a finite [`Number`]), so evaluating a query across a fleet never
//! re-parses text. Times stay relative (`now-10m` is kept as "ten minutes before now") and are
//! resolved against the `now` passed to evaluation or compilation, which is what lets a stored dynamic
//! group keep meaning "recently seen".
//!
//! [`fmt::Display`] on [`Expr`] prints the canonical text: upper-case keywords, canonical field names
//! (aliases replaced), normalised values and the fewest parentheses that keep the meaning. Parsing the
//! canonical text gives back an equal tree.

use std::fmt;

use crate::device::{Connectivity, DeviceStatus};
use crate::health::{MetricName, KNOWN_METRICS};
use crate::ids::{GroupName, TagKey};
use crate::query::lexer::{is_bare_char, is_keyword};
use crate::time::{Duration, Timestamp};
use crate::version::Version;

/// A boolean expression over one device.
///
/// The parser flattens chains, so an `And` never directly contains another `And` (likewise `Or`),
/// and both always hold at least two operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Matches every device; only produced by an empty query.
    All,
    /// True if any operand is true.
    Or(Vec<Expr>),
    /// True if every operand is true.
    And(Vec<Expr>),
    /// Plain boolean negation: `NOT tags.env = prod` includes devices that have no `env` tag.
    Not(Box<Expr>),
    /// A test of one device attribute.
    Predicate(Predicate),
}

/// One test of a device attribute, such as `firmware < 2.3.0` or `hw_rev IN (rev2, rev3)`.
///
/// A predicate from the parser is always well-formed (see [`Predicate::is_well_formed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate {
    pub field: Field,
    pub op: Op,
    /// One value for a comparison, one or more for `IN`/`NOT IN`, none for `EXISTS`.
    pub values: Vec<Value>,
}

/// A device attribute a query can test. Aliases accepted by the parser map onto these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    /// Also written `type`.
    DeviceType,
    /// Also written `serial`.
    HwId,
    HwRev,
    Site,
    Region,
    /// `tags.<key>`: the value of one tag.
    Tag(TagKey),
    Status,
    /// Also written `version`; compared semantically.
    Firmware,
    LastSeen,
    /// Also written `created_at`.
    Created,
    /// Also written `updated_at`.
    Updated,
    /// Membership in a static group.
    Group,
    /// Reachability: `unknown`, `online`, `degraded` or `offline`.
    Connectivity,
    /// Link quality of the latest heartbeat, 0–100; missing before the first heartbeat.
    LinkScore,
    /// One metric of the latest heartbeat: a known metric by its bare name (`battery_v`), or any
    /// metric as `metrics.<name>`. Missing when the device has not sent a heartbeat yet or its latest
    /// one lacks the metric.
    Metric(MetricName),
}

/// What kind of value a field holds, which decides its operators and how values are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// Free text compared exactly or by glob.
    Text,
    /// A [`DeviceStatus`] name.
    Status,
    /// A semantic [`Version`].
    Version,
    /// An instant, absolute or relative to now.
    Time,
    /// A static group name.
    Group,
    /// A [`Connectivity`] name.
    Connectivity,
    /// A decimal [`Number`], such as a heartbeat metric's reading.
    Number,
    /// A whole number from 0 to 100 (the link score); a [`Number`] with that restriction, so a
    /// query written for a 0–1 scale is an error rather than a query that silently means little.
    Score,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `~`: glob match (`*` any run, `?` one character).
    Glob,
    /// `!~`: glob non-match.
    NotGlob,
    /// `IN (…)`
    In,
    /// `NOT IN (…)`
    NotIn,
    /// `EXISTS`: the attribute is present.
    Exists,
}

/// A validated value on the right of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text for text fields and tags, and the pattern of every `~`/`!~`.
    Text(String),
    Status(DeviceStatus),
    Version(Version),
    Time(TimeValue),
    Group(GroupName),
    Connectivity(Connectivity),
    Number(Number),
}

/// A finite number in a query (never NaN or infinite), compared with heartbeat metrics and the link
/// score. Being finite is what makes `==` an equivalence, so values and trees can be `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Number(f64);

/// An instant in a query: relative to the evaluation's `now`, or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeValue {
    /// `now`, `now-10m`, `now+1h`: `now` shifted by this (signed) duration.
    Relative(Duration),
    /// An RFC 3339 timestamp.
    Absolute(Timestamp),
}

impl Field {
    /// Looks up a field by name or alias (case-insensitive; a tag key keeps its case). The error
    /// explains what is accepted.
    pub fn from_name(name: &str) -> Result<Field, String> {
        let lower = name.to_ascii_lowercase();
        if let Some(key) = lower.strip_prefix("tags.") {
            // Slice the original, not the lower-cased copy: tag keys are case-sensitive.
            let key = &name[name.len() - key.len()..];
            return TagKey::parse(key)
                .map(Field::Tag)
                .map_err(|e| e.to_string());
        }
        if let Some(metric) = lower.strip_prefix("metrics.") {
            // Like tag keys, metric names keep their case, so `metrics.Temp` is reported as invalid
            // rather than quietly read as `temp`.
            let metric = &name[name.len() - metric.len()..];
            return MetricName::parse(metric)
                .map(Field::Metric)
                .map_err(|e| e.to_string());
        }
        let field = match lower.as_str() {
            "id" => Field::Id,
            "device_type" | "type" => Field::DeviceType,
            "hw_id" | "serial" => Field::HwId,
            "hw_rev" => Field::HwRev,
            "site" => Field::Site,
            "region" => Field::Region,
            "status" => Field::Status,
            "firmware" | "version" => Field::Firmware,
            "last_seen" => Field::LastSeen,
            "created" | "created_at" => Field::Created,
            "updated" | "updated_at" => Field::Updated,
            "group" => Field::Group,
            "connectivity" => Field::Connectivity,
            "link_score" => Field::LinkScore,
            "tags" | "tag" => return Err(format!("'{name}' needs a tag key, e.g. tags.env")),
            "metrics" | "metric" => {
                return Err(format!(
                    "'{name}' needs a metric name, e.g. metrics.battery_v"
                ))
            }
            // Device attributes take precedence over metric names, so a future metric that shares
            // a field's name can only shadow it as `metrics.<name>`.
            _ => match KNOWN_METRICS.iter().find(|known| known.name == lower) {
                Some(known) => Field::Metric(
                    MetricName::parse(known.name).expect("known metric names are valid"),
                ),
                None => return Err(unknown_field(name)),
            },
        };
        Ok(field)
    }

    /// The kind of value this field holds.
    pub fn kind(&self) -> FieldKind {
        match self {
            Field::Id
            | Field::DeviceType
            | Field::HwId
            | Field::HwRev
            | Field::Site
            | Field::Region
            | Field::Tag(_) => FieldKind::Text,
            Field::Status => FieldKind::Status,
            Field::Firmware => FieldKind::Version,
            Field::LastSeen | Field::Created | Field::Updated => FieldKind::Time,
            Field::Group => FieldKind::Group,
            Field::Connectivity => FieldKind::Connectivity,
            Field::LinkScore => FieldKind::Score,
            Field::Metric(_) => FieldKind::Number,
        }
    }

    /// The operators this field accepts, in the order error messages list them.
    ///
    /// Text has no ordering operators because SQLite and PostgreSQL collate text differently, so the
    /// in-memory and SQL answers could disagree. Status and group have no `EXISTS` because they are
    /// never missing. Numbers have neither globs nor (for now) `EXISTS`.
    pub fn allowed_ops(&self) -> &'static [Op] {
        use Op::*;
        match self.kind() {
            FieldKind::Text => &[Eq, Ne, Glob, NotGlob, In, NotIn, Exists],
            FieldKind::Status | FieldKind::Group | FieldKind::Connectivity => &[Eq, Ne, In, NotIn],
            FieldKind::Version => &[Eq, Ne, Lt, Le, Gt, Ge, Glob, NotGlob, In, NotIn, Exists],
            FieldKind::Time => &[Lt, Le, Gt, Ge, Exists],
            FieldKind::Number | FieldKind::Score => &[Eq, Ne, Lt, Le, Gt, Ge, In, NotIn],
        }
    }
}

impl Number {
    /// The number `value`, or `None` if it is NaN or infinite. Negative zero becomes zero, so the
    /// canonical text never shows `-0`.
    pub fn new(value: f64) -> Option<Number> {
        if !value.is_finite() {
            return None;
        }
        Some(Number(if value == 0.0 { 0.0 } else { value }))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// True for a whole number from 0 to 100, the values a link score can take.
    pub fn is_score(self) -> bool {
        self.0.fract() == 0.0 && (0.0..=100.0).contains(&self.0)
    }
}

/// Finite floats compare as an equivalence relation (only NaN breaks reflexivity).
impl Eq for Number {}

impl Op {
    /// The operator as written in a query.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Glob => "~",
            Op::NotGlob => "!~",
            Op::In => "IN",
            Op::NotIn => "NOT IN",
            Op::Exists => "EXISTS",
        }
    }

    /// True for `<`, `<=`, `>` and `>=`.
    pub fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }
}

impl Predicate {
    /// Whether the operator is allowed on the field and the values have the number and type the
    /// field and operator need. The parser only builds well-formed predicates; evaluation and SQL
    /// compilation treat any other predicate as false, so they still agree on hand-built trees.
    pub fn is_well_formed(&self) -> bool {
        if !self.field.allowed_ops().contains(&self.op) {
            return false;
        }
        let count_ok = match self.op {
            Op::Exists => self.values.is_empty(),
            Op::In | Op::NotIn => !self.values.is_empty(),
            _ => self.values.len() == 1,
        };
        count_ok
            && self
                .values
                .iter()
                .all(|value| value_fits(&self.field, self.op, value))
    }
}

impl TimeValue {
    /// The instant this value denotes when the current time is `now`.
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            TimeValue::Relative(offset) => now.saturating_add(offset),
            TimeValue::Absolute(at) => at,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => Ok(()),
            // NOT binds tighter than AND, which binds tighter than OR, so an operand only needs
            // parentheses when it binds looser than (or as loose as) the operator around it. Nested
            // same-kind operands only occur in hand-built trees; bracketing them keeps their shape.
            Expr::Or(items) => write_joined(f, items, " OR ", |item| matches!(item, Expr::Or(_))),
            Expr::And(items) => write_joined(f, items, " AND ", |item| {
                matches!(item, Expr::Or(_) | Expr::And(_))
            }),
            Expr::Not(inner) => {
                if matches!(**inner, Expr::Or(_) | Expr::And(_)) {
                    write!(f, "NOT ({inner})")
                } else {
                    write!(f, "NOT {inner}")
                }
            }
            Expr::Predicate(predicate) => predicate.fmt(f),
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Op::Exists => write!(f, "{} EXISTS", self.field),
            Op::In | Op::NotIn => {
                write!(f, "{} {} (", self.field, self.op)?;
                for (value_idx, value) in self.values.iter().enumerate() {
                    if value_idx > 0 {
                        f.write_str(", ")?;
                    }
                    value.fmt(f)?;
                }
                f.write_str(")")
            }
            _ => {
                write!(f, "{} {} ", self.field, self.op)?;
                match self.values.first() {
                    Some(value) => value.fmt(f),
                    None => f.write_str("\"\""),
                }
            }
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Field::Id => "id",
            Field::DeviceType => "device_type",
            Field::HwId => "hw_id",
            Field::HwRev => "hw_rev",
            Field::Site => "site",
            Field::Region => "region",
            Field::Tag(key) => return write!(f, "tags.{key}"),
            Field::Status => "status",
            Field::Firmware => "firmware",
            Field::LastSeen => "last_seen",
            Field::Created => "created",
            Field::Updated => "updated",
            Field::Group => "group",
            Field::Connectivity => "connectivity",
            Field::LinkScore => "link_score",
            // Known metrics print bare, the short form operators write; others need the prefix.
            Field::Metric(metric) if metric.known().is_some() => metric.as_str(),
            Field::Metric(metric) => return write!(f, "metrics.{metric}"),
        };
        f.write_str(name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => write_text(f, text),
            Value::Status(status) => f.write_str(status.as_str()),
            Value::Version(version) => write_text(f, &version.to_string()),
            Value::Time(time) => time.fmt(f),
            Value::Group(group) => write_text(f, group.as_str()),
            Value::Connectivity(connectivity) => f.write_str(connectivity.as_str()),
            Value::Number(number) => number.fmt(f),
        }
    }
}

/// The shortest decimal that reads back as the same number (`3.0` prints as `3`), never with an
/// exponent, so it always lexes as one bare word.
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeValue::Relative(offset) if offset.as_millis() == 0 => f.write_str("now"),
            TimeValue::Relative(offset) if offset.as_millis() < 0 => {
                write!(f, "now-{}", offset.neg())
            }
            TimeValue::Relative(offset) => write!(f, "now+{offset}"),
            TimeValue::Absolute(at) => at.fmt(f),
        }
    }
}

/// Whether `value` has the type that `field` and `op` call for.
fn value_fits(field: &Field, op: Op, value: &Value) -> bool {
    if matches!(op, Op::Glob | Op::NotGlob) {
        return matches!(value, Value::Text(_));
    }
    match (field.kind(), value) {
        (FieldKind::Score, Value::Number(number)) => number.is_score(),
        (FieldKind::Text, Value::Text(_))
        | (FieldKind::Status, Value::Status(_))
        | (FieldKind::Version, Value::Version(_))
        | (FieldKind::Time, Value::Time(_))
        | (FieldKind::Group, Value::Group(_))
        | (FieldKind::Connectivity, Value::Connectivity(_))
        | (FieldKind::Number, Value::Number(_)) => true,
        _ => false,
    }
}

/// The error for a name that is no field: every field it could have been, and for a name that
/// would be a valid metric name, how to write it as a custom metric.
fn unknown_field(name: &str) -> String {
    let known_metrics: Vec<&str> = KNOWN_METRICS.iter().map(|known| known.name).collect();
    let mut message = format!(
        "unknown field '{}'; known fields are id, device_type (or type), hw_id (or serial), hw_rev, \
         site, region, status, firmware (or version), last_seen, created (or created_at), updated \
         (or updated_at), group, connectivity, link_score, tags.<key>, metrics.<name> and the \
         heartbeat metrics {}",
        truncate(name),
        known_metrics.join(", ")
    );
    if MetricName::parse(name).is_ok() {
        // A valid metric name is short and plain, so it is quoted whole.
        message.push_str(&format!("; a custom metric is written metrics.{name}"));
    }
    message
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (item_idx, item) in items.iter().enumerate() {
        if item_idx > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

/// Writes text bare when the lexer would read it back as the same single word, quoted otherwise.
fn write_text(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    if !text.is_empty() && text.chars().all(is_bare_char) && !is_keyword(text) {
        return f.write_str(text);
    }
    f.write_str("\"")?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Shortens user text quoted in an error message so a huge query cannot produce a huge message.
pub(crate) fn truncate(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}…")
    }
}
