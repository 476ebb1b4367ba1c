//! Server side: finds a bsdiff-style edit script from old to new and writes it as a patch.
//!
//! The matcher is Colin Percival's bsdiff 4 algorithm ("Naive differences of executable code",
//! 2003; BSD-2-Clause): a suffix array of the old image, then a greedy scan of the new image for
//! approximate matches, so that code which only moved (shifting every address it contains by the
//! same amount) becomes long runs of small byte differences that compress well. The suffix array
//! comes from `divsufsort` (32-bit indices, 4 bytes per base byte) instead of bsdiff's qsufsort
//! (16 bytes per byte and several times slower).

use std::io::Write;

use sha2::{Digest, Sha256};
use xz2::stream::{Action, Check, Filters, LzmaOptions, Status};

use crate::error::{DeltaError, Result};
use crate::format::{
    put_varint, zigzag, Compression, Header, DEFAULT_BLOCK_LOG, DEFAULT_WINDOW_LOG, MAX_BLOCK_LOG,
    MAX_WINDOW_LOG, MIN_BLOCK_LOG, MIN_WINDOW_LOG,
};

/// Knobs of [`generate_with`]. The defaults are the ones measured in docs/delta.md.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// xz preset of the three streams (0–9, 9 by default, always with `--extreme`). Generation
    /// time is dominated by the suffix sort and the scan, so the strongest preset costs little.
    pub level: u32,
    /// Log2 of the LZMA2 dictionary of each stream ([`MIN_WINDOW_LOG`] to [`MAX_WINDOW_LOG`]).
    /// The device's decoders hold three dictionaries; see [`DEFAULT_WINDOW_LOG`].
    pub window_log: u8,
    /// Log2 of the output bytes per block ([`MIN_BLOCK_LOG`] to [`MAX_BLOCK_LOG`]). The device
    /// buffers one block's compressed segments; see [`DEFAULT_BLOCK_LOG`].
    pub block_log: u8,
    /// Exact matches of at most this many bytes never start a new alignment (16 by default; 0 is
    /// bsdiff's rule).
    /// Measured in docs/delta.md: 16 to 24 are within 1 % of each other on both test pairs.
    pub min_match: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            level: 9,
            window_log: DEFAULT_WINDOW_LOG,
            block_log: DEFAULT_BLOCK_LOG,
            min_match: 16,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchInfo {
    /// Size of the whole patch in bytes, header included.
    pub patch_len: u64,
    /// sha256 of the base image, as written in the header.
    pub base_sha256: [u8; 32],
    /// Length of the result image.
    pub result_len: u64,
    /// sha256 of the result image, as written in the header.
    pub result_sha256: [u8; 32],
    /// Number of edit entries (add, copy, seek): a measure of how fragmented the match is.
    pub n_entries: u64,
    /// Number of blocks (each a group of entries with its three compressed segments).
    pub n_blocks: u64,
    /// Bytes of the result produced by adding differences to base bytes.
    pub diff_bytes: u64,
    /// Bytes of the result that had no match in the base and are carried literally.
    pub extra_bytes: u64,
}

/// Writes a patch that turns `old` into `new`, with the default options.
///
/// Memory is about 4 bytes per byte of `old` (the suffix array) plus the three xz compressors
/// (about 10 MiB each at preset 9e); time is a few seconds per ten megabytes (see BENCHMARKS).
pub fn generate(old: &[u8], new: &[u8], out: impl Write) -> Result<PatchInfo> {
    generate_with(old, new, out, &GenerateOptions::default())
}

/// [`generate`] with explicit compression options.
pub fn generate_with(
    old: &[u8],
    new: &[u8],
    out: impl Write,
    options: &GenerateOptions,
) -> Result<PatchInfo> {
    for image in [old, new] {
        if image.len() >= i32::MAX as usize {
            return Err(DeltaError::ImageTooLarge(image.len() as u64));
        }
    }
    let header = Header {
        compression: Compression::Xz,
        window_log: options.window_log.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG),
        block_log: options.block_log.clamp(MIN_BLOCK_LOG, MAX_BLOCK_LOG),
        base_len: old.len() as u64,
        base_sha256: Sha256::digest(old).into(),
        result_len: new.len() as u64,
        result_sha256: Sha256::digest(new).into(),
    };
    let mut out = CountingWriter {
        inner: out,
        n_bytes: 0,
    };
    out.write_all(&header.to_bytes())
        .map_err(DeltaError::Write)?;
    let mut blocks = BlockWriter::new(&mut out, &header, options.level)?;
    let mut diff = Vec::new();
    diff_entries(old, new, options.min_match, |entry| {
        let added = &new[entry.new_pos..entry.new_pos + entry.add_len];
        let base = &old[entry.old_pos..entry.old_pos + entry.add_len];
        diff.clear();
        diff.extend(added.iter().zip(base).map(|(n, o)| n.wrapping_sub(*o)));
        let copy_start = entry.new_pos + entry.add_len;
        blocks.entry(
            &diff,
            &new[copy_start..copy_start + entry.copy_len],
            entry.seek as i64,
        )
    })?;
    let mut info = blocks.finish()?;
    out.flush().map_err(DeltaError::Write)?;
    info.patch_len = out.n_bytes;
    info.base_sha256 = header.base_sha256;
    info.result_len = header.result_len;
    info.result_sha256 = header.result_sha256;
    Ok(info)
}

