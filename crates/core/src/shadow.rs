//! Device shadows: the desired and reported state of a device, merged, versioned and compared.
//!
//! A shadow is a JSON document that lets operators and devices agree on state without being online at
//! the same time, in the manner of AWS IoT Device Shadow. Operators write `desired`, the device writes
//! `reported`, and the [`delta`](ShadowDocument::delta) is what the device still has to do. Everything
//! here is pure: the caller loads a [`ShadowDocument`], calls [`apply`](ShadowDocument::apply) with the
//! current time, and stores and publishes what comes back.
//!
//! ```
//! use drover_core::shadow::{DeltaChange, ShadowDocument, ShadowLimits, ShadowUpdate};
//! use drover_core::Timestamp;
//! use serde_json::json;
//!
//! let mut shadow = ShadowDocument::new(Timestamp::from_millis(0));
//! let update = ShadowUpdate::from_json(json!({"state": {"desired": {"led": "on"}}})).unwrap();
//! let outcome = shadow.apply(update, Timestamp::from_millis(1), &ShadowLimits::default()).unwrap();
//! assert_eq!(outcome.version, 1);
//! assert!(matches!(outcome.delta, DeltaChange::Changed(_)));
//!
//! let report = ShadowUpdate::from_json(json!({"state": {"reported": {"led": "on"}}})).unwrap();
//! let outcome = shadow.apply(report, Timestamp::from_millis(2), &ShadowLimits::default()).unwrap();
//! assert_eq!(outcome.delta, DeltaChange::Cleared);
//! assert_eq!(shadow.delta(), None);
//! ```
//!
//! # Update semantics
//! - Objects merge recursively; arrays, strings, numbers and booleans replace the old value whole.
//! - `null` deletes a field, and any object left empty by a deletion is removed with it. No empty
//!   object is ever stored, so `{"a": {}}` sent over a scalar `a` removes `a`, and an empty object never
//!   shows up in a delta. `state.desired: null` clears all of desired.
//! - Values compare as JSON values with numbers compared by value, so a device reporting `20.0` for a
//!   desired `20` has converged, and sending a value equal to the stored one is not a change.
//! - An update that changes something bumps the version by exactly one and stamps each changed leaf
//!   with `now`. An update that changes nothing succeeds but leaves version, timestamps and metadata
//!   as they were (AWS bumps the version anyway; Drover does not, so a chatty device that repeats its
//!   report does not churn versions or wake up listeners).
//! - `version` in an update is optimistic concurrency: a mismatch rejects the update untouched.
//! - Limits ([`ShadowLimits`]) apply to the resulting `desired` and `reported` separately, and only to
//!   a section the update changed; a rejected update leaves the document exactly as it was.
//!
//! # Metadata
//! Metadata mirrors the data: each leaf (scalar or array; arrays are leaves, unlike AWS which keeps
//! per-element metadata) has `{"timestamp": <ms since epoch>}` giving when it last changed, and objects
//! hold their children's metadata. Deleted fields lose their metadata.
//!
//! # Convergence
//! Delta messages can be lost while a device is offline. Each delta message Drover publishes carries
//! the *whole* current delta and the document version, so it is idempotent. A device keeps the version
//! of the last document or delta it acted on; when it (re)connects it fetches the full document, and
//! it ignores any later message whose version is not [newer](ShadowDocument::is_newer) than the one it
//! has, since that message is stale or a duplicate.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::ids::IdError;
use crate::time::Timestamp;

/// A JSON object: the type of `desired`, `reported`, deltas and metadata trees.
pub type JsonObject = Map<String, Value>;

/// The name of a named shadow: 1–64 characters from `[A-Za-z0-9_-]`.
///
/// The classic (unnamed) shadow has no name; callers represent it as `Option::<ShadowName>::None`.
/// The name appears in MQTT topics and URLs, which is why `/`, `+`, `#` and `.` are excluded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShadowName(String);

/// Which half of the state an error or change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Desired,
    Reported,
}

/// Bounds on what one shadow may hold, so a device or script cannot grow a document without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Largest serialized (compact JSON) size of `desired`, and separately of `reported`.
    pub max_document_bytes: usize,
    /// Deepest nesting of objects and arrays: `{"a": 1}` is one level, `{"a": {"b": [1]}}` three.
    pub max_depth: usize,
    /// Longest object key, in bytes. Keys must also be non-empty.
    pub max_key_len: usize,
}

/// One request to change a shadow, as sent to `/update` over MQTT or HTTP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowUpdate {
    /// `state.desired`: a partial object to merge, `null` to clear all of desired, `None` to leave it.
    pub desired: Option<Value>,
    /// `state.reported`: as `desired`, for the device's side.
    pub reported: Option<Value>,
    /// `version`: apply only if the shadow is still at this version (optimistic concurrency).
    pub expected_version: Option<u64>,
    /// `clientToken`: echoed back in the accepted or rejected message so a device can match
    /// responses to its requests when several are in flight.
    pub client_token: Option<String>,
}

/// The per-leaf timestamps of a shadow, mirroring the shape of `desired` and `reported`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub desired: JsonObject,
    pub reported: JsonObject,
}

/// A device's shadow document.
///
/// Fields are private because two invariants hold between them: metadata mirrors the data leaf for
/// leaf, and no empty object is stored. [`apply`](Self::apply) and [`from_stored`](Self::from_stored)
/// are the only ways to change or build one.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowDocument {
    desired: JsonObject,
    reported: JsonObject,
    metadata: Metadata,
    version: u64,
    timestamp: Timestamp,
}

/// A shadow as the store keeps it: one JSON column each for desired, reported and metadata, plus the
/// version and the time of the last change. The delta is derived, so it is not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredShadow {
    pub desired: JsonObject,
    pub reported: JsonObject,
    pub metadata: Metadata,
    pub version: u64,
    /// When the document last changed; serialized as RFC 3339, stored by the store as milliseconds.
    pub timestamp: Timestamp,
}

/// The parts of an update that actually changed the document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowState {
    /// The effective patch to desired: changed leaves with their new values and deleted fields as
    /// `null`, so applying it to the old document reproduces the new one. `None` if desired did not
    /// change. Clearing desired with `null` shows up as a `null` per former top-level field.
    pub desired: Option<JsonObject>,
    /// As `desired`, for reported.
    pub reported: Option<JsonObject>,
}

/// How the delta moved because of an update, which tells the caller whether to publish `/update/delta`.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaChange {
    /// The delta is what it was before; publish nothing.
    Unchanged,
    /// The delta is new or different; publish it (this is the whole delta, not just the new fields).
    Changed(JsonObject),
    /// There was a delta and now there is none: the device has converged. AWS publishes nothing here.
    Cleared,
}

