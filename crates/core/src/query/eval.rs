//! Evaluates a query against one device in memory.
//!
//! This is the reference semantics; the SQL compiler in [`super::sql`] must select exactly the devices
//! for which this returns true. The rule both follow: a comparison on a missing attribute (an unset
//! optional field, an absent tag, a device never seen, no firmware) is false for every operator,
//! including `!=`, `!~` and `NOT IN`, and `EXISTS` is true exactly when the attribute is present.
//! `NOT` is plain negation on top of that, so `NOT site = x` includes devices without a site while
//! `site != x` does not. Heartbeat metrics follow the same rule: a device with no heartbeat yet, or
//! whose latest heartbeat lacks the metric, has no value, and so does a device whose link score is
//! not known yet.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::device::{Device, DeviceStatus};
use crate::ids::GroupName;
use crate::query::ast::{Expr, Field, Op, Predicate, Value};
use crate::time::Timestamp;
use crate::version::Version;

/// Glob matching as the query language defines it: `*` matches any run of characters (including
/// none), `?` matches exactly one character, everything else matches itself, case-sensitively.
/// There are no character classes or escapes, so `[` is literal.
///
/// ```
/// use drover_core::query::glob_match;
/// assert!(glob_match("berlin-*", "berlin-mitte"));
/// assert!(glob_match("rev?", "rev2"));
/// assert!(!glob_match("Berlin-*", "berlin-mitte"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut pattern_idx, mut text_idx) = (0, 0);
    // Where to resume after the most recent `*`: the pattern position after it, and the text
    // position it has consumed up to. Backtracking only to the latest star is enough because a later
    // star can absorb anything an earlier one could, which keeps matching O(pattern × text).
    let mut resume: Option<(usize, usize)> = None;
    while text_idx < text.len() {
        match pattern.get(pattern_idx) {
            Some('*') => {
                resume = Some((pattern_idx + 1, text_idx));
                pattern_idx += 1;
            }
            Some(&p) if p == '?' || p == text[text_idx] => {
                pattern_idx += 1;
                text_idx += 1;
            }
            _ => match resume {
                Some((after_star, consumed)) => {
                    resume = Some((after_star, consumed + 1));
                    pattern_idx = after_star;
                    text_idx = consumed + 1;
                }
                None => return false,
            },
        }
    }
    pattern[pattern_idx..].iter().all(|&p| p == '*')
}

/// What a query is evaluated against: one device and what the device record itself does not carry.
#[derive(Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub device: &'a Device,
    /// The static groups the device belongs to.
    pub static_groups: &'a [GroupName],
    /// The metrics of the device's latest heartbeat, by name; `None` if it has sent none.
    pub metrics: Option<&'a BTreeMap<String, f64>>,
}

/// Whether `subject` satisfies `expr`.
pub(crate) fn eval(expr: &Expr, subject: Subject<'_>, now: Timestamp) -> bool {
    match expr {
        Expr::All => true,
        Expr::Or(operands) => operands.iter().any(|operand| eval(operand, subject, now)),
        Expr::And(operands) => operands.iter().all(|operand| eval(operand, subject, now)),
        Expr::Not(inner) => !eval(inner, subject, now),
        Expr::Predicate(predicate) => eval_predicate(predicate, subject, now),
    }
}