/// Cuts the entries into blocks of at most `2^block_log` output bytes and writes each block as its
/// three compressed segments. The three xz streams run on across blocks (a sync flush, not a new
/// stream, at each block end), so the dictionary keeps its history and only a few bytes of
/// framing per block are lost.
struct BlockWriter<'o, W: Write> {
    out: &'o mut W,
    /// Compressors of the control, difference and extra streams, each with its pending segment.
    encoders: [StreamEncoder; 3],
    block_len: usize,
    /// Entries, output bytes and uncompressed control bytes in the block being built.
    n_block_entries: u64,
    n_block_out: usize,
    n_block_control: usize,
    control: Vec<u8>,
    info: PatchInfo,
}

impl<'o, W: Write> BlockWriter<'o, W> {
    fn new(out: &'o mut W, header: &Header, level: u32) -> Result<Self> {
        let encoder = || StreamEncoder::new(level, header.window_log);
        Ok(BlockWriter {
            out,
            encoders: [encoder()?, encoder()?, encoder()?],
            block_len: 1 << header.block_log,
            n_block_entries: 0,
            n_block_out: 0,
            n_block_control: 0,
            control: Vec::with_capacity(30),
            info: PatchInfo {
                patch_len: 0,
                base_sha256: [0; 32],
                result_len: 0,
                result_sha256: [0; 32],
                n_entries: 0,
                n_blocks: 0,
                diff_bytes: 0,
                extra_bytes: 0,
            },
        })
    }

    /// Adds one entry, splitting it where it crosses a block boundary: (add, copy, seek) becomes
    /// (a1, c1, 0) then (add - a1, copy - c1, seek), which apply reads the same way.
    fn entry(&mut self, mut diff: &[u8], mut extra: &[u8], seek: i64) -> Result<()> {
        loop {
            // Blocks are written lazily, when an entry needs room, so the last block written (the
            // one that ends the frames) always holds entries.
            if self.n_block_out == self.block_len || self.n_block_control + 30 > self.block_len {
                self.write_block(false)?;
            }
            let room = self.block_len - self.n_block_out;
            if diff.len() + extra.len() <= room {
                return self.put(diff, extra, seek);
            }
            let n_diff = diff.len().min(room);
            let n_extra = room - n_diff;
            self.put(&diff[..n_diff], &extra[..n_extra], 0)?;
            (diff, extra) = (&diff[n_diff..], &extra[n_extra..]);
        }
    }

    fn put(&mut self, diff: &[u8], extra: &[u8], seek: i64) -> Result<()> {
        self.control.clear();
        put_varint(&mut self.control, diff.len() as u64);
        put_varint(&mut self.control, extra.len() as u64);
        put_varint(&mut self.control, zigzag(seek));
        let control = std::mem::take(&mut self.control);
        for (encoder, bytes) in self.encoders.iter_mut().zip([&control[..], diff, extra]) {
            encoder.feed(bytes, Action::Run)?;
        }
        self.control = control;
        self.n_block_entries += 1;
        self.n_block_out += diff.len() + extra.len();
        self.n_block_control += self.control.len();
        self.info.n_entries += 1;
        self.info.diff_bytes += diff.len() as u64;
        self.info.extra_bytes += extra.len() as u64;
        Ok(())
    }

    /// Writes the block being built: entry count, the three segment lengths, the segments.
    fn write_block(&mut self, last: bool) -> Result<()> {
        let mut segments: [Vec<u8>; 3] = Default::default();
        for (encoder, segment) in self.encoders.iter_mut().zip(&mut segments) {
            encoder.feed(
                &[],
                if last {
                    Action::Finish
                } else {
                    Action::SyncFlush
                },
            )?;
            *segment = std::mem::take(&mut encoder.segment);
        }
        let mut block_header = Vec::with_capacity(40);
        put_varint(&mut block_header, self.n_block_entries);
        for segment in &segments {
            put_varint(&mut block_header, segment.len() as u64);
        }
        self.out
            .write_all(&block_header)
            .map_err(DeltaError::Write)?;
        for segment in &segments {
            self.out.write_all(segment).map_err(DeltaError::Write)?;
        }
        self.info.n_blocks += 1;
        (self.n_block_entries, self.n_block_out, self.n_block_control) = (0, 0, 0);
        Ok(())
    }