/// What an accepted update did: the material for the `/update/accepted` message and for deciding
/// whether to store and publish at all.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The document version after the update (unchanged if the update changed nothing).
    pub version: u64,
    /// The document timestamp after the update.
    pub timestamp: Timestamp,
    /// What was applied; empty if the update changed nothing.
    pub accepted: ShadowState,
    /// `{"timestamp": now}` for every leaf in `accepted`, deletions included.
    pub metadata: Metadata,
    /// Whether and how the delta changed.
    pub delta: DeltaChange,
    /// The update's `clientToken`, to echo back.
    pub client_token: Option<String>,
}

/// Why a shadow update was rejected. Messages say what to change; [`code`](Self::code) is stable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShadowError {
    #[error(
        "version conflict: the update expected version {expected} but the shadow is at version \
         {current}; fetch the shadow and retry with its current version"
    )]
    VersionConflict { expected: u64, current: u64 },
    #[error(
        "{section} state would be {bytes} bytes of JSON, over the limit of {max} bytes; remove \
         fields by setting them to null"
    )]
    TooLarge {
        section: Section,
        bytes: usize,
        max: usize,
    },
    #[error(
        "{section} state is nested too deeply at {path}: at most {max} levels of objects and arrays \
         are allowed"
    )]
    TooDeep {
        section: Section,
        /// JSON Pointer (RFC 6901) within the section to the first container that is too deep.
        path: String,
        max: usize,
    },
    #[error("invalid key {key:?} at {path} in {section} state: {reason}")]
    InvalidKey {
        section: Section,
        /// JSON Pointer within the section to the object holding the key.
        path: String,
        /// The key, truncated to 40 characters.
        key: String,
        reason: String,
    },
    #[error("invalid shadow update: {0}")]
    Invalid(String),
}

impl ShadowName {
    /// The human name of this kind of value, used in error messages.
    pub const KIND: &'static str = "shadow name";

    /// Validates `value` and wraps it.
    pub fn parse(value: &str) -> Result<ShadowName, IdError> {
        let err = |reason: String| IdError {
            kind: Self::KIND,
            value: value.chars().take(80).collect(),
            reason,
        };
        if value.is_empty() {
            return Err(err(
                "must not be empty (the classic shadow has no name)".into()
            ));
        }
        if value.len() > 64 {
            return Err(err("must be at most 64 characters".into()));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '_' && *c != '-')
        {
            return Err(err(format!(
                "character {bad:?} is not allowed (use letters, digits, '_' and '-')"
            )));
        }
        Ok(ShadowName(value.to_owned()))
    }

    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShadowName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ShadowName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ShadowName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for ShadowName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ShadowName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Desired => "desired",
            Section::Reported => "reported",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for ShadowLimits {
    /// AWS's classic limits: 8 KiB per section, six levels, 128-byte keys.
    fn default() -> Self {
        ShadowLimits {
            max_document_bytes: 8 * 1024,
            max_depth: 6,
            max_key_len: 128,
        }
    }
}

impl ShadowUpdate {
    /// The longest `clientToken` accepted, as in AWS.
    pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;

    /// Parses an update request body: `{"state": {"desired": …, "reported": …}, "version": n,
    /// "clientToken": "…"}`. Only `state` is required, and it must name desired or reported.
    ///
    /// Unknown fields are rejected rather than ignored, because a misspelt `version` would otherwise
    /// silently turn off the concurrency check.
    pub fn from_json(body: Value) -> Result<ShadowUpdate, ShadowError> {
        let invalid = |message: String| Err(ShadowError::Invalid(message));
        let Value::Object(body) = body else {
            return invalid(format!(
                "the body must be a JSON object like {{\"state\": {{\"desired\": {{…}}}}}}, not {}",
                kind_of(&body)
            ));
        };
        let mut update = ShadowUpdate::default();
        let mut state = None;
        for (key, value) in body {
            match key.as_str() {
                "state" => state = Some(value),
                "version" => match value.as_u64() {
                    Some(version) => update.expected_version = Some(version),
                    None => {
                        return invalid(format!(
                            "version must be a non-negative integer, not {}",
                            kind_of(&value)
                        ))
                    }
                },
                "clientToken" => match value {
                    Value::String(token) if token.len() <= Self::MAX_CLIENT_TOKEN_BYTES => {
                        update.client_token = Some(token)
                    }
                    Value::String(_) => {
                        return invalid(format!(
                            "clientToken must be at most {} bytes",
                            Self::MAX_CLIENT_TOKEN_BYTES
                        ))
                    }
                    other => {
                        return invalid(format!(
                            "clientToken must be a string, not {}",
                            kind_of(&other)
                        ))
                    }
                },
                other => {
                    return invalid(format!(
                        "unknown field {:?} (expected state, version or clientToken)",
                        truncate(other)
                    ))
                }
            }
        }
        let state = match state {
            Some(Value::Object(state)) => state,
            Some(other) => {
                return invalid(format!("state must be an object, not {}", kind_of(&other)))
            }
            None => {
                return invalid(
                    "missing state: send {\"state\": {\"desired\": {…}}} or state.reported".into(),
                )
            }
        };
        for (key, value) in state {
            match key.as_str() {
                "desired" => update.desired = Some(value),
                "reported" => update.reported = Some(value),
                other => {
                    return invalid(format!(
                        "state.{} cannot be updated (expected desired or reported)",
                        truncate(other)
                    ))
                }
            }
        }
        if update.desired.is_none() && update.reported.is_none() {
            return invalid("state must contain desired or reported".into());
        }
        check_patch_type(Section::Desired, update.desired.as_ref())?;
        check_patch_type(Section::Reported, update.reported.as_ref())?;
        Ok(update)
    }
}

impl ShadowDocument {
    /// An empty shadow at version 0. The first update that changes something makes it version 1, and
    /// an update with `version: 0` therefore means "only if nobody has written it yet".
    pub fn new(now: Timestamp) -> ShadowDocument {
        ShadowDocument {
            desired: Map::new(),
            reported: Map::new(),
            metadata: Metadata::default(),
            version: 0,
            timestamp: now,
        }
    }

