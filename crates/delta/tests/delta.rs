//! Black-box tests of the patch format: round trips on executable-like images, refusal of the
//! wrong base, and clear errors (never panics) for truncated, bit-flipped and forged patches.

use std::io::Cursor;

use drover_delta::{apply, generate, generate_with, DeltaError, GenerateOptions, HEADER_LEN};

/// A deterministic xorshift generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// An image shaped like code: 4-byte "instructions" from a small alphabet, some holding
/// addresses, and runs of zeros.
fn base_image(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut image = Vec::with_capacity(len);
    while image.len() < len {
        match rng.next() % 10 {
            0 => image.extend(std::iter::repeat_n(0, (rng.next() % 64) as usize)),
            1..=3 => image
                .extend_from_slice(&(0x40_0000u32 + (rng.next() % 0x10_0000) as u32).to_le_bytes()),
            _ => image.extend_from_slice(&[0x48, 0x89, (rng.next() % 8) as u8, 0xc3]),
        }
    }
    image.truncate(len);
    image
}

/// The next version of `base`: a region inserted and one deleted (shifting what follows), every
/// "address" after the insertion moved, and a few bytes changed.
fn next_version(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut image = base.to_vec();
    let insert_at = base.len() / 3;
    image.splice(insert_at..insert_at, rng.bytes(3000));
    let delete_at = base.len() * 2 / 3;
    image.drain(delete_at..delete_at + 1000);
    for at in (insert_at..image.len().saturating_sub(4)).step_by(4) {
        let word = u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
        if (0x40_0000..0x50_0000).contains(&word) {
            image[at..at + 4].copy_from_slice(&(word + 0x1000).to_le_bytes());
        }
    }
    for _ in 0..20 {
        let at = (rng.next() as usize) % image.len();
        image[at] = rng.next() as u8;
    }
    image
}

fn patch_for(old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut patch = Vec::new();
    let info = generate(old, new, &mut patch).unwrap();
    assert_eq!(info.patch_len, patch.len() as u64);
    patch
}

fn apply_to_vec(
    old: &[u8],
    patch: &[u8],
) -> (Result<drover_delta::ApplyReport, DeltaError>, Vec<u8>) {
    let mut out = Vec::new();
    let result = apply(Cursor::new(old), patch, &mut out);
    (result, out)
}

#[test]
fn a_patch_between_two_versions_reproduces_the_new_image_exactly() {
    let mut rng = Rng(1);
    let old = base_image(&mut rng, 300_000);
    let new = next_version(&mut rng, &old);
    let patch = patch_for(&old, &new);
    assert!(
        patch.len() < new.len() / 5,
        "patch of {} bytes for a {}-byte image",
        patch.len(),
        new.len()
    );
    let (report, out) = apply_to_vec(&old, &patch);
    let report = report.unwrap();
    assert_eq!(out, new);
    assert_eq!(report.result_len, new.len() as u64);
}

#[test]
fn entries_longer_than_a_block_are_split_and_still_apply() {
    let mut rng = Rng(2);
    let old = base_image(&mut rng, 1 << 20);
    let mut new = old.clone();
    new.extend(rng.bytes(200_000));
    for (window_log, block_log) in [(10, 12), (16, 16), (18, 16)] {
        let mut patch = Vec::new();
        let info = generate_with(
            &old,
            &new,
            &mut patch,
            &GenerateOptions {
                level: 3,
                window_log: window_log.max(12),
                block_log,
                min_match: 16,
            },
        )
        .unwrap();
        assert!(info.n_blocks > 1);
        let (report, out) = apply_to_vec(&old, &patch);
        report.unwrap();
        assert_eq!(out, new);
    }
}

#[test]
fn empty_base_and_empty_result_are_valid_patches() {
    let mut rng = Rng(3);
    let image = rng.bytes(10_000);
    for (old, new) in [
        (&[][..], &image[..]),
        (&image[..], &[][..]),
        (&[][..], &[][..]),
    ] {
        let patch = patch_for(old, new);
        let (report, out) = apply_to_vec(old, &patch);
        report.unwrap();
        assert_eq!(out, new);
    }
}

#[test]
fn apply_memory_does_not_grow_with_the_image() {
    let mut rng = Rng(4);
    let (mut small_memory, mut large_memory) = (0, 0);
    for (len, memory) in [(100_000, &mut small_memory), (4_000_000, &mut large_memory)] {
        let old = base_image(&mut rng, len);
        let new = next_version(&mut rng, &old);
        let (report, _) = apply_to_vec(&old, &patch_for(&old, &new));
        *memory = report.unwrap().memory_bytes();
    }
    assert!(large_memory < 850_000, "apply used {large_memory} bytes");
    assert!(
        large_memory <= small_memory + 64 * 1024,
        "{small_memory} then {large_memory} bytes"
    );
}

