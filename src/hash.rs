//! Bucketing: MurmurHash3 x64_128 (seed 0), first 64-bit word, shifted right
//! by 4 and reduced modulo the bucket count. Keys are joined with `|`.

/// Buckets of a segment bitset.
pub const SEGMENT_BUCKETS: u64 = 1_000_000;

/// h1 of MurmurHash3 x64_128 with seed 0 (Guava's `asLong()`).
#[inline]
pub fn murmur_h1(key: &[u8]) -> u64 {
    fastmurmur3::murmur3_x64_128(key, 0) as u64
}

/// Bucket of `h1` among `count` buckets; `count` must be non-zero (the state
/// loader rejects a rule with a zero bucket count).
#[inline]
pub fn bucket_of(h1: u64, count: u64) -> u64 {
    if count == 0 {
        return 0;
    }
    (h1 >> 4) % count
}

/// Bucket of the key `prefix|unit` without allocating for typical sizes.
pub fn bucket(prefix: &str, unit: &str, count: u64) -> u64 {
    let len = prefix.len().saturating_add(1).saturating_add(unit.len());
    let mut stack = [0u8; 256];
    let h = if let Some(key) = join_into(&mut stack, prefix, unit) {
        murmur_h1(key)
    } else {
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(prefix.as_bytes());
        v.push(b'|');
        v.extend_from_slice(unit.as_bytes());
        murmur_h1(&v)
    };
    bucket_of(h, count)
}

/// `prefix|unit` written into `buf`, or `None` when it does not fit.
fn join_into<'a>(buf: &'a mut [u8], prefix: &str, unit: &str) -> Option<&'a [u8]> {
    let len = prefix.len().checked_add(1)?.checked_add(unit.len())?;
    let key = buf.get_mut(..len)?;
    let (head, rest) = key.split_at_mut(prefix.len());
    head.copy_from_slice(prefix.as_bytes());
    let (bar, tail) = rest.split_first_mut()?;
    *bar = b'|';
    tail.copy_from_slice(unit.as_bytes());
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vector_from_semantics() {
        let full = fastmurmur3::murmur3_x64_128(b"MegaSalt-confidence-test|roug", 0);
        assert_eq!(full as u64, 0x03218d7dfb23a053);
        assert_eq!((full >> 64) as u64, 0xd8fda05c32b2d74a);
        assert_eq!(bucket("MegaSalt-confidence-test", "roug", SEGMENT_BUCKETS), 567493);
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(bucket("country-se", "user1", 1000), 719);
        assert_eq!(bucket("MegaSalt-test-account", "user1", SEGMENT_BUCKETS), 392909);
        assert_eq!(
            bucket("MegaSalt-test-account", "user-definitely-not-in-bitset-xyz-abc-123", SEGMENT_BUCKETS),
            668961
        );
    }

    #[test]
    fn long_keys_hash_like_short_ones() {
        let unit = "u".repeat(300);
        let mut key = b"p|".to_vec();
        key.extend_from_slice(unit.as_bytes());
        assert_eq!(bucket("p", &unit, 97), bucket_of(murmur_h1(&key), 97));
    }

    #[test]
    fn zero_buckets_never_divides() {
        assert_eq!(bucket_of(12345, 0), 0);
    }
}