/// A device attribute that is present, borrowed from the device.
enum Attr<'a> {
    Text(&'a str),
    Status(DeviceStatus),
    Connectivity(crate::device::Connectivity),
    Version(&'a Version),
    Time(Timestamp),
    Number(f64),
}

fn eval_predicate(predicate: &Predicate, subject: Subject<'_>, now: Timestamp) -> bool {
    if !predicate.is_well_formed() {
        return false;
    }
    let values = &predicate.values;
    if predicate.field == Field::Group {
        // Membership is never missing: a device is either in the group or not.
        let static_groups = subject.static_groups;
        let is_member =
            |value: &Value| matches!(value, Value::Group(name) if static_groups.contains(name));
        return match predicate.op {
            Op::Eq | Op::In => values.iter().any(is_member),
            Op::Ne | Op::NotIn => !values.iter().any(is_member),
            _ => false,
        };
    }
    let Some(attr) = attribute(&predicate.field, subject) else {
        return false;
    };
    let compare = |value: &Value| compare(&attr, value, now);
    let glob = |value: &Value| match (glob_text(&attr), value) {
        (Some(text), Value::Text(pattern)) => Some(glob_match(pattern, &text)),
        _ => None,
    };
    // Each arm insists on a comparable value (`Some`), so a type mismatch is false for negative
    // operators too rather than silently true.
    match (predicate.op, values.first()) {
        (Op::Exists, _) => true,
        (Op::Eq, Some(value)) => compare(value) == Some(Ordering::Equal),
        (Op::Ne, Some(value)) => compare(value).is_some_and(Ordering::is_ne),
        (Op::Lt, Some(value)) => compare(value).is_some_and(Ordering::is_lt),
        (Op::Le, Some(value)) => compare(value).is_some_and(Ordering::is_le),
        (Op::Gt, Some(value)) => compare(value).is_some_and(Ordering::is_gt),
        (Op::Ge, Some(value)) => compare(value).is_some_and(Ordering::is_ge),
        (Op::Glob, Some(value)) => glob(value) == Some(true),
        (Op::NotGlob, Some(value)) => glob(value) == Some(false),
        (Op::In, _) => values
            .iter()
            .any(|value| compare(value) == Some(Ordering::Equal)),
        (Op::NotIn, _) => values
            .iter()
            .all(|value| compare(value).is_some_and(Ordering::is_ne)),
        (_, None) => false,
    }
}

/// The subject's value for `field`, or `None` if it is missing.
fn attribute<'a>(field: &Field, subject: Subject<'a>) -> Option<Attr<'a>> {
    let device = subject.device;
    let attr = match field {
        Field::Id => Attr::Text(device.id.as_str()),
        Field::DeviceType => Attr::Text(device.device_type.as_str()),
        Field::HwId => Attr::Text(device.hw_id.as_ref()?.as_str()),
        Field::HwRev => Attr::Text(device.hw_rev.as_ref()?.as_str()),
        Field::Site => Attr::Text(device.site.as_ref()?.as_str()),
        Field::Region => Attr::Text(device.region.as_ref()?.as_str()),
        Field::Tag(key) => Attr::Text(device.tags.get(key)?.as_str()),
        Field::Status => Attr::Status(device.status),
        Field::Connectivity => Attr::Connectivity(device.connectivity),
        Field::Firmware => Attr::Version(device.firmware.as_ref()?),
        Field::LastSeen => Attr::Time(device.last_seen?),
        Field::Created => Attr::Time(device.created_at),
        Field::Updated => Attr::Time(device.updated_at),
        Field::LinkScore => Attr::Number(f64::from(device.link_score?)),
        Field::Metric(name) => Attr::Number(*subject.metrics?.get(name.as_str())?),
        Field::Group => return None,
    };
    Some(attr)
}

/// Orders the attribute against a value of the same type; `None` if the types differ.
fn compare(attr: &Attr<'_>, value: &Value, now: Timestamp) -> Option<Ordering> {
    match (attr, value) {
        (Attr::Text(text), Value::Text(other)) => Some((*text).cmp(other.as_str())),
        (Attr::Status(status), Value::Status(other)) => Some(status.cmp(other)),
        (Attr::Connectivity(c), Value::Connectivity(other)) => Some(c.cmp(other)),
        // Semantic precedence: 2.9.1 < 2.10.0, pre-releases before releases, build metadata ignored.
        (Attr::Version(version), Value::Version(other)) => Some((*version).cmp(other)),
        (Attr::Time(at), Value::Time(other)) => Some(at.cmp(&other.resolve(now))),
        // `None` for a NaN reading, so it matches nothing, as SQL's NULL would.
        (Attr::Number(number), Value::Number(other)) => number.partial_cmp(&other.get()),
        _ => None,
    }
}

