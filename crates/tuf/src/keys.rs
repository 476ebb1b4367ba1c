//! Keys: ed25519 public keys as TUF metadata lists them, key ids, and private key files.
//!
//! Only `keytype: "ed25519"`, `scheme: "ed25519"` can sign or verify. Keys of other types still
//! parse (a root may list them) but never count towards a threshold.

use std::fmt;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// The key type and signature scheme of every key this crate creates.
pub const ED25519: &str = "ed25519";

/// A key identifier: the hex sha256 of the canonical JSON of the public key object
/// (`{"keytype", "scheme", "keyval": {"public"}}`), as securesystemslib's
/// `compute_default_keyid` computes it.
///
/// Received metadata may use any string as a key id (the spec lets repositories choose), so a
/// `KeyId` read from metadata is not re-checked against its key; thresholds count distinct public
/// keys instead, so two ids for one key never count twice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id as it appears in metadata.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for KeyId {
    fn from(id: &str) -> Self {
        KeyId(id.to_owned())
    }
}

/// A public key as listed in root metadata's `keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// `"ed25519"` for keys this crate can use.
    pub keytype: String,
    /// `"ed25519"` for keys this crate can use.
    pub scheme: String,
    /// The key material.
    pub keyval: PublicKeyValue,
}

/// The `keyval` object of a public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyValue {
    /// For ed25519, the 32-byte public key in lowercase hex.
    pub public: String,
}

impl PublicKey {
    /// The key id securesystemslib would compute for this key.
    pub fn key_id(&self) -> KeyId {
        let object = serde_json::json!({
            "keytype": self.keytype,
            "scheme": self.scheme,
            "keyval": {"public": self.keyval.public},
        });
        let canonical = crate::canonical::to_canonical_json(&object)
            .expect("an object of strings always has a canonical form");
        KeyId(hex::encode(Sha256::digest(canonical)))
    }

    /// Checks `sig_hex` over `message`. False for every failure, including keys of unsupported
    /// types and malformed hex: the caller only counts valid signatures.
    pub(crate) fn verify(&self, message: &[u8], sig_hex: &str) -> bool {
        let Some(verifying_key) = self.ed25519() else {
            return false;
        };
        let Ok(sig_bytes) = hex::decode(sig_hex) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&sig_bytes) else {
            return false;
        };
        // `verify` (not `verify_strict`) matches what pyca/cryptography and securesystemslib's
        // fallback accept; both reject non-canonical `S`, as dalek's `verify` does.
        verifying_key.verify(message, &signature).is_ok()
    }

    /// Identifies the key material independently of its key id, so that one key listed under
    /// two ids is counted once towards a threshold.
    pub(crate) fn identity(&self) -> (&str, &str, String) {
        (
            &self.keytype,
            &self.scheme,
            self.keyval.public.to_ascii_lowercase(),
        )
    }

    fn ed25519(&self) -> Option<ed25519_dalek::VerifyingKey> {
        if self.keytype != ED25519 || self.scheme != ED25519 {
            return None;
        }
        let bytes: [u8; 32] = hex::decode(&self.keyval.public).ok()?.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
    }
}

/// An ed25519 private key, able to sign metadata.
///
/// The secret is zeroed when the key is dropped. `Debug` shows the key id only.
#[derive(Clone)]
pub struct PrivateKey {
    signing_key: ed25519_dalek::SigningKey,
}

/// The JSON of a private key file: securesystemslib's old ed25519 key layout plus the key id,
/// so a file can be matched to root metadata by eye.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    keytype: String,
    scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<KeyId>,
    keyval: KeyFileValue,
}

#[derive(Serialize, Deserialize)]
struct KeyFileValue {
    public: String,
    private: String,
}

