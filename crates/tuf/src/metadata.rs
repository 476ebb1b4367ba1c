//! The metadata model: the signed envelope and the four top-level roles, as TUF 1.0 writes them.
//!
//! A [`Signed`] keeps the `signed` object exactly as received (a `serde_json::Value`) next to
//! its typed view: signatures are checked over the canonical form of what was received, so
//! fields this crate does not know (added by a newer repository) still verify, and re-writing the
//! envelope keeps them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::keys::{KeyId, PrivateKey, PublicKey};
use crate::{canonical, verify, Error};

/// The TUF specification version written into new metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// The spec major version this crate reads; python-tuf refuses any other too.
const SUPPORTED_SPEC_MAJOR: &str = "1";

/// The four top-level roles. Delegated targets roles are not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Signs the root of trust: the keys and thresholds of every role.
    Root,
    /// Signs the list of target files with their lengths and hashes.
    Targets,
    /// Signs the versions of all targets metadata, so they are consistent with each other.
    Snapshot,
    /// Signs the current snapshot version, often and with a short expiry (freshness).
    Timestamp,
}

impl Role {
    /// The role's name as in `_type` and `roles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }

    /// The role's metadata file name without a version prefix (`timestamp.json`).
    pub fn file_name(self) -> String {
        format!("{}.json", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the four metadata types have in common, so [`Signed`] can be generic over them.
pub trait Metadata: Serialize + DeserializeOwned + Clone + fmt::Debug {
    /// The role whose keys sign this metadata, and whose name is its `_type`.
    const ROLE: Role;
    /// The metadata version (at least 1).
    fn version(&self) -> u64;
    /// When the metadata stops being trustworthy.
    fn expires(&self) -> OffsetDateTime;
    /// The `spec_version` field.
    fn spec_version(&self) -> &str;
}

/// One signature in the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The id of the signing key, as listed in root metadata.
    pub keyid: KeyId,
    /// The ed25519 signature of the canonical `signed` object, in hex.
    pub sig: String,
}

/// The signed envelope `{"signatures": [...], "signed": {...}}` around metadata `T`.
#[derive(Clone, Debug)]
pub struct Signed<T> {
    signatures: Vec<Signature>,
    signed: T,
    /// The `signed` object as received (or as serialised from `signed` when built here): the
    /// bytes signatures cover, unknown fields included.
    signed_value: Value,
}

/// The wire shape of the envelope, used to read and write it.
#[derive(Serialize, Deserialize)]
struct Envelope<S> {
    signatures: Vec<Signature>,
    signed: S,
}

impl<T: Metadata> Signed<T> {
    /// Wraps new metadata in an envelope with no signatures yet.
    ///
    /// Fails if the metadata has no canonical form (a float in a target's `custom` object).
    pub fn new(signed: T) -> Result<Self, Error> {
        let signed_value = serde_json::to_value(&signed)
            .map_err(|e| Error::Invalid(format!("cannot serialise {}: {e}", T::ROLE)))?;
        canonical::to_canonical_json(&signed_value)?;
        Ok(Signed {
            signatures: Vec::new(),
            signed,
            signed_value,
        })
    }

    /// Parses an envelope. Checks the shape, `_type`, `spec_version` and version, but not
    /// signatures: those need a root (see [`Signed::verify`] and the client's `TrustedSet`).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let file = T::ROLE.file_name();
        let malformed = |reason: String| Error::Malformed {
            what: file.clone(),
            reason,
        };
        let envelope: Envelope<Value> =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let found_type = envelope
            .signed
            .get("_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if found_type != T::ROLE.as_str() {
            return Err(Error::WrongType {
                expected: T::ROLE,
                found: found_type.to_owned(),
            });
        }
        let signed = T::deserialize(&envelope.signed).map_err(|e| malformed(e.to_string()))?;
        if signed.version() == 0 {
            return Err(malformed("version must be at least 1".into()));
        }
        let spec_version = signed.spec_version();
        let spec_parts: Vec<&str> = spec_version.split('.').collect();
        if !(2..=3).contains(&spec_parts.len()) || spec_parts[0] != SUPPORTED_SPEC_MAJOR {
            return Err(malformed(format!(
                "unsupported spec_version {spec_version:?}"
            )));
        }
        Ok(Signed {
            signatures: envelope.signatures,
            signed,
            signed_value: envelope.signed,
        })
    }

    /// The envelope as pretty-printed JSON, ready to publish. Deterministic for a given value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let envelope = Envelope {
            signatures: self.signatures.clone(),
            signed: &self.signed_value,
        };
        let mut bytes = serde_json::to_vec_pretty(&envelope).expect("JSON values always serialise");
        bytes.push(b'\n');
        bytes
    }

    /// Adds `key`'s signature over the canonical `signed` object.
    ///
    /// Works on metadata read from bytes too, which is how several holders of offline keys each
    /// add their signature to the same file. A previous signature by the same key is replaced.
    pub fn sign(&mut self, key: &PrivateKey) -> Result<(), Error> {
        let message = canonical::to_canonical_json(&self.signed_value)?;
        let signature = Signature {
            keyid: key.key_id(),
            sig: key.sign_hex(&message),
        };
        self.signatures
            .retain(|existing| existing.keyid != signature.keyid);
        self.signatures.push(signature);
        Ok(())
    }

    /// Checks that a threshold of `root`'s keys for this role signed the metadata.
    ///
    /// This is the signature check alone: versions and expiry belong to the client workflow.
    pub fn verify(&self, root: &Root) -> Result<(), Error> {
        let message = self.canonical_signed()?;
        verify::check_threshold(T::ROLE, &message, &self.signatures, root)
    }

    /// The typed metadata.
    pub fn signed(&self) -> &T {
        &self.signed
    }

    /// The signatures, in envelope order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The `signed` object as received, unknown fields included.
    pub fn signed_value(&self) -> &Value {
        &self.signed_value
    }

    /// The canonical JSON of the `signed` object: the bytes the signatures cover.
    pub fn canonical_signed(&self) -> Result<Vec<u8>, Error> {
        canonical::to_canonical_json(&self.signed_value)
    }

    /// Unwraps the typed metadata.
    pub fn into_signed(self) -> T {
        self.signed
    }
}

