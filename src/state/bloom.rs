//! Guava `BloomFilter` with strategy `MURMUR128_MITZ_64`, as shipped for
//! materialized segments.

use std::fmt;

use crate::proto::admin::resolver_state::BloomFilter as BloomFilterProto;

/// Guava's ordinal for `MURMUR128_MITZ_64`, the only strategy accepted.
pub const STRATEGY_MURMUR128_MITZ_64: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BloomError {
    UnsupportedStrategy { strategy: i32 },
    BadHashFunctionCount { count: i32 },
    BadBitCount { bit_count: i64, data_bits: u64 },
    DataNotWords { len: usize },
}

impl fmt::Display for BloomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedStrategy { strategy } => {
                write!(f, "bloom filter strategy {strategy} unsupported (only 1, MURMUR128_MITZ_64)")
            }
            Self::BadHashFunctionCount { count } => {
                write!(f, "bloom filter hash_function_count {count} not in 1..=255")
            }
            Self::BadBitCount { bit_count, data_bits } => {
                write!(f, "bloom filter bit_count {bit_count} must be in 1..={data_bits} (8 x data length)")
            }
            Self::DataNotWords { len } => {
                write!(f, "bloom filter data is {len} bytes, not a whole number of 8-byte words")
            }
        }
    }
}

impl std::error::Error for BloomError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    /// Guava's long[] words; bit i is bit i%64 of word i/64.
    words: Vec<u64>,
    bit_count: u64,
    hash_functions: u32,
}

impl BloomFilter {
    pub fn from_proto(p: &BloomFilterProto) -> Result<Self, BloomError> {
        if p.strategy != STRATEGY_MURMUR128_MITZ_64 {
            return Err(BloomError::UnsupportedStrategy { strategy: p.strategy });
        }
        let hash_functions = u32::try_from(p.hash_function_count)
            .ok()
            .filter(|k| (1..=255).contains(k))
            .ok_or(BloomError::BadHashFunctionCount { count: p.hash_function_count })?;
        if !p.data.len().is_multiple_of(8) {
            return Err(BloomError::DataNotWords { len: p.data.len() });
        }
        let data_bits = (p.data.len() as u64).saturating_mul(8);
        let bit_count = u64::try_from(p.bit_count)
            .ok()
            .filter(|&m| m > 0 && m <= data_bits)
            .ok_or(BloomError::BadBitCount { bit_count: p.bit_count, data_bits })?;
        let words = p
            .data
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_be_bytes(w)
            })
            .collect();
        Ok(BloomFilter { words, bit_count, hash_functions })
    }

    pub fn bit_count(&self) -> u64 {
        self.bit_count
    }

    pub fn hash_function_count(&self) -> u32 {
        self.hash_functions
    }

    fn bit(&self, i: u64) -> bool {
        usize::try_from(i / 64).ok().and_then(|w| self.words.get(w)).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    /// False means definitely absent; true means probably present.
    pub fn might_contain(&self, key: &str) -> bool {
        let h = fastmurmur3::murmur3_x64_128(key.as_bytes(), 0);
        // Guava reads the 128-bit hash as two little-endian longs: low word first.
        let h1 = h as u64 as i64;
        let h2 = (h >> 64) as u64 as i64;
        let mut combined = h1;
        for _ in 0..self.hash_functions {
            let idx = (combined & i64::MAX) as u64 % self.bit_count;
            if !self.bit(idx) {
                return false;
            }
            combined = combined.wrapping_add(h2);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn spec_filter() -> BloomFilterProto {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let bf = &v["bloomFilters"]["materializations/bf-seg"];
        let data = base64::engine::general_purpose::STANDARD.decode(bf["data"].as_str().unwrap()).unwrap();
        BloomFilterProto {
            materialized_segment: "materializations/bf-seg".into(),
            data,
            hash_function_count: bf["hashFunctionCount"].as_i64().unwrap() as i32,
            bit_count: bf["bitCount"].as_i64().unwrap(),
            strategy: bf["strategy"].as_i64().unwrap() as i32,
        }
    }

    #[test]
    fn spec_bloom_filter() {
        let f = BloomFilter::from_proto(&spec_filter()).unwrap();
        assert_eq!((f.hash_function_count(), f.bit_count()), (7, 960));
        assert!(f.might_contain("user1"));
        for k in ["user2", "user3", "user4"] {
            assert!(!f.might_contain(k), "{k}");
        }
    }

    #[test]
    fn validation() {
        let good = spec_filter();
        let check = |m: &dyn Fn(&mut BloomFilterProto), want: BloomError| {
            let mut p = good.clone();
            m(&mut p);
            let e = BloomFilter::from_proto(&p).unwrap_err();
            assert_eq!(e, want);
            assert!(!e.to_string().is_empty());
        };
        check(&|p| p.strategy = 0, BloomError::UnsupportedStrategy { strategy: 0 });
        check(&|p| p.hash_function_count = 0, BloomError::BadHashFunctionCount { count: 0 });
        check(&|p| p.hash_function_count = 256, BloomError::BadHashFunctionCount { count: 256 });
        check(&|p| p.bit_count = 961, BloomError::BadBitCount { bit_count: 961, data_bits: 960 });
        check(&|p| p.bit_count = 0, BloomError::BadBitCount { bit_count: 0, data_bits: 960 });
        check(&|p| p.data.push(0), BloomError::DataNotWords { len: 121 });
    }

    #[test]
    fn all_ones_contains_everything() {
        let p = BloomFilterProto {
            materialized_segment: String::new(),
            data: vec![0xFF; 16],
            hash_function_count: 255,
            bit_count: 100,
            strategy: 1,
        };
        let f = BloomFilter::from_proto(&p).unwrap();
        assert!(f.might_contain("") && f.might_contain("anything"));
    }
}
