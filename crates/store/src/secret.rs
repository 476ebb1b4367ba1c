//! Random secrets (device credentials, operator tokens, claim tokens) and how they are stored.
//!
//! Secrets are 256 random bits, so a plain SHA-256 is a sufficient one-way hash for storage (slow
//! password hashes exist to protect low-entropy human passwords, which these are not). Only the hash
//! is stored; the secret is shown once.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new secret: `prefix` + 43 base64url characters (256 bits).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    use base64::Engine;
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A short random identifier: `prefix` + 16 hex digits.
pub fn short_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a secret: lower-case hex SHA-256.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
