//! Semantic versions (SemVer 2.0) with correct precedence and a byte-sortable storage key.
//!
//! Firmware versions compare semantically: `2.10.0 > 2.9.0`, `1.0.0-rc.1 < 1.0.0`, build metadata is
//! ignored. [`Version::sort_key`] encodes a version into bytes whose plain byte order (`memcmp`, as
//! SQLite compares BLOBs and PostgreSQL compares `bytea`) is exactly SemVer precedence, so stores can
//! index and range-scan versions without understanding SemVer.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A semantic version. `1.2` is accepted as `1.2.0` and a leading `v` is dropped when parsing;
/// [`fmt::Display`] always prints the full normalised form.
#[derive(Debug, Clone, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Pre-release identifiers (`rc.1` → `["rc", "1"]`); empty for a release.
    pub pre: Vec<PreId>,
    /// Build metadata (`+build.5`); kept for display, ignored for ordering and equality.
    pub build: String,
}

/// One dot-separated pre-release identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreId {
    Numeric(u64),
    Alpha(String),
}

/// Why text is not a semantic version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {value:?}: {reason}")]
pub struct VersionError {
    pub value: String,
    pub reason: String,
}

impl Version {
    /// Parses `MAJOR.MINOR[.PATCH][-PRERELEASE][+BUILD]`, with an optional leading `v`.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let err = |reason: &str| VersionError {
            value: text.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        if text.len() > 128 {
            return Err(err("must be at most 128 characters"));
        }
        let body = text.strip_prefix('v').unwrap_or(text);
        let (body, build) = match body.split_once('+') {
            Some((b, meta)) => {
                if meta.is_empty()
                    || meta
                        .split('.')
                        .any(|p| p.is_empty() || !p.chars().all(is_ident_char))
                {
                    return Err(err(
                        "build metadata must be dot-separated [0-9A-Za-z-] identifiers",
                    ));
                }
                (b, meta.to_owned())
            }
            None => (body, String::new()),
        };
        let (core, pre) = match body.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (body, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(err("expected MAJOR.MINOR.PATCH, e.g. 2.3.0"));
        }
        let mut numbers = [0u64; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            *slot = parse_numeric(part).ok_or_else(|| {
                err("MAJOR, MINOR and PATCH must be numbers without leading zeros")
            })?;
        }
        let mut pre_ids = Vec::new();
        if let Some(pre) = pre {
            for id in pre.split('.') {
                if id.is_empty() || !id.chars().all(is_ident_char) {
                    return Err(err(
                        "pre-release must be dot-separated [0-9A-Za-z-] identifiers",
                    ));
                }
                if id.chars().all(|c| c.is_ascii_digit()) {
                    pre_ids.push(PreId::Numeric(parse_numeric(id).ok_or_else(|| {
                        err("numeric pre-release identifiers must not have leading zeros")
                    })?));
                } else {
                    pre_ids.push(PreId::Alpha(id.to_owned()));
                }
            }
        }
        Ok(Version {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre: pre_ids,
            build,
        })
    }

    /// True for a pre-release such as `1.0.0-rc.1`.
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// Bytes whose lexicographic order is SemVer precedence (build metadata ignored).
    ///
    /// Layout: major, minor and patch as 8-byte big-endian integers; then `0xFF` for a release, or
    /// for a pre-release each identifier as `0x01` + 8-byte big-endian number or `0x02` + ASCII text +
    /// `0x00`, closed by `0x00`. A release therefore sorts after all of its pre-releases, numeric
    /// identifiers before alphanumeric ones, and a shorter identifier list before a longer one.
    pub fn sort_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(25);
        key.extend_from_slice(&self.major.to_be_bytes());
        key.extend_from_slice(&self.minor.to_be_bytes());
        key.extend_from_slice(&self.patch.to_be_bytes());
        if self.pre.is_empty() {
            key.push(0xFF);
        } else {
            for id in &self.pre {
                match id {
                    PreId::Numeric(n) => {
                        key.push(0x01);
                        key.extend_from_slice(&n.to_be_bytes());
                    }
                    PreId::Alpha(s) => {
                        key.push(0x02);
                        key.extend_from_slice(s.as_bytes());
                        key.push(0x00);
                    }
                }
            }
            key.push(0x00);
        }
        key
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

fn parse_numeric(text: &str) -> Option<u64> {
    if text.is_empty()
        || !text.chars().all(|c| c.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.sort_key().hash(state);
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (idx, id) in self.pre.iter().enumerate() {
            f.write_str(if idx == 0 { "-" } else { "." })?;
            match id {
                PreId::Numeric(n) => write!(f, "{n}")?,
                PreId::Alpha(s) => f.write_str(s)?,
            }
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, VersionError> {
        Version::parse(s)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Version::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn precedence_follows_semver_spec_example_chain() {
        // The chain from SemVer 2.0 §11, plus numeric-vs-lexical traps.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2.0",
            "1.9.0",
            "1.10.0",
            "2.0.0",
            "10.0.0",
        ];
        for pair in chain.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(
                v(pair[0]).sort_key() < v(pair[1]).sort_key(),
                "key {} < {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn build_metadata_is_ignored_for_ordering_but_kept_for_display() {
        assert_eq!(v("1.2.3+abc"), v("1.2.3"));
        assert_eq!(v("1.2.3+abc").to_string(), "1.2.3+abc");
    }

    #[test]
    fn short_and_prefixed_forms_normalise() {
        assert_eq!(v("v2.3").to_string(), "2.3.0");
        assert_eq!(v("2.3"), v("2.3.0"));
    }

    #[test]
    fn malformed_versions_are_rejected_with_reasons() {
        for bad in [
            "",
            "1",
            "1.2.3.4",
            "01.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3-a..b",
            "1.2.3+",
            "1.2.3-01",
            "a.b.c",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Version::parse("1.x").unwrap_err().to_string(),
            r#"invalid version "1.x": MAJOR, MINOR and PATCH must be numbers without leading zeros"#
        );
    }
}