    fn finish(mut self) -> Result<PatchInfo> {
        // An empty result has no entries and so no blocks: apply expects none.
        if self.info.n_entries > 0 {
            self.write_block(true)?;
        }
        Ok(self.info)
    }
}

/// liblzma's `LZMA_PRESET_EXTREME` flag (`xz -e`), which xz2 does not re-export.
const PRESET_EXTREME: u32 = 1 << 31;

/// One xz stream and what it has emitted since the last block was written.
struct StreamEncoder {
    stream: xz2::stream::Stream,
    segment: Vec<u8>,
}

impl StreamEncoder {
    fn new(level: u32, window_log: u8) -> Result<StreamEncoder> {
        let compressor_error =
            |err: xz2::stream::Error| DeltaError::Write(std::io::Error::other(err));
        let mut lzma =
            LzmaOptions::new_preset(level.min(9) | PRESET_EXTREME).map_err(compressor_error)?;
        lzma.dict_size(1 << window_log);
        // No xz check: the result's sha256 in the header covers everything.
        let stream =
            xz2::stream::Stream::new_stream_encoder(Filters::new().lzma2(&lzma), Check::None)
                .map_err(compressor_error)?;
        Ok(StreamEncoder {
            stream,
            segment: Vec::new(),
        })
    }

    /// Compresses `input` with `action`; a flush or finish runs until liblzma says it is done.
    fn feed(&mut self, mut input: &[u8], action: Action) -> Result<()> {
        loop {
            self.segment.reserve(64 * 1024);
            let before = self.stream.total_in();
            let status = self
                .stream
                .process_vec(input, &mut self.segment, action)
                .map_err(|err| DeltaError::Write(std::io::Error::other(err)))?;
            input = &input[(self.stream.total_in() - before) as usize..];
            let done = match action {
                Action::Run => input.is_empty(),
                _ => input.is_empty() && status == Status::StreamEnd,
            };
            if done {
                return Ok(());
            }
        }
    }
}

/// One step of the edit script: add `add_len` difference bytes to the base at `old_pos`, then
/// copy `copy_len` literal bytes, then move the base position by `seek`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// Where in the new image this entry's output starts (not stored: apply tracks it).
    pub(crate) new_pos: usize,
    /// Where in the old image the added-to bytes start (not stored: apply tracks it).
    pub(crate) old_pos: usize,
    pub(crate) add_len: usize,
    pub(crate) copy_len: usize,
    pub(crate) seek: isize,
}

