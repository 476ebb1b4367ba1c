//! Validated identifier and label newtypes.
//!
//! Each type has a `parse` constructor that is the only way to build one from untrusted text, so a
//! `DeviceId` inside Drover is always valid. Errors say what was wrong in words an operator can act on.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a piece of text is not a valid identifier or label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdError {
    /// What was being parsed, e.g. "device id".
    pub kind: &'static str,
    /// The rejected input (truncated to 80 characters).
    pub value: String,
    /// What rule it broke.
    pub reason: String,
}

impl IdError {
    fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        let value: String = value.chars().take(80).collect();
        IdError {
            kind,
            value,
            reason: reason.into(),
        }
    }
}

/// Checks `value` against a "slug" rule: 1..=max characters from `[A-Za-z0-9._:-]` (colon optional),
/// starting with a letter or digit.
fn check_slug(
    kind: &'static str,
    value: &str,
    max: usize,
    allow_colon: bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::new(kind, value, "must not be empty"));
    }
    if value.len() > max {
        return Err(IdError::new(
            kind,
            value,
            format!("must be at most {max} characters"),
        ));
    }
    let first = value.chars().next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::new(
            kind,
            value,
            "must start with a letter or digit",
        ));
    }
    let extra = if allow_colon { "._:-" } else { "._-" };
    if let Some(bad) = value
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(*c))
    {
        return Err(IdError::new(
            kind,
            value,
            format!("character {bad:?} is not allowed (use letters, digits and {extra:?})"),
        ));
    }
    Ok(())
}

/// Checks free text: 1..=max characters, no control characters, no surrounding whitespace.
fn check_text(
    kind: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), IdError> {
    if value.is_empty() && !allow_empty {
        return Err(IdError::new(kind, value, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(IdError::new(
            kind,
            value,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::new(
            kind,
            value,
            "must not contain control characters",
        ));
    }
    if value.trim() != value {
        return Err(IdError::new(
            kind,
            value,
            "must not start or end with whitespace",
        ));
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $kind:literal, |$v:ident| $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let $v = value;
                $check?;
                Ok($name(value.to_owned()))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Unwraps into the validated text.
            pub fn into_string(self) -> String {
                self.0
            }

            /// The human name of this kind of value, used in error messages.
            pub const KIND: &'static str = $kind;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A device's stable identifier: 1–128 characters from `[A-Za-z0-9._:-]`, starting with a letter
    /// or digit. It appears in URLs and MQTT topics, so `/`, `+`, `#` and whitespace are excluded.
    DeviceId, "device id", |v| check_slug("device id", v, 128, true)
);
string_newtype!(
    /// A group's unique name: 1–64 characters from `[A-Za-z0-9._-]`, starting with a letter or digit.
    GroupName, "group name", |v| check_slug("group name", v, 64, false)
);
string_newtype!(
    /// A device type (product model), e.g. `thermostat-v2`: same rule as a group name.
    DeviceType, "device type", |v| check_slug("device type", v, 64, false)
);
string_newtype!(
    /// A firmware artifact's name (the product image it is a version of), e.g. `sensor-hub-fw`: same
    /// rule as a group name. It appears in URLs and TUF target paths.
    ArtifactName, "artifact name", |v| check_slug("artifact name", v, 64, false)
);
string_newtype!(
    /// A hardware id or serial number: 1–128 printable characters without whitespace.
    HardwareId, "hardware id", |v| {
        check_text("hardware id", v, 128, false).and_then(|()| {
            if v.chars().any(char::is_whitespace) {
                Err(IdError::new("hardware id", v, "must not contain whitespace"))
            } else {
                Ok(())
            }
        })
    }
);
string_newtype!(
    /// A free-text attribute such as a hardware revision, site or region: 1–64 characters, no control
    /// characters, no surrounding whitespace.
    Label, "label", |v| check_text("label", v, 64, false)
);
string_newtype!(
    /// A tag key: 1–64 characters from `[A-Za-z0-9_.-]`, starting with a letter, digit or `_`.
    TagKey, "tag key", |v| match v.strip_prefix('_') {
        Some("") => Ok(()),
        Some(rest) => check_slug("tag key", rest, 63, false)
            .map_err(|e| IdError { value: v.chars().take(80).collect(), ..e }),
        None => check_slug("tag key", v, 64, false),
    }
);
string_newtype!(
    /// A tag value: 0–256 characters, no control characters, no surrounding whitespace.
    TagValue, "tag value", |v| check_text("tag value", v, 256, true)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_accept_common_shapes_and_reject_unsafe_characters() {
        for ok in ["dev-1", "AA:BB:CC:00:11:22", "motor.berlin_007", "7"] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a b", "a+b", "a#", &"x".repeat(129), "é"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_kind_and_the_rule() {
        let err = DeviceId::parse("a/b").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"invalid device id "a/b": character '/' is not allowed (use letters, digits and "._:-")"#
        );
    }

    #[test]
    fn tag_keys_allow_leading_underscore_and_dots() {
        assert!(TagKey::parse("_internal").is_ok());
        assert!(TagKey::parse("_").is_ok());
        assert!(TagKey::parse("app.tier").is_ok());
        assert!(TagKey::parse("a:b").is_err());
        assert!(TagKey::parse("_-").is_err());
    }

    #[test]
    fn labels_reject_control_characters_and_padding() {
        assert!(Label::parse("rev 2.1").is_ok());
        assert!(Label::parse(" rev2").is_err());
        assert!(Label::parse("rev\n2").is_err());
        assert!(TagValue::parse("").is_ok());
    }
}