/// Root metadata: the keys and thresholds of every top-level role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_type", rename = "root")]
pub struct Root {
    /// The TUF spec version the repository follows.
    pub spec_version: String,
    /// Root versions form a chain 1, 2, 3, …; each is signed by its predecessor's keys too.
    pub version: u64,
    /// After this instant the root must not be used (written as `YYYY-MM-DDTHH:MM:SSZ`).
    #[serde(with = "expires_format")]
    pub expires: OffsetDateTime,
    /// Whether snapshot, targets and target files are published under version- or
    /// hash-prefixed names, so a client never mixes files of two repository states.
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// Every key any role uses, by key id.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// The keys and threshold of each top-level role.
    pub roles: Roles,
}

/// The `roles` object of root metadata. All four roles are required (python-tuf insists too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Keys that sign root metadata.
    pub root: RoleKeys,
    /// Keys that sign targets metadata.
    pub targets: RoleKeys,
    /// Keys that sign snapshot metadata.
    pub snapshot: RoleKeys,
    /// Keys that sign timestamp metadata.
    pub timestamp: RoleKeys,
}

impl Roles {
    /// The keys of `role`.
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Snapshot => &self.snapshot,
            Role::Timestamp => &self.timestamp,
        }
    }

    /// The keys of `role`, to change them while building a new root.
    pub fn get_mut(&mut self, role: Role) -> &mut RoleKeys {
        match role {
            Role::Root => &mut self.root,
            Role::Targets => &mut self.targets,
            Role::Snapshot => &mut self.snapshot,
            Role::Timestamp => &mut self.timestamp,
        }
    }
}

