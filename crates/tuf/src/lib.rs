//! The Update Framework (TUF) metadata, signing and verification used by Drover's server and agent.
//!
//! Drover signs what devices install with TUF (spec 1.0.x): the server builds and signs a
//! repository, devices walk its metadata with [`TrustedSet`] and install only target files whose
//! length and sha256 the trusted metadata lists. The repository format is the standard one, so
//! python-tuf's `ngclient` reads Drover repositories (checked by `tests/python_interop.rs`).
//!
//! This crate does no IO: callers pass bytes in and get bytes (or verdicts) out, and pass the
//! current time in. The device agent links it, so it stays small: ed25519 is the only key type,
//! and delegated targets roles are not supported (metadata containing them still parses).
//!
//! # Layout
//!
//! - [`metadata`]: the signed envelope [`Signed`] and the typed [`Root`], [`Targets`],
//!   [`Snapshot`] and [`Timestamp`]; signatures are checked over the `signed` object *as
//!   received*, so unknown fields survive.
//! - [`canonical`]: OLPC canonical JSON, byte-identical to securesystemslib's.
//! - [`keys`]: ed25519 [`PublicKey`] / [`PrivateKey`], [`KeyId`], private key files.
//! - [`repository`]: building and signing metadata ([`RootBuilder`], [`sign`], [`rotate_root`]).
//! - [`client`]: [`TrustedSet`], the spec §5 client workflow as a state machine.
//! - [`naming`]: published file names (`N.root.json`, `V.snapshot.json`, `dir/<sha256>.<name>`).
//! - `verify`: signature thresholds shared by both sides; [`check_root_successor`] is public.
//! - `error`: the one [`Error`] type.
//!
//! **Invariant:** every signature check counts distinct public keys authorised for the role,
//! over the canonical JSON of the received `signed` value.

#![warn(missing_docs)]

pub mod canonical;
pub mod client;
mod error;
pub mod keys;
pub mod metadata;
pub mod naming;
pub mod repository;
mod verify;

pub use client::{TrustedSet, DEFAULT_MAX_LENGTHS, DEFAULT_MAX_ROOT_ROTATIONS};
pub use error::Error;
pub use keys::{KeyId, PrivateKey, PublicKey};
pub use metadata::{
    MetaFile, Metadata, Role, RoleKeys, Roles, Root, Signature, Signed, Snapshot, TargetFile,
    Targets, Timestamp, SPEC_VERSION,
};
pub use repository::{rotate_root, sign, RootBuilder};
pub use verify::check_root_successor;
