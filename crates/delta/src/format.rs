//! The patch format: the fixed header, and the varint encoding of the entries in the body.

use std::io::Read;

use crate::error::{DeltaError, Result};

/// The first eight bytes of every Drover delta.
pub const MAGIC: [u8; 8] = *b"DRVDELTA";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Header size in bytes: magic, version, compression, window log, block log, base length, base
/// sha256, result length, result sha256.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 32 + 8 + 32;
/// The smallest LZMA2 dictionary (liblzma's own minimum, 4 KiB).
pub const MIN_WINDOW_LOG: u8 = 12;
/// The largest LZMA2 dictionary a patch may ask the device for (2^18 = 256 KiB). This is the
/// ceiling `apply` enforces, so that a patch can never make a device allocate more than the
/// documented bound: each of the three decoders holds one dictionary.
pub const MAX_WINDOW_LOG: u8 = 18;
/// The LZMA2 dictionary the generator uses unless told otherwise (2^16 = 64 KiB), chosen by
/// measurement in docs/delta.md.
pub const DEFAULT_WINDOW_LOG: u8 = 16;
/// The smallest block (4 KiB of output).
pub const MIN_BLOCK_LOG: u8 = 12;
/// The largest block a patch may use (2^16 = 64 KiB of output): the device buffers one block's
/// compressed segments, each at most this plus [`SEGMENT_SLACK`].
pub const MAX_BLOCK_LOG: u8 = 16;
/// The block the generator uses unless told otherwise (2^16 = 64 KiB of output).
pub const DEFAULT_BLOCK_LOG: u8 = 16;
/// How much larger than its block a compressed segment may be: the xz stream header and footer,
/// LZMA2 chunk headers and the flush when data does not compress.
pub const SEGMENT_SLACK: usize = 1024;

/// How the three streams of the body are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Each stream is one .xz stream (LZMA2, no integrity check), cut at sync flushes.
    Xz = 1,
}

/// The fixed-size header at the start of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// How the body is compressed.
    pub compression: Compression,
    /// Log2 of the LZMA2 dictionary the streams were compressed with: each of the three decoders
    /// needs this much memory.
    pub window_log: u8,
    /// Log2 of the most output bytes one block produces; bounds each compressed segment.
    pub block_log: u8,
    /// Length of the base image, checked along with its hash.
    pub base_len: u64,
    /// sha256 of the base image: `apply` refuses any other image before writing a byte.
    pub base_sha256: [u8; 32],
    /// Length of the result image: bounds what the entries may write.
    pub result_len: u64,
    /// sha256 of the result image, verified after the last byte is written.
    pub result_sha256: [u8; 32],
}

impl Header {
    /// The header's bytes, as written at the start of a patch.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8] = FORMAT_VERSION;
        bytes[9] = self.compression as u8;
        bytes[10] = self.window_log;
        bytes[11] = self.block_log;
        bytes[12..20].copy_from_slice(&self.base_len.to_le_bytes());
        bytes[20..52].copy_from_slice(&self.base_sha256);
        bytes[52..60].copy_from_slice(&self.result_len.to_le_bytes());
        bytes[60..92].copy_from_slice(&self.result_sha256);
        bytes
    }

    /// Reads and validates a header (magic, version, compression, window bound).
    pub fn read(patch: &mut impl Read) -> Result<Header> {
        let mut bytes = [0u8; HEADER_LEN];
        read_exact_or(patch, &mut bytes, "header")?;
        if bytes[..8] != MAGIC {
            return Err(DeltaError::NotADelta);
        }
        if bytes[8] != FORMAT_VERSION {
            return Err(DeltaError::UnsupportedVersion {
                found: bytes[8],
                supported: FORMAT_VERSION,
            });
        }
        let compression = match bytes[9] {
            1 => Compression::Xz,
            other => return Err(DeltaError::UnsupportedCompression(other)),
        };
        let (window_log, block_log) = (bytes[10], bytes[11]);
        if window_log > MAX_WINDOW_LOG {
            return Err(DeltaError::WindowTooLarge {
                window_log,
                max_window_log: MAX_WINDOW_LOG,
            });
        }
        if window_log < MIN_WINDOW_LOG {
            return Err(DeltaError::Corrupt(format!(
                "window log {window_log} is below liblzma's minimum"
            )));
        }
        if !(MIN_BLOCK_LOG..=MAX_BLOCK_LOG).contains(&block_log) {
            return Err(DeltaError::Corrupt(format!(
                "block log {block_log} is outside {MIN_BLOCK_LOG}..={MAX_BLOCK_LOG}"
            )));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let hash_at = |at: usize| -> [u8; 32] { bytes[at..at + 32].try_into().expect("32 bytes") };
        Ok(Header {
            compression,
            window_log,
            block_log,
            base_len: u64_at(12),
            base_sha256: hash_at(20),
            result_len: u64_at(52),
            result_sha256: hash_at(60),
        })
    }
}

/// Appends `value` as an unsigned LEB128 varint (1 byte below 128, at most 10).
#[cfg(feature = "generate")]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one unsigned LEB128 varint of at most 10 bytes; `part` names where, for errors.
pub(crate) fn read_varint(input: &mut impl Read, part: &'static str) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let mut byte = [0u8; 1];
        read_exact_or(input, &mut byte, part)?;
        let bits = u64::from(byte[0] & 0x7f);
        if shift == 63 && bits > 1 {
            break;
        }
        value |= bits << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DeltaError::Corrupt(format!(
        "a number in the {part} does not fit in 64 bits"
    )))
}

/// Zigzag mapping, so that small negative seeks also take one or two bytes.
#[cfg(any(feature = "generate", test))]
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub(crate) fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

/// Fills `buf`, turning an early end of input into [`DeltaError::Truncated`] naming `part`.
pub(crate) fn read_exact_or(
    patch: &mut impl Read,
    buf: &mut [u8],
    part: &'static str,
) -> Result<()> {
    patch
        .read_exact(buf)
        .map_err(|err| classify_read_error(err, part))
}

/// Sorts an error from reading the (decompressed) delta into truncation, corruption (reported as
/// `InvalidData` by the stream decoders) or a failure of the transport underneath.
pub(crate) fn classify_read_error(err: std::io::Error, part: &'static str) -> DeltaError {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::UnexpectedEof => DeltaError::Truncated(part),
        ErrorKind::Other | ErrorKind::InvalidData | ErrorKind::InvalidInput => {
            DeltaError::Corrupt(format!("{part}: {err}"))
        }
        _ => DeltaError::ReadDelta(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_extremes_and_small_values() {
        for value in [0, 1, -1, 63, -64, i64::MAX, i64::MIN, 1 << 40, -(1 << 40)] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn header_round_trips_through_its_bytes() {
        let header = Header {
            compression: Compression::Xz,
            window_log: 16,
            block_log: 16,
            base_len: 12345,
            base_sha256: [7; 32],
            result_len: 999,
            result_sha256: [9; 32],
        };
        let bytes = header.to_bytes();
        assert_eq!(Header::read(&mut &bytes[..]).unwrap(), header);
    }
}