/// The key ids allowed to sign for a role, and how many of them must.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Ids of keys in root's `keys`.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must sign; at least 1.
    pub threshold: u32,
}

impl Metadata for Root {
    const ROLE: Role = Role::Root;
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> OffsetDateTime {
        self.expires
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
}

/// Targets metadata: the files devices may install, with lengths, hashes and custom data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_type", rename = "targets")]
pub struct Targets {
    /// The TUF spec version the repository follows.
    pub spec_version: String,
    /// Must equal the version snapshot lists for `targets.json`.
    pub version: u64,
    /// After this instant the targets must not be used.
    #[serde(with = "expires_format")]
    pub expires: OffsetDateTime,
    /// Target path (relative, `/`-separated) → what the file must be.
    pub targets: BTreeMap<String, TargetFile>,
    /// Kept as received so such metadata still parses and verifies; delegated roles are not
    /// followed, so delegated targets are invisible to this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Value>,
}

/// One target file's entry in targets metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// The exact length in bytes.
    pub length: u64,
    /// Algorithm → lowercase hex digest; this crate writes and checks `sha256`.
    pub hashes: BTreeMap<String, String>,
    /// Free-form data for Drover (firmware version, hardware compatibility, …), signed with the
    /// rest of the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Map<String, Value>>,
}

impl TargetFile {
    /// The entry for a file with these bytes: length and sha256, no custom data.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        TargetFile {
            length: bytes.len() as u64,
            hashes: BTreeMap::from([("sha256".to_owned(), hex::encode(Sha256::digest(bytes)))]),
            custom: None,
        }
    }

    /// The same entry with `custom` data attached.
    pub fn with_custom(mut self, custom: serde_json::Map<String, Value>) -> Self {
        self.custom = Some(custom);
        self
    }

    /// The listed sha256, if any.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }

    /// Checks that `bytes` are the file this entry describes: length first (cheap, and what
    /// stops an endless-data attack), then sha256.
    pub fn verify(&self, path: &str, bytes: &[u8]) -> Result<(), Error> {
        let actual_length = bytes.len() as u64;
        if actual_length != self.length {
            return Err(Error::TargetLengthMismatch {
                path: path.to_owned(),
                expected: self.length,
                actual: actual_length,
            });
        }
        let expected = self
            .sha256()
            .ok_or_else(|| Error::NoSha256(format!("target {path:?}")))?;
        let actual = hex::encode(Sha256::digest(bytes));
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::TargetHashMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok(())
    }
}

/// Snapshot metadata: the version (and optionally length and hashes) of every targets metadata file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_type", rename = "snapshot")]
pub struct Snapshot {
    /// The TUF spec version the repository follows.
    pub spec_version: String,
    /// Must equal the version timestamp lists for `snapshot.json`.
    pub version: u64,
    /// After this instant the snapshot must not be used.
    #[serde(with = "expires_format")]
    pub expires: OffsetDateTime,
    /// File name (`targets.json`) → its version.
    pub meta: BTreeMap<String, MetaFile>,
}

impl Snapshot {
    /// The entry for `targets.json`, which every snapshot must have.
    pub fn targets_meta(&self) -> Result<&MetaFile, Error> {
        self.meta
            .get("targets.json")
            .ok_or_else(|| Error::MissingMeta {
                file: "targets.json".into(),
                listed_in: "snapshot.json".into(),
            })
    }
}

/// Timestamp metadata: the current snapshot version, re-signed often with a short expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_type", rename = "timestamp")]
pub struct Timestamp {
    /// The TUF spec version the repository follows.
    pub spec_version: String,
    /// Never decreases; a client refuses an older one than it has seen.
    pub version: u64,
    /// Short, so that a frozen repository (or an attacker replaying it) is noticed.
    #[serde(with = "expires_format")]
    pub expires: OffsetDateTime,
    /// Exactly one entry, `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
}