/// The text a glob is matched against: the value itself, or a version's normalised text (the form
/// stores keep in their `firmware` column).
fn glob_text<'a>(attr: &Attr<'a>) -> Option<Cow<'a, str>> {
    match attr {
        Attr::Text(text) => Some(Cow::Borrowed(text)),
        Attr::Version(version) => Some(Cow::Owned(version.to_string())),
        Attr::Status(_) | Attr::Connectivity(_) | Attr::Time(_) | Attr::Number(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::{DeviceId, DeviceType, HardwareId, Label, TagKey, TagValue};
    use crate::query::Query;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
    const MINUTE: i64 = 60_000;

    /// A device with every optional attribute set.
    fn full_device() -> Device {
        let tags = [("env", "prod"), ("owner", "team a"), ("empty", "")]
            .into_iter()
            .map(|(key, value)| (TagKey::parse(key).unwrap(), TagValue::parse(value).unwrap()))
            .collect();
        Device {
            id: DeviceId::parse("dev-1").unwrap(),
            device_type: DeviceType::parse("thermostat").unwrap(),
            hw_id: Some(HardwareId::parse("SN-001").unwrap()),
            hw_rev: Some(Label::parse("rev2").unwrap()),
            site: Some(Label::parse("berlin-mitte").unwrap()),
            region: Some(Label::parse("eu").unwrap()),
            status: DeviceStatus::Active,
            firmware: Some(Version::parse("2.9.1").unwrap()),
            tags,
            created_at: Timestamp::from_millis(NOW.as_millis() - 60 * MINUTE),
            updated_at: Timestamp::from_millis(NOW.as_millis() - 30 * MINUTE),
            last_seen: Some(Timestamp::from_millis(NOW.as_millis() - 5 * MINUTE)),
            connectivity: crate::device::Connectivity::Degraded,
            link_score: Some(48),
        }
    }

    /// A device with every optional attribute missing.
    fn bare_device() -> Device {
        Device {
            hw_id: None,
            hw_rev: None,
            site: None,
            region: None,
            firmware: None,
            tags: BTreeMap::new(),
            last_seen: None,
            link_score: None,
            status: DeviceStatus::Pending,
            ..full_device()
        }
    }

    /// Latest heartbeat metrics from name-value pairs.
    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect()
    }

    fn matches(text: &str, device: &Device, groups: &[GroupName]) -> bool {
        Query::parse(text)
            .unwrap_or_else(|err| panic!("{text}: {err}"))
            .matches(device, groups, NOW)
    }

    #[test]
    fn glob_stars_match_runs_and_question_marks_match_one_character() {
        let cases = [
            ("berlin-*", "berlin-mitte", true),
            ("berlin-*", "berlin-", true),
            ("berlin-*", "Berlin-mitte", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("?", "", false),
            ("?", "é", true),
            ("rev?", "rev2", true),
            ("rev?", "rev21", false),
            ("*.1", "rev2.1", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**a**", "bab", true),
            ("[ab]", "a", false),
            ("[ab]", "[ab]", true),
            ("100%_\\", "100%_\\", true),
            ("*x", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxy", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern, text),
                expected,
                "{pattern:?} ~ {text:?}"
            );
        }
    }

    #[test]
    fn every_operator_is_false_on_missing_values_except_under_not() {
        // (query, matches the full device, matches the bare device)
        let cases = [
            ("site = berlin-mitte", true, false),
            ("site = hamburg", false, false),
            ("site != hamburg", true, false),
            ("site != berlin-mitte", false, false),
            ("NOT site = hamburg", true, true),
            ("site ~ berlin-*", true, false),
            ("site ~ *", true, false),
            ("site !~ hamburg-*", true, false),
            ("site !~ berlin-*", false, false),
            ("NOT site ~ berlin-*", false, true),
            ("site IN (hamburg, berlin-mitte)", true, false),
            ("site NOT IN (hamburg, munich)", true, false),
            ("site NOT IN (hamburg, berlin-mitte)", false, false),
            ("NOT site IN (hamburg)", true, true),
            ("site EXISTS", true, false),
            ("NOT site EXISTS", false, true),
            ("site = ''", false, false),
            (
                "hw_id = SN-001 AND hw_rev = rev2 AND region = eu",
                true,
                false,
            ),
            (
                "serial EXISTS OR hw_rev EXISTS OR region EXISTS",
                true,
                false,
            ),
            ("tags.env = prod", true, false),
            ("tags.env != staging", true, false),
            ("tags.env != prod", false, false),
            ("NOT tags.env = prod", false, true),
            ("tags.owner = 'team a'", true, false),
            ("tags.Env = prod", false, false),
            ("tags.env ~ pr?d", true, false),
            ("tags.env !~ pr?d", false, false),
            ("tags.env IN (dev, prod)", true, false),
            ("tags.env NOT IN (dev)", true, false),
            ("tags.empty EXISTS", true, false),
            ("tags.empty = ''", true, false),
            ("tags.missing EXISTS", false, false),
            ("tags.missing != x", false, false),
            ("id = dev-1 AND type = thermostat", true, true),
            ("id != dev-2", true, true),
            (
                "id EXISTS AND created EXISTS AND updated EXISTS",
                true,
                true,
            ),
            ("status = active", true, false),
            ("status != active", false, true),
            ("status IN (pending, error)", false, true),
            ("status NOT IN (pending, error)", true, false),
            ("firmware = 2.9.1", true, false),
            ("firmware = 2.9.1+build7", true, false),
            ("firmware != 2.9.1", false, false),
            ("firmware != 3.0.0", true, false),
            ("firmware < 2.10.0", true, false),
            ("firmware <= 2.9.1 AND firmware >= 2.9.1", true, false),
            ("firmware > 2.9.1-rc.1", true, false),
            ("firmware > 2.9.1", false, false),
            ("firmware IN (1.0.0, 2.9.1)", true, false),
            ("firmware NOT IN (1.0.0)", true, false),
            ("firmware ~ '2.9.*'", true, false),
            ("firmware !~ '3.*'", true, false),
            ("firmware EXISTS", true, false),
            ("NOT firmware < 3.0.0", false, true),
            ("last_seen > now-10m", true, false),
            ("last_seen < now-10m", false, false),
            ("last_seen <= now-5m AND last_seen >= now-5m", true, false),
            ("last_seen < now+1h", true, false),
            ("NOT last_seen > now-10m", false, true),
            ("last_seen EXISTS", true, false),
            ("last_seen > 1970-01-01T00:00:00Z", true, false),
            ("created < now-59m AND created > now-61m", true, true),
            ("updated_at > now-31m", true, true),
            ("created < 2020-01-01T00:00:00Z", false, false),
        ];
        for (text, full, bare) in cases {
            assert_eq!(
                matches(text, &full_device(), &[]),
                full,
                "{text} on the full device"
            );
            assert_eq!(
                matches(text, &bare_device(), &[]),
                bare,
                "{text} on the bare device"
            );
        }
    }

    #[test]
    fn firmware_compares_by_semantic_precedence_not_text() {
        let cases = [
            ("2.9.1", "firmware < 2.10.0", true),
            ("2.10.0", "firmware > 2.9.1", true),
            ("1.0.0-rc.1", "firmware < 1.0.0", true),
            ("1.0.0-beta.11", "firmware > 1.0.0-beta.2", true),
            ("10.0.0", "firmware > 9.0.0", true),
            ("2.3.0", "firmware = 2.3", true),
        ];
        for (version, text, expected) in cases {
            let device = Device {
                firmware: Some(Version::parse(version).unwrap()),
                ..full_device()
            };
            assert_eq!(matches(text, &device, &[]), expected, "{version}: {text}");
        }
    }

    #[test]
    fn connectivity_predicates_compare_the_state_by_name() {
        let cases = [
            ("connectivity = degraded", true),
            ("connectivity != offline", true),
            ("connectivity IN (online, degraded)", true),
            ("connectivity NOT IN (degraded)", false),
        ];
        for (text, expected) in cases {
            assert_eq!(matches(text, &full_device(), &[]), expected, "{text}");
        }
        assert!(Query::parse("connectivity = asleep").is_err());
        assert!(Query::parse("connectivity < online").is_err());
    }

    #[test]
    fn metric_predicates_are_false_without_a_reading_except_under_not() {
        let reported = metrics(&[
            ("battery_v", 2.9),
            ("temp_c", 71.5),
            ("rssi_dbm", -104.0),
            ("custom_x", 2.0),
        ]);
        // A heartbeat that carries other metrics but not the one tested.
        let other = metrics(&[("temp_c", 20.0)]);
        let device = full_device();
        // (query, with `reported`, with `other`, with no heartbeat yet)
        let cases = [
            ("battery_v < 3.0", true, false, false),
            ("battery_v < 2.9", false, false, false),
            ("battery_v <= 2.9 AND battery_v >= 2.9", true, false, false),
            ("battery_v = 2.9", true, false, false),
            ("battery_v > 2.9", false, false, false),
            ("battery_v != 2.9", false, false, false),
            ("battery_v != 3.7", true, false, false),
            ("NOT battery_v < 3.0", false, true, true),
            ("NOT battery_v != 2.9", true, true, true),
            ("battery_v IN (2.9, 3.7)", true, false, false),
            ("battery_v NOT IN (3.7)", true, false, false),
            ("battery_v NOT IN (2.9, 3.7)", false, false, false),
            ("NOT battery_v IN (3.7)", true, true, true),
            ("metrics.battery_v > 2.5", true, false, false),
            ("temp_c >= 70", true, false, false),
            ("temp_c < 70", false, true, false),
            ("rssi_dbm < -100", true, false, false),
            (
                "rssi_dbm > -104.5 AND rssi_dbm < -103.5",
                true,
                false,
                false,
            ),
            // An extra metric the device reports but Drover does not know.
            ("metrics.custom_x > 1", true, false, false),
            ("metrics.custom_x = 2", true, false, false),
            ("NOT metrics.custom_x > 1", false, true, true),
            (
                "metrics.custom_y > 1 OR metrics.custom_y <= 1",
                false,
                false,
                false,
            ),
            ("NOT metrics.custom_y = 1", true, true, true),
            (
                "temp_c >= 70 AND connectivity = degraded",
                true,
                false,
                false,
            ),
        ];
        for (text, with_reported, with_other, without) in cases {
            let query = Query::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            let matches = |latest: Option<&BTreeMap<String, f64>>| {
                query.matches_with_metrics(&device, &[], latest, NOW)
            };
            assert_eq!(
                matches(Some(&reported)),
                with_reported,
                "{text} with readings"
            );
            assert_eq!(
                matches(Some(&other)),
                with_other,
                "{text} lacking the metric"
            );
            assert_eq!(matches(None), without, "{text} without a heartbeat");
            // The plain method knows no metrics, like a device that never sent a heartbeat.
            assert_eq!(
                query.matches(&device, &[], NOW),
                without,
                "{text} via matches"
            );
        }
    }

    #[test]
    fn link_score_is_missing_until_the_first_heartbeat() {
        // (query, matches the full device scoring 48, matches the bare device without a score)
        let cases = [
            ("link_score = 48", true, false),
            ("link_score < 50", true, false),
            ("link_score <= 0", false, false),
            ("link_score != 100", true, false),
            ("link_score >= 0", true, false),
            ("NOT link_score >= 0", false, true),
            ("link_score IN (0, 48)", true, false),
            ("link_score NOT IN (48)", false, false),
            ("link_score NOT IN (50)", true, false),
            ("NOT link_score = 48", false, true),
        ];
        for (text, full, bare) in cases {
            assert_eq!(
                matches(text, &full_device(), &[]),
                full,
                "{text} on the full device"
            );
            assert_eq!(
                matches(text, &bare_device(), &[]),
                bare,
                "{text} on the bare device"
            );
        }
    }

    #[test]
    fn a_query_uses_metrics_when_any_predicate_tests_one() {
        let cases = [
            ("battery_v < 3", true),
            (
                "site = a OR NOT (status = active AND metrics.custom_x > 1)",
                true,
            ),
            ("link_score < 50 AND connectivity = online", false),
            ("", false),
        ];
        for (text, uses_metrics) in cases {
            assert_eq!(
                Query::parse(text).unwrap().uses_metrics(),
                uses_metrics,
                "{text}"
            );
        }
    }

    #[test]
    fn group_predicates_test_static_membership_which_is_never_missing() {
        let groups = [
            GroupName::parse("canary").unwrap(),
            GroupName::parse("berlin").unwrap(),
        ];
        let cases = [
            ("group = canary", true, false),
            ("group != canary", false, true),
            ("group IN (beta, berlin)", true, false),
            ("group NOT IN (beta, berlin)", false, true),
            ("group NOT IN (beta)", true, true),
        ];
        for (text, member, outsider) in cases {
            assert_eq!(
                matches(text, &full_device(), &groups),
                member,
                "{text} in groups"
            );
            assert_eq!(
                matches(text, &full_device(), &[]),
                outsider,
                "{text} without groups"
            );
        }
    }

    #[test]
    fn relative_times_are_resolved_against_the_given_now() {
        let query = Query::parse("last_seen > now-10m").unwrap();
        let device = full_device(); // last seen at NOW - 5m
        assert!(query.matches(&device, &[], NOW));
        assert!(!query.matches(
            &device,
            &[],
            Timestamp::from_millis(NOW.as_millis() + 6 * MINUTE)
        ));
    }

    #[test]
    fn the_empty_query_matches_every_device() {
        assert!(matches("", &full_device(), &[]));
        assert!(matches(" ", &bare_device(), &[]));
    }
}