#[test]
fn a_patch_for_another_base_is_refused_before_anything_is_written() {
    let mut rng = Rng(5);
    let old = base_image(&mut rng, 50_000);
    let new = next_version(&mut rng, &old);
    let patch = patch_for(&old, &new);
    let mut other = old.clone();
    other[100] ^= 1;
    let (result, out) = apply_to_vec(&other, &patch);
    let err = result.unwrap_err();
    assert!(matches!(err, DeltaError::WrongBase { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("delta is for base image "), "{message}");
    assert!(
        message.contains(&sha256_hex(&old)) && message.contains(&sha256_hex(&other)),
        "{message}"
    );
    assert!(out.is_empty());
}

#[test]
fn a_patch_whose_promised_hash_is_wrong_fails_with_result_hash_mismatch() {
    let mut rng = Rng(6);
    let old = base_image(&mut rng, 50_000);
    let new = next_version(&mut rng, &old);
    let mut patch = patch_for(&old, &new);
    patch[60] ^= 0x80; // first byte of the result sha256
    let err = apply_to_vec(&old, &patch).0.unwrap_err();
    assert!(matches!(err, DeltaError::ResultMismatch { .. }), "{err:?}");
    assert!(err.to_string().starts_with("result hash mismatch"), "{err}");
}

#[test]
fn every_truncation_of_a_patch_is_an_error_not_a_panic() {
    let mut rng = Rng(7);
    let old = base_image(&mut rng, 200_000);
    let new = next_version(&mut rng, &old);
    let patch = patch_for(&old, &new);
    let mut cuts: Vec<usize> = (0..HEADER_LEN + 64).collect();
    cuts.extend((HEADER_LEN..patch.len()).step_by(97));
    cuts.extend(patch.len() - 64..patch.len());
    for cut in cuts {
        let err = apply_to_vec(&old, &patch[..cut])
            .0
            .expect_err("a truncated patch applied");
        assert!(
            matches!(err, DeltaError::Truncated(_) | DeltaError::Corrupt(_)),
            "cut at {cut} of {}: {err:?}",
            patch.len()
        );
    }
    let err = apply_to_vec(&old, &patch[..patch.len() / 2]).0.unwrap_err();
    assert!(err.to_string().starts_with("truncated delta"), "{err}");
}

#[test]
fn bit_flips_anywhere_in_a_patch_give_an_error_or_the_exact_result() {
    let mut rng = Rng(8);
    let old = base_image(&mut rng, 100_000);
    let new = next_version(&mut rng, &old);
    let patch = patch_for(&old, &new);
    let mut positions: Vec<usize> = (0..HEADER_LEN + 32).collect();
    positions.extend((0..600).map(|_| rng.next() as usize % patch.len()));
    for at in positions {
        let mut flipped = patch.clone();
        flipped[at] ^= 1 << (rng.next() % 8);
        let (result, out) = apply_to_vec(&old, &flipped);
        if result.is_ok() {
            assert_eq!(
                out, new,
                "a flip at {at} produced a different image without an error"
            );
        }
    }
}

#[test]
fn trailing_bytes_after_the_last_block_are_refused() {
    let mut rng = Rng(9);
    let old = base_image(&mut rng, 20_000);
    let new = next_version(&mut rng, &old);
    let mut patch = patch_for(&old, &new);
    patch.push(0);
    let err = apply_to_vec(&old, &patch).0.unwrap_err();
    assert!(err.to_string().contains("trailing bytes"), "{err}");
}

#[test]
fn headers_from_other_files_versions_and_windows_are_refused_by_name() {
    let mut rng = Rng(10);
    let old = base_image(&mut rng, 20_000);
    let patch = patch_for(&old, &next_version(&mut rng, &old));
    let cases: [(usize, u8, &str); 4] = [
        (0, b'X', "not a Drover delta"),
        (8, 2, "delta format version 2 is not supported"),
        (9, 7, "delta compression 7 is not supported"),
        (10, 27, "decompression window, above this build's limit"),
    ];
    for (at, value, expected) in cases {
        let mut forged = patch.clone();
        forged[at] = value;
        let err = apply_to_vec(&old, &forged).0.unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "byte {at} = {value}: {err}"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