    /// Applies `update` at time `now`. On error the document is unchanged.
    pub fn apply(
        &mut self,
        update: ShadowUpdate,
        now: Timestamp,
        limits: &ShadowLimits,
    ) -> Result<UpdateOutcome, ShadowError> {
        check_patch_type(Section::Desired, update.desired.as_ref())?;
        check_patch_type(Section::Reported, update.reported.as_ref())?;
        if let Some(expected) = update.expected_version {
            if expected != self.version {
                return Err(ShadowError::VersionConflict {
                    expected,
                    current: self.version,
                });
            }
        }
        // Both sections are patched on copies and checked before either is committed, so an update
        // whose reported half is too large does not leave its desired half applied.
        let desired = patch_section(
            Section::Desired,
            &self.desired,
            &self.metadata.desired,
            update.desired,
            now,
            limits,
        )?;
        let reported = patch_section(
            Section::Reported,
            &self.reported,
            &self.metadata.reported,
            update.reported,
            now,
            limits,
        )?;

        let mut outcome = UpdateOutcome {
            version: self.version,
            timestamp: self.timestamp,
            accepted: ShadowState::default(),
            metadata: Metadata::default(),
            delta: DeltaChange::Unchanged,
            client_token: update.client_token,
        };
        if desired.is_none() && reported.is_none() {
            return Ok(outcome);
        }
        let old_delta = self.delta();
        if let Some(change) = desired {
            self.desired = change.state;
            self.metadata.desired = change.metadata;
            outcome.metadata.desired = stamp_leaves(&change.applied, now);
            outcome.accepted.desired = Some(change.applied);
        }
        if let Some(change) = reported {
            self.reported = change.state;
            self.metadata.reported = change.metadata;
            outcome.metadata.reported = stamp_leaves(&change.applied, now);
            outcome.accepted.reported = Some(change.applied);
        }
        self.version += 1;
        self.timestamp = now;
        outcome.version = self.version;
        outcome.timestamp = now;
        outcome.delta = match (old_delta, self.delta()) {
            (old, new) if old == new => DeltaChange::Unchanged,
            (_, None) => DeltaChange::Cleared,
            (_, Some(delta)) => DeltaChange::Changed(delta),
        };
        Ok(outcome)
    }

    /// The desired fields the device has not reported yet, or `None` when it has converged.
    ///
    /// Objects are compared field by field; anything else (arrays included) must be equal as a whole.
    /// A desired field absent from reported is in the delta; a reported-only field is not, because the
    /// device may report more than anyone asks of it.
    pub fn delta(&self) -> Option<JsonObject> {
        let delta = delta_of(&self.desired, &self.reported);
        (!delta.is_empty()).then_some(delta)
    }

    /// The desired metadata of the fields in [`delta`](Self::delta), in the same shape.
    pub fn delta_metadata(&self) -> Option<JsonObject> {
        self.delta()
            .map(|delta| restrict_metadata(&delta, &self.metadata.desired))
    }

    /// Whether this document is newer than `version`, the one a device last acted on. A device ignores
    /// any document or delta that is not newer: it is stale or a duplicate.
    pub fn is_newer(&self, version: u64) -> bool {
        self.version > version
    }

    pub fn desired(&self) -> &JsonObject {
        &self.desired
    }

    pub fn reported(&self) -> &JsonObject {
        &self.reported
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// 0 for a shadow never written; bumped by one on every update that changes something.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the document last changed.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The document as served by `GET` and `/get/accepted`:
    /// `{"state": {"desired", "reported", "delta"?}, "metadata": {"desired", "reported"}, "version",
    /// "timestamp"}`. `desired` and `reported` are always present (possibly `{}`); `delta` only when
    /// there is one.
    pub fn to_json(&self) -> Value {
        let mut state = json!({ "desired": self.desired, "reported": self.reported });
        if let Some(delta) = self.delta() {
            state["delta"] = Value::Object(delta);
        }
        json!({
            "state": state,
            "metadata": self.metadata,
            "version": self.version,
            "timestamp": self.timestamp,
        })
    }

    /// The `/update/delta` message: `{"state": delta, "metadata": …, "version", "timestamp"}`, or
    /// `None` when there is no delta.
    pub fn delta_json(&self) -> Option<Value> {
        let delta = self.delta()?;
        let metadata = restrict_metadata(&delta, &self.metadata.desired);
        Some(json!({
            "state": delta,
            "metadata": metadata,
            "version": self.version,
            "timestamp": self.timestamp,
        }))
    }

    /// The columns to store.
    pub fn to_stored(&self) -> StoredShadow {
        StoredShadow {
            desired: self.desired.clone(),
            reported: self.reported.clone(),
            metadata: self.metadata.clone(),
            version: self.version,
            timestamp: self.timestamp,
        }
    }

    /// Rebuilds a document from stored columns.
    ///
    /// This never fails: a row edited by hand could break the invariants, so empty objects are pruned
    /// and metadata is rebuilt to mirror the data, keeping each stored leaf timestamp and using the
    /// document timestamp where one is missing. A row written by [`to_stored`](Self::to_stored) comes
    /// back unchanged.
    pub fn from_stored(stored: StoredShadow) -> ShadowDocument {
        let StoredShadow {
            mut desired,
            mut reported,
            metadata,
            version,
            timestamp,
        } = stored;
        let metadata = Metadata {
            desired: normalize(&mut desired, Some(&metadata.desired), timestamp),
            reported: normalize(&mut reported, Some(&metadata.reported), timestamp),
        };
        ShadowDocument {
            desired,
            reported,
            metadata,
            version,
            timestamp,
        }
    }
}

impl Serialize for ShadowDocument {
    /// Serializes as [`to_json`](ShadowDocument::to_json).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl UpdateOutcome {
    /// Whether the update changed the document (and so must be stored).
    pub fn changed(&self) -> bool {
        self.accepted.desired.is_some() || self.accepted.reported.is_some()
    }

    /// The `/update/accepted` message: the applied state, its metadata, the version and timestamp,
    /// and the `clientToken` if the update had one. Untouched sections are omitted.
    pub fn accepted_json(&self) -> Value {
        let mut state = Map::new();
        let mut metadata = Map::new();
        for (section, applied, stamps) in [
            (
                Section::Desired,
                &self.accepted.desired,
                &self.metadata.desired,
            ),
            (
                Section::Reported,
                &self.accepted.reported,
                &self.metadata.reported,
            ),
        ] {
            if let Some(applied) = applied {
                state.insert(section.as_str().into(), Value::Object(applied.clone()));
                metadata.insert(section.as_str().into(), Value::Object(stamps.clone()));
            }
        }
        let mut message = json!({
            "state": state,
            "metadata": metadata,
            "version": self.version,
            "timestamp": self.timestamp,
        });
        if let Some(token) = &self.client_token {
            message["clientToken"] = Value::String(token.clone());
        }
        message
    }
}

impl ShadowError {
    /// A stable, machine-readable name for the error, for `/rejected` payloads and API clients.
    pub fn code(&self) -> &'static str {
        match self {
            ShadowError::VersionConflict { .. } => "version_conflict",
            ShadowError::TooLarge { .. } => "too_large",
            ShadowError::TooDeep { .. } => "too_deep",
            ShadowError::InvalidKey { .. } => "invalid_key",
            ShadowError::Invalid(_) => "invalid",
        }
    }

