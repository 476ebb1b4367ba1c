//! Signature thresholds: which signatures count for a role, and the cross-signing of new roots.

use std::collections::BTreeSet;

use crate::keys::KeyId;
use crate::metadata::{Metadata, Role, Root, Signature, Signed};
use crate::Error;

/// Checks that at least `threshold` distinct keys authorised for `role` in `root` signed
/// `message`.
///
/// Counting follows the spec and the go-tuf / python-tuf fixes for threshold bypasses: a key
/// counts once however many signatures (or key ids) it appears under, and invalid signatures are
/// ignored rather than fatal, so one bad signature cannot veto a valid threshold.
pub(crate) fn check_threshold(
    role: Role,
    message: &[u8],
    signatures: &[Signature],
    root: &Root,
) -> Result<(), Error> {
    let role_keys = root.roles.get(role);
    let count = count_signatures(message, signatures, root, &role_keys.keyids);
    if role_keys.threshold == 0 {
        return Err(Error::Invalid(format!("the {role} role's threshold is 0")));
    }
    if count.n_valid >= role_keys.threshold as usize {
        return Ok(());
    }
    if count.n_valid == 0 && count.n_invalid == 0 && count.n_unknown == 0 && count.n_other_roles > 0
    {
        return Err(Error::UnauthorisedSigner { role });
    }
    Err(Error::ThresholdNotMet {
        role,
        n_valid: count.n_valid,
        threshold: role_keys.threshold,
        n_invalid: count.n_invalid,
        n_unknown: count.n_unknown,
    })
}

/// Checks that `new_root` may succeed `trusted` (spec §5.3.4–5.3.5): signed by a threshold of the
/// trusted root's root keys, exactly one version newer, and signed by a threshold of its own root
/// keys. Expiry is deliberately not checked: intermediate roots of a chain may have expired; only
/// the last one must be current, which the client checks after the walk.
pub fn check_root_successor(trusted: &Root, new_root: &Signed<Root>) -> Result<(), Error> {
    let message = new_root.canonical_signed()?;
    let trusted_keys = &trusted.roles.root;
    let count = count_signatures(
        &message,
        new_root.signatures(),
        trusted,
        &trusted_keys.keyids,
    );
    if trusted_keys.threshold == 0 || count.n_valid < trusted_keys.threshold as usize {
        return Err(Error::RootNotCrossSigned {
            version: new_root.signed().version(),
            trusted_version: trusted.version,
            n_valid: count.n_valid,
            threshold: trusted_keys.threshold,
            n_invalid: count.n_invalid,
            n_unknown: count.n_unknown,
        });
    }
    if new_root.signed().version != trusted.version + 1 {
        return Err(Error::RootVersionNotNext {
            found: new_root.signed().version,
            trusted: trusted.version,
        });
    }
    check_threshold(
        Role::Root,
        &message,
        new_root.signatures(),
        new_root.signed(),
    )
}

/// How the signatures on one piece of metadata fall for one set of authorised key ids.
struct SignatureCount {
    /// Distinct authorised public keys with a valid signature.
    n_valid: usize,
    /// Signatures from authorised keys that do not verify.
    n_invalid: usize,
    /// Valid signatures from keys the root lists, but not for this role.
    n_other_roles: usize,
    /// Signatures whose key id the root does not list.
    n_unknown: usize,
}

fn count_signatures(
    message: &[u8],
    signatures: &[Signature],
    root: &Root,
    authorised: &[KeyId],
) -> SignatureCount {
    let mut valid_keys = BTreeSet::new();
    let mut count = SignatureCount {
        n_valid: 0,
        n_invalid: 0,
        n_other_roles: 0,
        n_unknown: 0,
    };
    for signature in signatures {
        // A key id the root does not list carries no key to verify with: ignore it.
        let Some(public_key) = root.keys.get(&signature.keyid) else {
            count.n_unknown += 1;
            continue;
        };
        let is_valid = public_key.verify(message, &signature.sig);
        if authorised.contains(&signature.keyid) {
            if is_valid {
                valid_keys.insert(public_key.identity());
            } else {
                count.n_invalid += 1;
            }
        } else if is_valid {
            count.n_other_roles += 1;
        }
    }
    count.n_valid = valid_keys.len();
    count
}