impl Timestamp {
    /// The entry for `snapshot.json`, which every timestamp must have.
    pub fn snapshot_meta(&self) -> Result<&MetaFile, Error> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::MissingMeta {
                file: "snapshot.json".into(),
                listed_in: "timestamp.json".into(),
            })
    }
}

/// What a parent metadata file says about a child metadata file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The child's version.
    pub version: u64,
    /// The child's length in bytes, when the repository chose to bound downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// The child's hashes, when the repository chose to pin its exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

impl MetaFile {
    /// An entry with the version only (the spec's default for snapshot's entries).
    pub fn new(version: u64) -> Self {
        MetaFile {
            version,
            length: None,
            hashes: None,
        }
    }

    /// An entry pinning the exact published bytes of the child: version, length and sha256.
    pub fn from_bytes(version: u64, bytes: &[u8]) -> Self {
        MetaFile {
            version,
            length: Some(bytes.len() as u64),
            hashes: Some(BTreeMap::from([(
                "sha256".to_owned(),
                hex::encode(Sha256::digest(bytes)),
            )])),
        }
    }

    /// Checks the child's bytes against the listed length and hashes, when listed.
    ///
    /// Only sha256 can be checked; an entry listing hashes but no sha256 is refused rather than
    /// skipped, since skipping would let any bytes through.
    pub(crate) fn verify_bytes(
        &self,
        file: &str,
        listed_in: &str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        if let Some(expected) = self.length {
            let actual = bytes.len() as u64;
            if actual != expected {
                return Err(Error::MetaLengthMismatch {
                    file: file.to_owned(),
                    expected,
                    actual,
                    listed_in: listed_in.to_owned(),
                });
            }
        }
        if let Some(hashes) = &self.hashes {
            let expected = hashes
                .get("sha256")
                .ok_or_else(|| Error::NoSha256(format!("the {file} entry in {listed_in}")))?;
            if !hex::encode(Sha256::digest(bytes)).eq_ignore_ascii_case(expected) {
                return Err(Error::MetaHashMismatch {
                    file: file.to_owned(),
                    algorithm: "sha256".into(),
                    listed_in: listed_in.to_owned(),
                });
            }
        }
        Ok(())
    }
}

macro_rules! impl_metadata {
    ($ty:ty, $role:expr) => {
        impl Metadata for $ty {
            const ROLE: Role = $role;
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> OffsetDateTime {
                self.expires
            }
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
        }
    };
}
impl_metadata!(Targets, Role::Targets);
impl_metadata!(Snapshot, Role::Snapshot);
impl_metadata!(Timestamp, Role::Timestamp);

/// Formats an expiry as metadata writes it: `YYYY-MM-DDTHH:MM:SSZ`, in UTC.
pub fn format_expires(expires: OffsetDateTime) -> String {
    expires_format::format(expires)
}

/// The `expires` wire format. Exactly python-tuf's `%Y-%m-%dT%H:%M:%SZ`: no fractional seconds
/// and no offsets other than `Z`, because python-tuf's `strptime` refuses anything else.
mod expires_format {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::BorrowedFormatItem;
    use time::macros::format_description;
    use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