impl PrivateKey {
    /// Generates a new key from the operating system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        let key = Self::from_seed(seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key whose 32-byte secret seed is `seed` (deterministic keys for tests and fixtures).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        PrivateKey {
            signing_key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Reads a key file written by [`PrivateKey::to_key_file`].
    ///
    /// Checks that the public half matches the private half (and the key id, when present), so a
    /// hand-edited file cannot sign with one key while claiming to be another.
    pub fn from_key_file(text: &str) -> Result<Self, Error> {
        let key_file: KeyFile = serde_json::from_str(text).map_err(|e| Error::Malformed {
            what: "key file".into(),
            reason: e.to_string(),
        })?;
        if key_file.keytype != ED25519 || key_file.scheme != ED25519 {
            return Err(Error::InvalidKey(format!(
                "unsupported keytype {:?} / scheme {:?} (only ed25519 is supported)",
                key_file.keytype, key_file.scheme
            )));
        }
        let seed: [u8; 32] = hex::decode(&key_file.keyval.private)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| Error::InvalidKey("private key is not 32 bytes of hex".into()))?;
        let key = Self::from_seed(seed);
        if key.public_key().keyval.public != key_file.keyval.public.to_ascii_lowercase() {
            return Err(Error::InvalidKey(
                "the public key in the key file does not belong to its private key".into(),
            ));
        }
        if let Some(keyid) = key_file.keyid {
            if keyid != key.key_id() {
                return Err(Error::InvalidKey(format!(
                    "the key file says key id {keyid} but the key's id is {}",
                    key.key_id()
                )));
            }
        }
        Ok(key)
    }

    /// The key file for this key, as pretty JSON. It holds the secret: the caller must write it
    /// with restrictive permissions.
    pub fn to_key_file(&self) -> String {
        let public_key = self.public_key();
        let key_file = KeyFile {
            keyid: Some(public_key.key_id()),
            keytype: public_key.keytype,
            scheme: public_key.scheme,
            keyval: KeyFileValue {
                public: public_key.keyval.public,
                private: hex::encode(self.signing_key.to_bytes()),
            },
        };
        let mut text = serde_json::to_string_pretty(&key_file).expect("key files always serialise");
        text.push('\n');
        text
    }

    /// The public half, as root metadata lists it.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            keytype: ED25519.to_owned(),
            scheme: ED25519.to_owned(),
            keyval: PublicKeyValue {
                public: hex::encode(self.signing_key.verifying_key().as_bytes()),
            },
        }
    }

    /// The key id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    /// Signs `message`, returning the signature in hex as metadata carries it.
    pub(crate) fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing_key.sign(message).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("keyid", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_sha256_of_the_canonical_public_key_object() {
        let key = PrivateKey::from_seed([7; 32]);
        let public_key = key.public_key();
        let canonical = format!(
            r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
            public_key.keyval.public
        );
        assert_eq!(
            key.key_id().as_str(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn key_file_round_trips_and_keeps_the_key_id() {
        let key = PrivateKey::generate().unwrap();
        let text = key.to_key_file();
        assert!(text.contains(key.key_id().as_str()));
        let loaded = PrivateKey::from_key_file(&text).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        assert_eq!(loaded.sign_hex(b"m"), key.sign_hex(b"m"));
    }

    #[test]
    fn key_file_whose_public_key_belongs_to_another_key_is_refused() {
        let text = PrivateKey::from_seed([1; 32]).to_key_file();
        let other_public = PrivateKey::from_seed([2; 32]).public_key().keyval.public;
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["keyval"]["public"] = other_public.into();
        value.as_object_mut().unwrap().remove("keyid");
        let error = PrivateKey::from_key_file(&value.to_string()).unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
    }

    #[test]
    fn debug_output_does_not_reveal_the_secret() {
        let key = PrivateKey::from_seed([9; 32]);
        let debug = format!("{key:?}");
        assert!(!debug.contains(&hex::encode([9u8; 32])), "{debug}");
        assert!(debug.contains(key.key_id().as_str()));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_key() {
        let key = PrivateKey::from_seed([3; 32]);
        let sig = key.sign_hex(b"message");
        assert!(key.public_key().verify(b"message", &sig));
        assert!(!key.public_key().verify(b"massage", &sig));
        assert!(!PrivateKey::from_seed([4; 32])
            .public_key()
            .verify(b"message", &sig));
        assert!(!key.public_key().verify(b"message", "zz"));
    }
}