    /// The `/update/rejected` message: `{"code", "message", "clientToken"?}`.
    pub fn rejected_json(&self, client_token: Option<&str>) -> Value {
        let mut message = json!({ "code": self.code(), "message": self.to_string() });
        if let Some(token) = client_token {
            message["clientToken"] = Value::String(token.to_owned());
        }
        message
    }
}

/// A section after patching, not yet committed.
struct SectionChange {
    state: JsonObject,
    metadata: JsonObject,
    applied: JsonObject,
}

/// Rejects a top-level `desired` or `reported` that is neither an object nor `null`.
fn check_patch_type(section: Section, patch: Option<&Value>) -> Result<(), ShadowError> {
    match patch {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(ShadowError::Invalid(format!(
            "state.{section} must be an object or null, not {}",
            kind_of(other)
        ))),
    }
}

/// Patches a copy of one section and checks it against the limits. `None` means nothing changed.
fn patch_section(
    section: Section,
    state: &JsonObject,
    metadata: &JsonObject,
    patch: Option<Value>,
    now: Timestamp,
    limits: &ShadowLimits,
) -> Result<Option<SectionChange>, ShadowError> {
    let change = match patch {
        None => return Ok(None),
        Some(Value::Null) => {
            if state.is_empty() {
                return Ok(None);
            }
            // Spelling the clear out as one null per field keeps `applied` an ordinary patch.
            let applied = state.keys().map(|key| (key.clone(), Value::Null)).collect();
            SectionChange {
                state: Map::new(),
                metadata: Map::new(),
                applied,
            }
        }
        Some(Value::Object(patch)) => {
            let mut state = state.clone();
            let mut metadata = metadata.clone();
            let applied = merge_object(&mut state, &mut metadata, patch, now);
            if applied.is_empty() {
                return Ok(None);
            }
            SectionChange {
                state,
                metadata,
                applied,
            }
        }
        Some(other) => {
            check_patch_type(section, Some(&other))?;
            return Ok(None);
        }
    };
    check_limits(section, &change.state, limits)?;
    Ok(Some(change))
}

/// Merges `patch` into `target`, keeping `metadata` in step, and returns the effective patch.
///
/// Data and metadata are walked together rather than metadata being read on its own, because a leaf's
/// `{"timestamp": …}` cannot otherwise be told apart from an object with a field named `timestamp`.
fn merge_object(
    target: &mut JsonObject,
    metadata: &mut JsonObject,
    patch: JsonObject,
    now: Timestamp,
) -> JsonObject {
    let mut applied = Map::new();
    for (key, value) in patch {
        match value {
            Value::Null => {
                if target.remove(&key).is_some() {
                    metadata.remove(&key);
                    applied.insert(key, Value::Null);
                }
            }
            Value::Object(child_patch) => {
                let existed = target.contains_key(&key);
                let was_object = matches!(target.get(&key), Some(Value::Object(_)));
                if !was_object {
                    // The old value was a leaf (or absent): its `{"timestamp"}` is not child metadata.
                    metadata.remove(&key);
                }
                let child_target = object_entry(target, &key);
                let child_metadata = object_entry(metadata, &key);
                let child_applied = merge_object(child_target, child_metadata, child_patch, now);
                let now_empty = child_target.is_empty();
                if now_empty {
                    target.remove(&key);
                    metadata.remove(&key);
                }
                if existed && !was_object {
                    let replacement = if now_empty {
                        Value::Null
                    } else {
                        Value::Object(child_applied)
                    };
                    applied.insert(key, replacement);
                } else if !child_applied.is_empty() {
                    applied.insert(key, Value::Object(child_applied));
                }
            }
            leaf => {
                if target.get(&key).is_some_and(|old| json_eq(old, &leaf)) {
                    continue;
                }
                metadata.insert(key.clone(), leaf_metadata(now));
                target.insert(key.clone(), leaf.clone());
                applied.insert(key, leaf);
            }
        }
    }
    applied
}

/// The object at `key`, inserting an empty one if the key is absent or holds something else.
fn object_entry<'a>(map: &'a mut JsonObject, key: &str) -> &'a mut JsonObject {
    let value = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(object) => object,
        _ => unreachable!("the entry was just made an object"),
    }
}

/// Desired fields that differ from reported; see [`ShadowDocument::delta`].
fn delta_of(desired: &JsonObject, reported: &JsonObject) -> JsonObject {
    let mut delta = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want_child), Some(Value::Object(have_child))) => {
                let child = delta_of(want_child, have_child);
                if !child.is_empty() {
                    delta.insert(key.clone(), Value::Object(child));
                }
            }
            (_, Some(have)) if json_eq(want, have) => {}
            _ => {
                delta.insert(key.clone(), want.clone());
            }
        }
    }
    delta
}

/// The part of `metadata` that mirrors `subset`, a sub-tree of the data `metadata` describes.
fn restrict_metadata(subset: &JsonObject, metadata: &JsonObject) -> JsonObject {
    let mut restricted = Map::new();
    for (key, value) in subset {
        let Some(entry) = metadata.get(key) else {
            continue;
        };
        let entry = match (value, entry) {
            (Value::Object(child), Value::Object(child_metadata)) => {
                Value::Object(restrict_metadata(child, child_metadata))
            }
            _ => entry.clone(),
        };
        restricted.insert(key.clone(), entry);
    }
    restricted
}

/// Metadata for an effective patch: `{"timestamp": now}` at every leaf, deletions included.
fn stamp_leaves(applied: &JsonObject, now: Timestamp) -> JsonObject {
    applied
        .iter()
        .map(|(key, value)| {
            let stamp = match value {
                Value::Object(child) => Value::Object(stamp_leaves(child, now)),
                _ => leaf_metadata(now),
            };
            (key.clone(), stamp)
        })
        .collect()
}

/// Prunes empty objects from `data` and returns metadata mirroring it, taking leaf timestamps from
/// `old` where present and `fallback` otherwise.
fn normalize(data: &mut JsonObject, old: Option<&JsonObject>, fallback: Timestamp) -> JsonObject {
    let mut metadata = Map::new();
    data.retain(|key, value| {
        let old_entry = old.and_then(|old| old.get(key));
        let entry = match value {
            Value::Object(child) => {
                let child_metadata =
                    normalize(child, old_entry.and_then(Value::as_object), fallback);
                if child.is_empty() {
                    return false;
                }
                Value::Object(child_metadata)
            }
            _ => leaf_metadata(old_entry.and_then(leaf_timestamp).unwrap_or(fallback)),
        };
        metadata.insert(key.clone(), entry);
        true
    });
    metadata
}

