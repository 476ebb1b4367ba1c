//! Binary deltas between firmware images: generation on the server, bounded-memory apply on devices.
//!
//! A delta (or patch) turns one exact base image into one exact result image. The server makes it
//! with [`generate`] from both images in memory; the device applies it with [`apply`], reading the
//! base from its active slot with seeks and streaming the result into the inactive slot, in memory
//! that does not depend on the image size: at most 800 KiB with the default 64 KiB dictionary
//! (1.3 MiB with the largest a patch may ask for), of which about 450 KiB was resident in
//! measurements; see [`apply`] and [`ApplyReport`]. Why a bsdiff-style matcher with three xz
//! streams in blocks, and what else was measured (zstd, zstd's patch-from, bsdiff, qbsdiff,
//! bidiff), is in `docs/delta.md`.
//!
//! # Layout
//!
//! - `format.rs`: the header, the format's limits and the varint encoding of entries.
//! - `generate.rs` (feature `generate`, on by default): the bsdiff scan over a suffix array and
//!   the block writer with its three xz compressors. Devices build with
//!   `default-features = false` and so do without the suffix sorter; they link liblzma (whose
//!   encoder the linker drops, as apply never calls it) and sha256.
//! - `apply.rs`: base check, streaming apply, result check.
//! - `error.rs`: [`DeltaError`], the one error type.
//! - `examples/generate.rs` and `examples/apply.rs` write and apply patch files (apply in a process
//!   of its own, for its peak RSS); `examples/eval.rs` (feature `eval`) measures the alternatives
//!   in docs/delta.md.
//!
//! # Patch format (version 1)
//!
//! Integers in the header are little-endian. A 92-byte header:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `DRVDELTA` |
//! | 8 | 1 | format version (1) |
//! | 9 | 1 | compression of the streams (1 = .xz streams, LZMA2, no integrity check) |
//! | 10 | 1 | window log: each stream's LZMA2 dictionary is at most 2^n bytes (12 ..= 18) |
//! | 11 | 1 | block log: a block produces at most 2^n bytes of output (12 ..= 16) |
//! | 12 | 8 | base image length |
//! | 20 | 32 | base image sha256 |
//! | 52 | 8 | result image length |
//! | 60 | 32 | result image sha256 |
//!
//! The edit script is bsdiff's: a sequence of entries `(add_len, copy_len, seek)`. For each,
//! output `base[pos + i] + diff[i]` (wrapping) for `add_len` bytes and advance `pos` by `add_len`,
//! output `copy_len` literal ("extra") bytes, then move `pos` by `seek`; `pos` starts at 0. The
//! controls (unsigned LEB128 `add_len`, `copy_len`, zigzag LEB128 `seek`), the difference bytes and
//! the extra bytes form three streams, each compressed as one .xz stream: kept apart, they
//! compress 4-10 % better than interleaved (docs/delta.md).
//!
//! So that the device can read all three from one sequential patch without buffering a whole
//! stream, the body is cut into blocks, each producing at most 2^block-log bytes of output:
//!
//! ```text
//! block := n_entries: varint (>= 1)
//!          control_len: varint   diff_len: varint   extra_len: varint
//!          control segment       diff segment       extra segment
//! ```
//!
//! Each segment is what its stream's compressor emitted for this block's entries, ending at an
//! LZMA2 sync flush (not a new stream, so the dictionary keeps its history); no segment exceeds
//! 2^block-log + 1 KiB. Entries that cross a block boundary are split. The last block ends the
//! three .xz streams; nothing follows it. An empty result has no blocks at all.

mod apply;
mod error;
mod format;
#[cfg(feature = "generate")]
mod generate;

pub use apply::{apply, ApplyReport, APPLY_CHUNK};
pub use error::{DeltaError, Result};
pub use format::{
    Compression, Header, DEFAULT_BLOCK_LOG, DEFAULT_WINDOW_LOG, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_BLOCK_LOG, MAX_WINDOW_LOG, MIN_BLOCK_LOG, MIN_WINDOW_LOG, SEGMENT_SLACK,
};
#[cfg(feature = "generate")]
pub use generate::{bsdiff_streams, generate, generate_with, GenerateOptions, PatchInfo};
