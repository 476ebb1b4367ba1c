//! Millisecond timestamps and human-readable durations.
//!
//! Drover stores every instant as milliseconds since the Unix epoch (UTC) and shows it as RFC 3339.
//! Nothing here reads a clock: "now" is always passed in by the caller.

use std::fmt;

use ::time::format_description::well_known::Rfc3339;
use ::time::OffsetDateTime;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why text is not a timestamp or duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct TimeError {
    pub kind: &'static str,
    pub value: String,
    pub reason: String,
}

impl Timestamp {
    /// Wraps milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 timestamp such as `2026-11-23T10:00:00Z` or `2026-11-23T11:00:00+01:00`.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimeError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| TimeError {
            kind: "timestamp",
            value: text.chars().take(80).collect(),
            reason: format!("{e} (expected RFC 3339, e.g. 2026-11-23T10:00:00Z)"),
        })?;
        Ok(Timestamp(
            (parsed.unix_timestamp_nanos() / 1_000_000) as i64,
        ))
    }

    /// This instant shifted by `duration` (negative durations move back); saturates at the extremes.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.as_millis()))
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-23T10:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000) {
            Ok(t) => {
                let (y, mo, d) = (t.year(), t.month() as u8, t.day());
                let (h, mi, s, ms) = (t.hour(), t.minute(), t.second(), t.millisecond());
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
            }
            Err(_) => format!("@{}ms", self.0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// A signed length of time in milliseconds, written as a number and a unit: `500ms`, `30s`, `10m`,
/// `2h`, `7d`, `1w`. Compound forms such as `1h30m` are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(i64);

impl Duration {
    pub const fn from_millis(ms: i64) -> Duration {
        Duration(ms)
    }

    pub const fn from_secs(secs: i64) -> Duration {
        Duration(secs * 1000)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The same length pointing the other way.
    pub const fn neg(self) -> Duration {
        Duration(-self.0)
    }

    /// Parses an unsigned duration such as `10m` or `1h30m`.
    pub fn parse(text: &str) -> Result<Duration, TimeError> {
        let err = |reason: &str| TimeError {
            kind: "duration",
            value: text.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(err("must not be empty (e.g. 10m, 2h, 7d)"));
        }
        let mut total: i64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(err(
                    "expected a number followed by a unit: ms, s, m, h, d or w",
                ));
            }
            let number: i64 = rest[..digits]
                .parse()
                .map_err(|_| err("number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
            let unit_ms = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                "" => return Err(err("missing unit: use ms, s, m, h, d or w")),
                _ => return Err(err("unknown unit: use ms, s, m, h, d or w")),
            };
            rest = &rest[unit_len..];
            total = number
                .checked_mul(unit_ms)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(|| err("duration is too large"))?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms < 0 {
            f.write_str("-")?;
        }
        let ms = ms.unsigned_abs();
        for (unit, size) in [
            ("w", 604_800_000u64),
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Written as its human form (`30m`); read from that form or from a plain number of seconds.
impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Seconds(i64),
        }
        match Form::deserialize(d)? {
            Form::Text(text) => Duration::parse(&text).map_err(serde::de::Error::custom),
            Form::Seconds(secs) => secs
                .checked_mul(1000)
                .map(Duration)
                .ok_or_else(|| serde::de::Error::custom("duration is too large")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_units_and_compounds() {
        assert_eq!(Duration::parse("10m").unwrap().as_millis(), 600_000);
        assert_eq!(Duration::parse("1h30m").unwrap().as_millis(), 5_400_000);
        assert_eq!(Duration::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(Duration::parse("2w").unwrap().to_string(), "2w");
        for bad in ["", "m", "10", "10x", "-5m", "99999999999999999999s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp::parse_rfc3339("2026-11-23T11:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T10:00:00.000Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
