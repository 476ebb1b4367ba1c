//! The one error type of this crate: what went wrong while generating or applying a delta.

use std::io;

/// Everything that can go wrong in [`generate`](crate::generate) or [`apply`](crate::apply).
///
/// The messages are meant for an operator reading a device log: each names which input was at
/// fault (the base image, the delta, the output) and, for hash mismatches, both hashes.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The delta does not start with the Drover magic bytes: it is some other file.
    #[error("not a Drover delta (bad magic bytes)")]
    NotADelta,
    /// The delta was written by a newer (or unknown) format version.
    #[error(
        "delta format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    /// The header names a compression this build does not know.
    #[error("delta compression {0} is not supported (this build reads 1 = xz/LZMA2)")]
    UnsupportedCompression(u8),
    /// The delta needs a larger decompression window than the device allows; applying it would
    /// exceed the memory bound, so it is refused before anything is written.
    #[error("delta needs a 2^{window_log}-byte decompression window, above this build's limit of 2^{max_window_log}")]
    WindowTooLarge { window_log: u8, max_window_log: u8 },
    /// The base image on the device is not the one the delta was generated from.
    #[error("delta is for base image {expected} ({expected_len} bytes), this image is {actual} ({actual_len} bytes)")]
    WrongBase {
        expected: String,
        expected_len: u64,
        actual: String,
        actual_len: u64,
    },
    /// The delta ended early: a partial download, for example.
    #[error("truncated delta: it ends inside the {0}")]
    Truncated(&'static str),
    /// The delta is readable but describes something impossible (bit flips, a bad generator).
    #[error("corrupt delta: {0}")]
    Corrupt(String),
    /// The delta was applied completely but the result is not the image it promised.
    #[error("result hash mismatch: the delta promised {expected}, the result is {actual}")]
    ResultMismatch { expected: String, actual: String },
    /// An image is too large for the 32-bit suffix array of the generator.
    #[error("image of {0} bytes is too large for delta generation (at most 2 GiB)")]
    ImageTooLarge(u64),
    /// Reading (or seeking in) the base image failed.
    #[error("reading the base image")]
    ReadBase(#[source] io::Error),
    /// Reading the delta failed for a reason other than its content (the transport, for example).
    #[error("reading the delta")]
    ReadDelta(#[source] io::Error),
    /// Writing the delta (generate) or the result image (apply) failed.
    #[error("writing the output")]
    Write(#[source] io::Error),
}

/// Shorthand for results whose error is [`DeltaError`].
pub type Result<T, E = DeltaError> = std::result::Result<T, E>;