fn leaf_metadata(at: Timestamp) -> Value {
    json!({ "timestamp": at.as_millis() })
}

fn leaf_timestamp(entry: &Value) -> Option<Timestamp> {
    entry.get("timestamp")?.as_i64().map(Timestamp::from_millis)
}

/// Checks keys, depth and size of one resulting section.
fn check_limits(
    section: Section,
    state: &JsonObject,
    limits: &ShadowLimits,
) -> Result<(), ShadowError> {
    for (key, value) in state {
        check_key(section, "", key, limits)?;
        check_shape(section, value, 2, &mut pointer_child("", key), limits)?;
    }
    // Compact JSON is what travels over MQTT and what the store keeps, so it is what we measure.
    let bytes = serde_json::to_vec(state).map_or(usize::MAX, |json| json.len());
    if bytes > limits.max_document_bytes {
        return Err(ShadowError::TooLarge {
            section,
            bytes,
            max: limits.max_document_bytes,
        });
    }
    Ok(())
}

/// Walks `value`, which sits at nesting level `depth` if it is a container, checking depth and keys.
fn check_shape(
    section: Section,
    value: &Value,
    depth: usize,
    path: &mut String,
    limits: &ShadowLimits,
) -> Result<(), ShadowError> {
    let too_deep = |path: &str| ShadowError::TooDeep {
        section,
        path: path.to_owned(),
        max: limits.max_depth,
    };
    match value {
        Value::Object(object) => {
            if depth > limits.max_depth {
                return Err(too_deep(path));
            }
            for (key, child) in object {
                check_key(section, path, key, limits)?;
                let len = path.len();
                *path = pointer_child(path, key);
                check_shape(section, child, depth + 1, path, limits)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            if depth > limits.max_depth {
                return Err(too_deep(path));
            }
            for (item_idx, item) in items.iter().enumerate() {
                let len = path.len();
                *path = pointer_child(path, &item_idx.to_string());
                check_shape(section, item, depth + 1, path, limits)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_key(
    section: Section,
    path: &str,
    key: &str,
    limits: &ShadowLimits,
) -> Result<(), ShadowError> {
    let reason = if key.is_empty() {
        "keys must not be empty".to_owned()
    } else if key.len() > limits.max_key_len {
        format!(
            "keys must be at most {} bytes, this one is {}",
            limits.max_key_len,
            key.len()
        )
    } else {
        return Ok(());
    };
    Err(ShadowError::InvalidKey {
        section,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        key: key.chars().take(40).collect(),
        reason,
    })
}

/// `path` extended by one JSON Pointer segment, escaped as RFC 6901 requires.
fn pointer_child(path: &str, segment: &str) -> String {
    format!("{path}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

/// JSON equality with numbers compared by value, so `20` and `20.0` are the same reading.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else if x.is_f64() || y.is_f64() {
                x.as_f64() == y.as_f64()
            } else {
                // One is negative and the other beyond i64: different integers.
                false
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

/// A JSON value's type, for error messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn obj(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn desired(patch: Value) -> ShadowUpdate {
        ShadowUpdate {
            desired: Some(patch),
            ..ShadowUpdate::default()
        }
    }

    fn reported(patch: Value) -> ShadowUpdate {
        ShadowUpdate {
            reported: Some(patch),
            ..ShadowUpdate::default()
        }
    }

    /// A document whose desired state is `state`, written at time 1.
    fn shadow_with_desired(state: Value) -> ShadowDocument {
        let mut shadow = ShadowDocument::new(t(0));
        shadow
            .apply(desired(state), t(1), &ShadowLimits::default())
            .unwrap();
        shadow
    }

    #[test]
    fn patches_merge_objects_replace_leaves_and_delete_nulls() {
        // (case, initial desired, patch, resulting desired, effective patch or null if no change)
        let cases = [
            (
                "new fields are added beside old ones",
                json!({"a": 1}),
                json!({"b": 2}),
                json!({"a": 1, "b": 2}),
                json!({"b": 2}),
            ),
            (
                "nested objects merge field by field",
                json!({"cfg": {"x": 1, "y": {"z": 2}}}),
                json!({"cfg": {"y": {"w": 3}}}),
                json!({"cfg": {"x": 1, "y": {"z": 2, "w": 3}}}),
                json!({"cfg": {"y": {"w": 3}}}),
            ),
            (
                "arrays are replaced whole, not merged",
                json!({"list": [1, 2, 3]}),
                json!({"list": [4]}),
                json!({"list": [4]}),
                json!({"list": [4]}),
            ),
            (
                "an object replaces a scalar",
                json!({"a": 5}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
            ),
            (
                "a scalar replaces an object",
                json!({"a": {"b": 1}}),
                json!({"a": 5}),
                json!({"a": 5}),
                json!({"a": 5}),
            ),
            (
                "null deletes a field",
                json!({"a": 1, "b": 2}),
                json!({"a": null}),
                json!({"b": 2}),
                json!({"a": null}),
            ),
            (
                "deleting the last child prunes the empty parents",
                json!({"a": {"b": {"c": 1}}, "d": 1}),
                json!({"a": {"b": {"c": null}}}),
                json!({"d": 1}),
                json!({"a": {"b": {"c": null}}}),
            ),
            (
                "an empty object over a scalar removes it rather than storing {}",
                json!({"a": 5}),
                json!({"a": {}}),
                json!({}),
                json!({"a": null}),
            ),
            (
                "deleting an absent field changes nothing",
                json!({"a": 1}),
                json!({"zzz": null, "deep": {"er": null}}),
                json!({"a": 1}),
                Value::Null,
            ),
            (
                "setting an equal value changes nothing, numbers compared by value",
                json!({"a": 20, "b": [1, {"c": 2}]}),
                json!({"a": 20.0, "b": [1.0, {"c": 2}]}),
                json!({"a": 20, "b": [1, {"c": 2}]}),
                Value::Null,
            ),
            (
                "arrays keep nulls and empty objects inside them verbatim",
                json!({}),
                json!({"a": [null, {}]}),
                json!({"a": [null, {}]}),
                json!({"a": [null, {}]}),
            ),
        ];
        for (case, initial, patch, expected, effective) in cases {
            let mut shadow = shadow_with_desired(initial);
            let outcome = shadow
                .apply(desired(patch), t(2), &ShadowLimits::default())
                .unwrap();
            assert_eq!(Value::Object(shadow.desired().clone()), expected, "{case}");
            let effective = match effective {
                Value::Null => None,
                other => Some(obj(other)),
            };
            assert_eq!(outcome.accepted.desired, effective, "{case}");
            assert_eq!(outcome.accepted.reported, None, "{case}");
        }
    }

    #[test]
    fn null_desired_clears_everything_and_reports_each_field_deleted() {
        let mut shadow = shadow_with_desired(json!({"a": 1, "b": {"c": 2}}));
        let outcome = shadow
            .apply(desired(Value::Null), t(2), &ShadowLimits::default())
            .unwrap();
        assert!(shadow.desired().is_empty());
        assert!(shadow.metadata().desired.is_empty());
        assert_eq!(
            outcome.accepted.desired,
            Some(obj(json!({"a": null, "b": null})))
        );
        assert_eq!(
            Value::Object(outcome.metadata.desired),
            json!({"a": {"timestamp": 2}, "b": {"timestamp": 2}})
        );
    }

    #[test]
    fn metadata_stamps_each_changed_leaf_and_forgets_deleted_ones() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        // (time, patch to reported, expected reported metadata afterwards)
        let steps = [
            (
                10,
                json!({"temp": 20, "net": {"ip": "10.0.0.2", "dns": ["1.1.1.1"]}}),
                json!({"temp": {"timestamp": 10}, "net": {"ip": {"timestamp": 10}, "dns": {"timestamp": 10}}}),
            ),
            (
                20,
                json!({"temp": 20, "net": {"ip": "10.0.0.3"}}),
                json!({"temp": {"timestamp": 10}, "net": {"ip": {"timestamp": 20}, "dns": {"timestamp": 10}}}),
            ),
            (
                30,
                json!({"net": {"dns": null}, "timestamp": {"timestamp": 1}}),
                json!({"temp": {"timestamp": 10}, "net": {"ip": {"timestamp": 20}}, "timestamp": {"timestamp": {"timestamp": 30}}}),
            ),
            (
                40,
                json!({"net": "offline"}),
                json!({"temp": {"timestamp": 10}, "net": {"timestamp": 40}, "timestamp": {"timestamp": {"timestamp": 30}}}),
            ),
        ];
        for (now, patch, expected) in steps {
            shadow.apply(reported(patch), t(now), &limits).unwrap();
            assert_eq!(
                Value::Object(shadow.metadata().reported.clone()),
                expected,
                "at {now}"
            );
        }
    }

    #[test]
    fn outcome_metadata_covers_exactly_the_applied_leaves() {
        let mut shadow = shadow_with_desired(json!({"a": 1, "b": {"c": 1, "d": 1}}));
        let outcome = shadow
            .apply(
                desired(json!({"a": 1, "b": {"c": 2, "d": null}})),
                t(5),
                &ShadowLimits::default(),
            )
            .unwrap();
        assert_eq!(
            Value::Object(outcome.metadata.desired),
            json!({"b": {"c": {"timestamp": 5}, "d": {"timestamp": 5}}})
        );
        assert!(outcome.metadata.reported.is_empty());
    }

    #[test]
    fn version_bumps_once_per_update_that_changes_something() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        // (update, expected version afterwards, expected changed, expected document timestamp)
        let steps = [
            (desired(json!({"a": 1})), 1, true, 1),
            (desired(json!({"a": 1})), 1, false, 1),
            (
                ShadowUpdate {
                    desired: Some(json!({"a": 2})),
                    reported: Some(json!({"a": 1})),
                    ..ShadowUpdate::default()
                },
                2,
                true,
                3,
            ),
            (reported(json!({"missing": null})), 2, false, 3),
            (desired(json!({})), 2, false, 3),
            (ShadowUpdate::default(), 2, false, 3),
            (reported(Value::Null), 3, true, 7),
            (reported(Value::Null), 3, false, 7),
        ];
        for (step_idx, (update, version, changed, timestamp)) in steps.into_iter().enumerate() {
            let now = t(step_idx as i64 + 1);
            let outcome = shadow.apply(update, now, &limits).unwrap();
            assert_eq!(outcome.version, version, "step {step_idx}");
            assert_eq!(outcome.changed(), changed, "step {step_idx}");
            assert_eq!(shadow.version(), version, "step {step_idx}");
            assert_eq!(shadow.timestamp(), t(timestamp), "step {step_idx}");
        }
    }

    #[test]
    fn version_conflict_rejects_and_leaves_the_document_untouched() {
        let mut shadow = shadow_with_desired(json!({"a": 1}));
        let before = shadow.clone();
        let update = ShadowUpdate {
            desired: Some(json!({"a": 2})),
            expected_version: Some(7),
            ..ShadowUpdate::default()
        };
        let err = shadow
            .apply(update, t(2), &ShadowLimits::default())
            .unwrap_err();
        assert_eq!(
            err,
            ShadowError::VersionConflict {
                expected: 7,
                current: 1
            }
        );
        assert_eq!(shadow, before);

        let matching = ShadowUpdate {
            desired: Some(json!({"a": 2})),
            expected_version: Some(1),
            ..ShadowUpdate::default()
        };
        let outcome = shadow
            .apply(matching, t(3), &ShadowLimits::default())
            .unwrap();
        assert_eq!(outcome.version, 2);
    }

    #[test]
    fn version_zero_means_only_if_the_shadow_was_never_written() {
        let create = || ShadowUpdate {
            desired: Some(json!({"a": 1})),
            expected_version: Some(0),
            ..ShadowUpdate::default()
        };
        let mut shadow = ShadowDocument::new(t(0));
        assert!(shadow
            .apply(create(), t(1), &ShadowLimits::default())
            .is_ok());
        assert_eq!(
            shadow
                .apply(create(), t(2), &ShadowLimits::default())
                .unwrap_err()
                .code(),
            "version_conflict"
        );
    }

    #[test]
    fn delta_lists_desired_fields_the_device_has_not_reported() {
        // (case, desired, reported, expected delta)
        let cases = [
            (
                "equal states have no delta",
                json!({"a": 1}),
                json!({"a": 1}),
                None,
            ),
            ("empty shadow has no delta", json!({}), json!({}), None),
            (
                "a desired field absent from reported is in the delta",
                json!({"a": 1, "b": 2}),
                json!({"a": 1}),
                Some(json!({"b": 2})),
            ),
            (
                "reported-only fields are not in the delta",
                json!({"a": 1}),
                json!({"a": 1, "uptime": 99}),
                None,
            ),
            (
                "nested objects contribute only their differing leaves",
                json!({"cfg": {"x": 1, "y": {"z": 2, "w": 3}}}),
                json!({"cfg": {"x": 1, "y": {"z": 9, "w": 3}}}),
                Some(json!({"cfg": {"y": {"z": 2}}})),
            ),
            (
                "arrays are compared whole",
                json!({"list": [1, 2, 3]}),
                json!({"list": [1, 2]}),
                Some(json!({"list": [1, 2, 3]})),
            ),
            (
                "a desired object over a reported scalar is in the delta whole",
                json!({"a": {"b": 1}}),
                json!({"a": 1}),
                Some(json!({"a": {"b": 1}})),
            ),
            (
                "numbers that are equal by value are converged",
                json!({"temp": 20, "list": [1]}),
                json!({"temp": 20.0, "list": [1.0]}),
                None,
            ),
        ];
        for (case, want, have, expected) in cases {
            let mut shadow = ShadowDocument::new(t(0));
            let update = ShadowUpdate {
                desired: Some(want),
                reported: Some(have),
                ..ShadowUpdate::default()
            };
            shadow
                .apply(update, t(1), &ShadowLimits::default())
                .unwrap();
            assert_eq!(shadow.delta(), expected.map(obj), "{case}");
        }
    }

    #[test]
    fn delta_changes_are_announced_until_the_report_converges() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        // (update, expected delta change)
        let steps = [
            (
                desired(json!({"led": "on", "fan": 2})),
                DeltaChange::Changed(obj(json!({"led": "on", "fan": 2}))),
            ),
            (
                reported(json!({"led": "on"})),
                DeltaChange::Changed(obj(json!({"fan": 2}))),
            ),
            (reported(json!({"uptime": 5})), DeltaChange::Unchanged),
            (reported(json!({"fan": 2})), DeltaChange::Cleared),
            (desired(json!({"fan": 2})), DeltaChange::Unchanged),
            (
                desired(json!({"fan": 3})),
                DeltaChange::Changed(obj(json!({"fan": 3}))),
            ),
            (desired(json!({"fan": null})), DeltaChange::Cleared),
        ];
        for (step_idx, (update, expected)) in steps.into_iter().enumerate() {
            let outcome = shadow
                .apply(update, t(step_idx as i64 + 1), &limits)
                .unwrap();
            assert_eq!(outcome.delta, expected, "step {step_idx}");
        }
        assert_eq!(shadow.delta(), None);
        assert_eq!(shadow.delta_json(), None);
    }

    #[test]
    fn delta_metadata_mirrors_the_delta_from_desired_metadata() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        shadow
            .apply(
                desired(json!({"a": 1, "cfg": {"x": 1, "y": 2}})),
                t(1),
                &limits,
            )
            .unwrap();
        shadow
            .apply(desired(json!({"cfg": {"y": 3}})), t(2), &limits)
            .unwrap();
        shadow
            .apply(reported(json!({"a": 1, "cfg": {"x": 1}})), t(3), &limits)
            .unwrap();
        assert_eq!(shadow.delta(), Some(obj(json!({"cfg": {"y": 3}}))));
        assert_eq!(
            shadow.delta_metadata(),
            Some(obj(json!({"cfg": {"y": {"timestamp": 2}}})))
        );
        assert_eq!(
            shadow.delta_json(),
            Some(json!({
                "state": {"cfg": {"y": 3}},
                "metadata": {"cfg": {"y": {"timestamp": 2}}},
                "version": 3,
                "timestamp": "1970-01-01T00:00:00.003Z",
            }))
        );
    }

    #[test]
    fn limits_reject_updates_atomically_with_an_actionable_error() {
        let small = ShadowLimits {
            max_document_bytes: 64,
            max_depth: 3,
            max_key_len: 8,
        };
        // (case, update, expected code, expected message)
        let cases = [
            (
                "desired over the size limit",
                desired(json!({"blob": "x".repeat(60)})),
                "too_large",
                "desired state would be 78 bytes of JSON, over the limit of 64 bytes; remove fields by setting them to null",
            ),
            (
                "reported too deep, even when desired in the same update is fine",
                ShadowUpdate {
                    desired: Some(json!({"ok": 2})),
                    reported: Some(json!({"a": {"b": {"c": {"d": 1}}}})),
                    ..ShadowUpdate::default()
                },
                "too_deep",
                "reported state is nested too deeply at /a/b/c: at most 3 levels of objects and arrays are allowed",
            ),
            (
                "arrays count as a level",
                desired(json!({"a": {"b": [[1]]}})),
                "too_deep",
                "desired state is nested too deeply at /a/b/0: at most 3 levels of objects and arrays are allowed",
            ),
            (
                "key too long",
                desired(json!({"cfg": {"muchtoolong": 1}})),
                "invalid_key",
                "invalid key \"muchtoolong\" at /cfg in desired state: keys must be at most 8 bytes, this one is 11",
            ),
            (
                "empty key",
                reported(json!({"": 1})),
                "invalid_key",
                "invalid key \"\" at / in reported state: keys must not be empty",
            ),
            (
                "desired that is not an object",
                desired(json!([1, 2])),
                "invalid",
                "invalid shadow update: state.desired must be an object or null, not an array",
            ),
        ];
        for (case, update, code, message) in cases {
            let mut shadow = ShadowDocument::new(t(0));
            shadow
                .apply(
                    ShadowUpdate {
                        desired: Some(json!({"ok": 1})),
                        reported: Some(json!({"ok": 1})),
                        ..ShadowUpdate::default()
                    },
                    t(1),
                    &small,
                )
                .unwrap();
            let before = shadow.clone();
            let err = shadow.apply(update, t(2), &small).unwrap_err();
            assert_eq!(err.code(), code, "{case}");
            assert_eq!(err.to_string(), message, "{case}");
            assert_eq!(shadow, before, "{case}");
        }
    }

    #[test]
    fn limits_allow_a_document_exactly_at_the_bounds() {
        let limits = ShadowLimits {
            max_document_bytes: 17,
            max_depth: 3,
            max_key_len: 3,
        };
        let mut shadow = ShadowDocument::new(t(0));
        // {"abc":{"b":[1]}} is 17 bytes, three levels, and its longest key is 3 bytes.
        let outcome = shadow.apply(desired(json!({"abc": {"b": [1]}})), t(1), &limits);
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    #[test]
    fn to_json_has_the_aws_shape() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        shadow
            .apply(
                desired(json!({"led": "on", "cfg": {"rate": 5}})),
                t(1_000),
                &limits,
            )
            .unwrap();
        shadow
            .apply(
                reported(json!({"led": "off", "cfg": {"rate": 5}})),
                t(2_000),
                &limits,
            )
            .unwrap();
        let expected = json!({
            "state": {
                "desired": {"led": "on", "cfg": {"rate": 5}},
                "reported": {"led": "off", "cfg": {"rate": 5}},
                "delta": {"led": "on"},
            },
            "metadata": {
                "desired": {"led": {"timestamp": 1000}, "cfg": {"rate": {"timestamp": 1000}}},
                "reported": {"led": {"timestamp": 2000}, "cfg": {"rate": {"timestamp": 2000}}},
            },
            "version": 2,
            "timestamp": "1970-01-01T00:00:02.000Z",
        });
        assert_eq!(shadow.to_json(), expected);
        assert_eq!(serde_json::to_value(&shadow).unwrap(), expected);

        let empty = ShadowDocument::new(t(0)).to_json();
        assert_eq!(
            empty,
            json!({
                "state": {"desired": {}, "reported": {}},
                "metadata": {"desired": {}, "reported": {}},
                "version": 0,
                "timestamp": "1970-01-01T00:00:00.000Z",
            })
        );
    }

    #[test]
    fn stored_form_round_trips_through_json() {
        let limits = ShadowLimits::default();
        let mut shadow = ShadowDocument::new(t(0));
        shadow
            .apply(
                ShadowUpdate {
                    desired: Some(json!({"a": {"b": [1, {"c": null}]}, "timestamp": {"x": 1}})),
                    reported: Some(json!({"a": 1.5})),
                    ..ShadowUpdate::default()
                },
                t(1_234),
                &limits,
            )
            .unwrap();
        let stored = shadow.to_stored();
        let text = serde_json::to_string(&stored).unwrap();
        let parsed: StoredShadow = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, stored);
        assert_eq!(ShadowDocument::from_stored(parsed), shadow);
    }

    #[test]
    fn from_stored_repairs_hand_edited_rows() {
        let stored = StoredShadow {
            desired: obj(json!({"a": 1, "b": 2, "empty": {"inner": {}}})),
            reported: obj(json!({})),
            metadata: Metadata {
                desired: obj(json!({"a": {"timestamp": 5}, "gone": {"timestamp": 6}})),
                reported: obj(json!({"stale": {"timestamp": 7}})),
            },
            version: 4,
            timestamp: t(9),
        };
        let shadow = ShadowDocument::from_stored(stored);
        assert_eq!(
            Value::Object(shadow.desired().clone()),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(
            Value::Object(shadow.metadata().desired.clone()),
            json!({"a": {"timestamp": 5}, "b": {"timestamp": 9}})
        );
        assert!(shadow.metadata().reported.is_empty());
        assert_eq!(shadow.version(), 4);
    }

    #[test]
    fn update_bodies_parse_or_say_what_is_wrong() {
        let ok = ShadowUpdate::from_json(json!({
            "state": {"desired": {"a": 1}, "reported": null},
            "version": 3,
            "clientToken": "req-1",
        }))
        .unwrap();
        assert_eq!(
            ok,
            ShadowUpdate {
                desired: Some(json!({"a": 1})),
                reported: Some(Value::Null),
                expected_version: Some(3),
                client_token: Some("req-1".into()),
            }
        );
        // (body, expected message)
        let bad = [
            (
                json!([1]),
                "the body must be a JSON object like {\"state\": {\"desired\": {…}}}, not an array",
            ),
            (
                json!({"version": 1}),
                "missing state: send {\"state\": {\"desired\": {…}}} or state.reported",
            ),
            (
                json!({"state": {}}),
                "state must contain desired or reported",
            ),
            (json!({"state": 1}), "state must be an object, not a number"),
            (
                json!({"state": {"delta": {}}}),
                "state.delta cannot be updated (expected desired or reported)",
            ),
            (
                json!({"state": {"desired": "on"}}),
                "state.desired must be an object or null, not a string",
            ),
            (
                json!({"state": {"desired": {}}, "verison": 1}),
                "unknown field \"verison\" (expected state, version or clientToken)",
            ),
            (
                json!({"state": {"desired": {}}, "version": -1}),
                "version must be a non-negative integer, not a number",
            ),
            (
                json!({"state": {"desired": {}}, "clientToken": 7}),
                "clientToken must be a string, not a number",
            ),
            (
                json!({"state": {"desired": {}}, "clientToken": "x".repeat(65)}),
                "clientToken must be at most 64 bytes",
            ),
        ];
        for (body, message) in bad {
            let err = ShadowUpdate::from_json(body.clone()).unwrap_err();
            assert_eq!(err, ShadowError::Invalid(message.into()), "{body}");
        }
    }

    #[test]
    fn accepted_and_rejected_messages_echo_the_client_token() {
        let mut shadow = ShadowDocument::new(t(0));
        let update = ShadowUpdate::from_json(json!({
            "state": {"reported": {"fw": "1.2.0", "old": null}},
            "clientToken": "abc",
        }))
        .unwrap();
        let outcome = shadow
            .apply(update, t(1_000), &ShadowLimits::default())
            .unwrap();
        assert_eq!(
            outcome.accepted_json(),
            json!({
                "state": {"reported": {"fw": "1.2.0"}},
                "metadata": {"reported": {"fw": {"timestamp": 1000}}},
                "version": 1,
                "timestamp": "1970-01-01T00:00:01.000Z",
                "clientToken": "abc",
            })
        );
        let err = ShadowError::VersionConflict {
            expected: 1,
            current: 2,
        };
        assert_eq!(
            err.rejected_json(Some("abc")),
            json!({
                "code": "version_conflict",
                "message": "version conflict: the update expected version 1 but the shadow is at version 2; fetch the shadow and retry with its current version",
                "clientToken": "abc",
            })
        );
    }

    #[test]
    fn devices_ignore_messages_that_are_not_newer_than_what_they_have() {
        let shadow = shadow_with_desired(json!({"a": 1}));
        // (version the device has, whether the document is newer)
        for (have, newer) in [(0, true), (1, false), (2, false)] {
            assert_eq!(shadow.is_newer(have), newer, "device at {have}");
        }
    }

    #[test]
    fn shadow_names_follow_the_topic_safe_rule() {
        for ok in ["config", "ota_state", "A-1", &"x".repeat(64)] {
            assert!(ShadowName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a/b", "a+b", "#", "a b", "é", &"x".repeat(65)] {
            assert!(ShadowName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ShadowName::parse("a/b").unwrap_err().to_string(),
            r#"invalid shadow name "a/b": character '/' is not allowed (use letters, digits, '_' and '-')"#
        );
    }
}
