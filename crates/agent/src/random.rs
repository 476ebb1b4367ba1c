//! Randomness: a small seeded generator for jitter (tests pass a fixed seed) and secrets from the
//! kernel for the enrolment nonce.

use std::io::Read;

/// SplitMix64: fast, tiny and good enough to spread retries; never used for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the kernel, falling back to the clock and process id.
    pub fn from_entropy() -> Rng {
        let mut bytes = [0u8; 8];
        if fill_secure(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
        }
        Rng(u64::from_le_bytes(bytes))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max` (the slight modulo bias does not matter for jitter).
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// Fills `bytes` from the kernel's cryptographic generator.
pub fn fill_secure(bytes: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(bytes)
}

/// A random enrolment nonce: 32 bytes as 64 hex characters (the server accepts 16–128).
pub fn nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    fill_secure(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_stays_within_bounds_and_varies() {
        let mut rng = Rng::seeded(7);
        let values: Vec<u64> = (0..1000).map(|_| rng.up_to(10)).collect();
        assert!(values.iter().all(|v| *v <= 10));
        assert!(values.contains(&0) && values.contains(&10));
    }

    #[test]
    fn nonces_are_long_hex_and_distinct() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