/// Runs the bsdiff scan, calling `emit` with each entry in output order.
pub(crate) fn diff_entries(
    old: &[u8],
    new: &[u8],
    min_match: usize,
    mut emit: impl FnMut(Entry) -> Result<()>,
) -> Result<()> {
    let suffixes = suffix_array(old);
    let (old_len, new_len) = (old.len() as isize, new.len());
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut last_scan, mut last_pos, mut last_offset) = (0usize, 0usize, 0isize);
    // Whether `new[i]` equals the old byte at the current offset (the "free" match that a plain
    // continuation of the previous entry would get).
    let same_at = |i: usize, offset: isize| {
        let j = i as isize + offset;
        j >= 0 && j < old_len && old[j as usize] == new[i]
    };
    while scan < new_len {
        let mut old_score = 0isize;
        scan += len;
        let mut score_scan = scan;
        while scan < new_len {
            (pos, len) = search(&suffixes, old, &new[scan..]);
            while score_scan < scan + len {
                if same_at(score_scan, last_offset) {
                    old_score += 1;
                }
                score_scan += 1;
            }
            // Stop at an exact continuation of the current alignment, or at a new alignment that
            // beats it by more than 8 bytes (bsdiff's threshold) and is longer than `min_match`.
            // bsdiff takes any such match, however short; in code, short exact matches are mostly
            // chance, and each costs an entry and a seek that break a run of small differences.
            // Skipping them (as qbsdiff does below 12 bytes) gave 2-8 % smaller patches.
            let len_score = len as isize;
            if (len_score == old_score && len != 0)
                || (len_score > old_score + 8 && len > min_match)
            {
                break;
            }
            if same_at(scan, last_offset) {
                old_score -= 1;
            }
            scan += 1;
        }
        if len as isize == old_score && scan != new_len {
            continue;
        }
        // Extend the previous match forwards and the new one backwards while at least half the
        // bytes agree, then split any overlap where it maximises agreement.
        let (mut s, mut best_forward, mut len_forward, mut i) = (0isize, 0isize, 0usize, 0usize);
        while last_scan + i < scan && last_pos + i < old.len() {
            if old[last_pos + i] == new[last_scan + i] {
                s += 1;
            }
            i += 1;
            if s * 2 - i as isize > best_forward * 2 - len_forward as isize {
                best_forward = s;
                len_forward = i;
            }
        }
        let mut len_back = 0usize;
        if scan < new_len {
            let (mut s, mut best_back) = (0isize, 0isize);
            let mut i = 1;
            while scan >= last_scan + i && pos >= i {
                if old[pos - i] == new[scan - i] {
                    s += 1;
                }
                if s * 2 - i as isize > best_back * 2 - len_back as isize {
                    best_back = s;
                    len_back = i;
                }
                i += 1;
            }
        }
        if last_scan + len_forward > scan - len_back {
            let overlap = last_scan + len_forward - (scan - len_back);
            let (mut s, mut best, mut len_split) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                if new[last_scan + len_forward - overlap + i]
                    == old[last_pos + len_forward - overlap + i]
                {
                    s += 1;
                }
                if new[scan - len_back + i] == old[pos - len_back + i] {
                    s -= 1;
                }
                if s > best {
                    best = s;
                    len_split = i + 1;
                }
            }
            len_forward = len_forward + len_split - overlap;
            len_back -= len_split;
        }
        emit(Entry {
            new_pos: last_scan,
            old_pos: last_pos,
            add_len: len_forward,
            copy_len: (scan - len_back) - (last_scan + len_forward),
            seek: (pos as isize - len_back as isize) - (last_pos + len_forward) as isize,
        })?;
        last_scan = scan - len_back;
        last_pos = pos - len_back;
        last_offset = pos as isize - scan as isize;
    }
    Ok(())
}

/// The suffix array of `old` (positions of its suffixes in lexicographic order).
fn suffix_array(old: &[u8]) -> Vec<i32> {
    let mut suffixes = vec![0i32; old.len()];
    divsufsort::sort_in_place(old, &mut suffixes);
    suffixes
}

/// The longest prefix of `target` found in `old`: (position in old, length), by binary search
/// over the suffix array (bsdiff's `search`).
fn search(suffixes: &[i32], old: &[u8], target: &[u8]) -> (usize, usize) {
    if suffixes.is_empty() {
        return (0, 0);
    }
    let (mut lo, mut hi) = (0usize, suffixes.len() - 1);
    while hi - lo >= 2 {
        let mid = lo + (hi - lo) / 2;
        let suffix = &old[suffixes[mid] as usize..];
        let n = suffix.len().min(target.len());
        if suffix[..n] < target[..n] {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let at = |idx: usize| suffixes[idx] as usize;
    let (len_lo, len_hi) = (
        common_prefix(&old[at(lo)..], target),
        common_prefix(&old[at(hi)..], target),
    );
    if len_lo >= len_hi {
        (at(lo), len_lo)
    } else {
        (at(hi), len_hi)
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Counts what passes through, for [`PatchInfo::patch_len`].
struct CountingWriter<W> {
    inner: W,
    n_bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The three bsdiff streams (control triples as varints, differences, extra bytes) kept apart,
/// for the `eval` example's comparison of one interleaved stream against separate ones.
#[doc(hidden)]
pub fn bsdiff_streams(old: &[u8], new: &[u8], min_match: usize) -> Result<[Vec<u8>; 3]> {
    let [mut control, mut diff, mut extra] = [Vec::new(), Vec::new(), Vec::new()];
    diff_entries(old, new, min_match, |entry| {
        put_varint(&mut control, entry.add_len as u64);
        put_varint(&mut control, entry.copy_len as u64);
        put_varint(&mut control, zigzag(entry.seek as i64));
        let added = &new[entry.new_pos..entry.new_pos + entry.add_len];
        diff.extend(
            added
                .iter()
                .zip(&old[entry.old_pos..])
                .map(|(n, o)| n.wrapping_sub(*o)),
        );
        let copy_start = entry.new_pos + entry.add_len;
        extra.extend_from_slice(&new[copy_start..copy_start + entry.copy_len]);
        Ok(())
    })?;
    Ok([control, diff, extra])
}