    const FORMAT: &[BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

    pub(super) fn format(expires: OffsetDateTime) -> String {
        expires
            .to_offset(UtcOffset::UTC)
            .format(FORMAT)
            .expect("four-digit years always format")
    }

    pub(super) fn serialize<S: Serializer>(
        expires: &OffsetDateTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*expires))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        PrimitiveDateTime::parse(&text, FORMAT)
            .map(PrimitiveDateTime::assume_utc)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "expires {text:?} is not YYYY-MM-DDTHH:MM:SSZ: {e}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn timestamp_json() -> Value {
        json!({
            "signatures": [],
            "signed": {
                "_type": "timestamp",
                "spec_version": "1.0.31",
                "version": 3,
                "expires": "2030-01-02T03:04:05Z",
                "meta": {"snapshot.json": {"version": 2}},
                "x-new-field": {"kept": [1, 2]}
            }
        })
    }

    #[test]
    fn unknown_fields_are_kept_and_signed_over() {
        let bytes = serde_json::to_vec(&timestamp_json()).unwrap();
        let mut signed = Signed::<Timestamp>::from_slice(&bytes).unwrap();
        assert_eq!(signed.signed().version, 3);
        assert_eq!(signed.signed().expires, datetime!(2030-01-02 03:04:05 UTC));
        signed.sign(&PrivateKey::from_seed([1; 32])).unwrap();
        let canonical = String::from_utf8(signed.canonical_signed().unwrap()).unwrap();
        assert!(
            canonical.contains(r#""x-new-field":{"kept":[1,2]}"#),
            "{canonical}"
        );
        let reparsed = Signed::<Timestamp>::from_slice(&signed.to_bytes()).unwrap();
        assert_eq!(reparsed.signed_value(), signed.signed_value());
        assert_eq!(reparsed.signatures(), signed.signatures());
    }

    #[test]
    fn metadata_of_another_type_is_refused() {
        let bytes = serde_json::to_vec(&timestamp_json()).unwrap();
        let error = Signed::<Snapshot>::from_slice(&bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"expected snapshot metadata but _type is "timestamp""#
        );
    }

    #[test]
    fn expires_with_fractional_seconds_or_offsets_is_refused() {
        for expires in [
            "2030-01-02T03:04:05.5Z",
            "2030-01-02T03:04:05+01:00",
            "2030-01-02",
        ] {
            let mut value = timestamp_json();
            value["signed"]["expires"] = expires.into();
            let error = Signed::<Timestamp>::from_slice(&serde_json::to_vec(&value).unwrap());
            assert!(
                matches!(error, Err(Error::Malformed { .. })),
                "{expires}: {error:?}"
            );
        }
    }

    #[test]
    fn unsupported_spec_major_version_and_version_zero_are_refused() {
        let mut value = timestamp_json();
        value["signed"]["spec_version"] = "2.0.0".into();
        let error =
            Signed::<Timestamp>::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("unsupported spec_version"),
            "{error}"
        );
        let mut value = timestamp_json();
        value["signed"]["version"] = 0.into();
        let error =
            Signed::<Timestamp>::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("version must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn targets_without_delegations_or_custom_parse_and_serialise_without_them() {
        let value = json!({
            "_type": "targets", "spec_version": "1.0.31", "version": 1,
            "expires": "2030-01-01T00:00:00Z",
            "targets": {"a/b.bin": {"length": 3, "hashes": {"sha256": "00"}}}
        });
        let targets: Targets = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(targets.delegations, None);
        assert_eq!(targets.targets["a/b.bin"].custom, None);
        assert_eq!(serde_json::to_value(&targets).unwrap(), value);
    }

    #[test]
    fn target_file_checks_length_before_hash() {
        let target_file = TargetFile::from_bytes(b"firmware");
        target_file.verify("fw.bin", b"firmware").unwrap();
        let error = target_file.verify("fw.bin", b"firmwarE!").unwrap_err();
        assert!(
            error.to_string().starts_with("target length mismatch"),
            "{error}"
        );
        let error = target_file.verify("fw.bin", b"firmwarE").unwrap_err();
        assert!(
            error.to_string().starts_with("target hash mismatch"),
            "{error}"
        );
    }

    #[test]
    fn metadata_with_a_float_cannot_be_signed() {
        let custom = json!({"ratio": 0.5}).as_object().unwrap().clone();
        let mut targets = Targets {
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: datetime!(2030-01-01 0:00 UTC),
            targets: BTreeMap::new(),
            delegations: None,
        };
        targets
            .targets
            .insert("f".into(), TargetFile::from_bytes(b"").with_custom(custom));
        assert!(matches!(Signed::new(targets), Err(Error::CanonicalJson(_))));
    }
}
