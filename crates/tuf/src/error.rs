//! The one error type of the crate: every rejection says precisely what was wrong and with which file.

use crate::metadata::Role;

/// Everything that can go wrong while reading, writing, signing or verifying TUF metadata.
///
/// Messages are written for an operator reading an agent log: they name the file or role, the
/// numbers that disagree and, where it applies, the attack the check exists to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not JSON, or not metadata of the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The file or object being read (`timestamp.json`, `key file`).
        what: String,
        /// What the parser objected to.
        reason: String,
    },

    /// A value cannot be written as OLPC canonical JSON, so it can be neither signed nor verified.
    #[error("cannot encode as canonical JSON: {0}")]
    CanonicalJson(String),

    /// The metadata's `_type` is not the role the caller asked for (a snapshot offered as timestamp).
    #[error("expected {expected} metadata but _type is {found:?}")]
    WrongType {
        /// The role the caller is updating.
        expected: Role,
        /// The `_type` found in the metadata.
        found: String,
    },

    /// A key is malformed, of an unsupported type, or a key file does not hold a matching pair.
    #[error("invalid key: {0}")]
    InvalidKey(String),

    /// Valid signatures from keys listed in the root, but none authorised for this role: a
    /// snapshot key signing a timestamp, for instance.
    #[error("signature from a key not authorised for the {role} role")]
    UnauthorisedSigner {
        /// The role whose metadata was being verified.
        role: Role,
    },

    /// Fewer distinct authorised keys signed than the role's threshold requires.
    #[error("{role} signed by {n_valid} of {threshold} required keys{}", notes(*n_invalid, *n_unknown))]
    ThresholdNotMet {
        /// The role whose metadata was being verified.
        role: Role,
        /// Distinct authorised keys whose signature verified.
        n_valid: usize,
        /// The role's threshold.
        threshold: u32,
        /// Signatures from authorised keys that did not verify (tampered bytes or a bad signature).
        n_invalid: usize,
        /// Signatures whose key id the root does not list (often: made with a rotated-out key).
        n_unknown: usize,
    },

    /// A new root is not signed by a threshold of the keys of the root it replaces, so clients
    /// cannot walk from the old root to it.
    #[error(
        "root version {version} is signed by {n_valid} of {threshold} required keys of trusted root version {trusted_version}{}; a root rotation must be cross-signed by the previous root's keys",
        notes(*n_invalid, *n_unknown)
    )]
    RootNotCrossSigned {
        /// Version of the new root.
        version: u64,
        /// Version of the trusted root whose keys must sign it.
        trusted_version: u64,
        /// Distinct keys of the trusted root role whose signature verified.
        n_valid: usize,
        /// The trusted root role's threshold.
        threshold: u32,
        /// Signatures from trusted root keys that did not verify.
        n_invalid: usize,
        /// Signatures whose key id the trusted root does not list.
        n_unknown: usize,
    },

    /// A new root's version is not exactly the trusted version plus one.
    #[error("root version {found} is not the next version after trusted root version {trusted} (expected {})", trusted + 1)]
    RootVersionNotNext {
        /// The version offered.
        found: u64,
        /// The trusted root's version.
        trusted: u64,
    },

    /// The client walked more root versions in one update than it allows (a repository that
    /// serves endless roots must not keep a device busy forever).
    #[error("more than {max} root rotations in one update")]
    TooManyRootRotations {
        /// The configured maximum.
        max: u32,
    },

    /// The metadata's expiry is at or before the time the caller supplied (freeze attack).
    #[error("{file} expired at {expires}")]
    Expired {
        /// `root.json`, `timestamp.json`, …
        file: String,
        /// The expiry, as written in the metadata.
        expires: String,
    },

    /// The new metadata is older than what the client already trusts (rollback attack).
    #[error("{role} version {found} is older than trusted version {trusted} (rollback attack)")]
    Rollback {
        /// The role of the new metadata.
        role: Role,
        /// The version offered.
        found: u64,
        /// The version already trusted.
        trusted: u64,
    },

    /// New metadata lists an older version of another file than the trusted metadata did: a
    /// timestamp pointing to an older snapshot, or a snapshot pointing to older targets.
    #[error("{listed_in} lists {file} version {found}, older than trusted version {trusted} (rollback attack)")]
    MetaRollback {
        /// The metadata that lists the file (`timestamp.json`, `snapshot.json`).
        listed_in: String,
        /// The file listed (`snapshot.json`, `targets.json`).
        file: String,
        /// The version the new metadata lists.
        found: u64,
        /// The version the trusted metadata listed.
        trusted: u64,
    },

    /// A file the new metadata must list is absent (a snapshot that drops `targets.json`).
    #[error("{file} is missing from {listed_in}")]
    MissingMeta {
        /// The missing entry.
        file: String,
        /// The metadata that should list it.
        listed_in: String,
    },

    /// The metadata's version differs from the version its parent lists for it (an old file
    /// replayed under the right name, or a repository caught mid-update).
    #[error("{file} version {found} does not match version {expected} listed in {listed_in}")]
    VersionMismatch {
        /// The file being loaded.
        file: String,
        /// Its version.
        found: u64,
        /// The version its parent lists.
        expected: u64,
        /// The parent (`timestamp.json` or `snapshot.json`).
        listed_in: String,
    },

    /// The metadata's length differs from the length its parent lists.
    #[error("{file} is {actual} bytes but {listed_in} says {expected}")]
    MetaLengthMismatch {
        /// The file being loaded.
        file: String,
        /// The length listed.
        expected: u64,
        /// The length received.
        actual: u64,
        /// The parent metadata.
        listed_in: String,
    },

    /// The metadata's hash differs from the hash its parent lists.
    #[error("{file} {algorithm} does not match the hash listed in {listed_in}")]
    MetaHashMismatch {
        /// The file being loaded.
        file: String,
        /// The hash algorithm that disagreed.
        algorithm: String,
        /// The parent metadata.
        listed_in: String,
    },

    /// An update step was called out of the order of the client workflow (§5).
    #[error("{0}")]
    OutOfOrder(&'static str),

    /// The trusted targets metadata does not list the requested target.
    #[error("unknown target {0:?}")]
    UnknownTarget(String),

    /// The target's bytes do not have the length its metadata lists.
    #[error("target length mismatch for {path:?}: expected {expected} bytes, got {actual}")]
    TargetLengthMismatch {
        /// The target path.
        path: String,
        /// The length in targets metadata.
        expected: u64,
        /// The length received.
        actual: u64,
    },

    /// The target's bytes do not have the sha256 its metadata lists (tampered or corrupted file).
    #[error("target hash mismatch for {path:?}: sha256 is {actual}, expected {expected}")]
    TargetHashMismatch {
        /// The target path.
        path: String,
        /// The sha256 in targets metadata.
        expected: String,
        /// The sha256 of the bytes received.
        actual: String,
    },

    /// A target or metafile lists no sha256, the one hash this crate verifies.
    #[error("{0} lists no sha256 hash")]
    NoSha256(String),

    /// Metadata being built is inconsistent (threshold zero, a role without keys, …).
    #[error("invalid metadata: {0}")]
    Invalid(String),

    /// The operating system could not provide randomness for a new key.
    #[error("cannot get randomness from the operating system: {0}")]
    Random(String),
}

/// Mentions signatures that did not count, because "1 of 2" alone hides a tampered file or a
/// file signed with a key that was rotated out.
fn notes(n_invalid: usize, n_unknown: usize) -> String {
    let mut notes = Vec::new();
    match n_invalid {
        0 => {}
        1 => notes.push("1 signature did not verify".to_owned()),
        n => notes.push(format!("{n} signatures did not verify")),
    }
    match n_unknown {
        0 => {}
        1 => notes.push("1 signature from a key the root does not list".to_owned()),
        n => notes.push(format!("{n} signatures from keys the root does not list")),
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}
