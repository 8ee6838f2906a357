//! Segment bitsets: 1,000,000 bucket bits shipped gzipped, LSB-first.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

use prost::bytes::Bytes;

use flate2::{Compression, Crc, Decompress, FlushDecompress, Status};

/// Buckets a segment bitset covers; unit buckets are `hash % BUCKETS`.
pub const BUCKETS: usize = 1_000_000;

/// Upper bound on an inflated bitset. Real ones are 125,000 bytes; the cap
/// exists so a hostile state cannot make us allocate without limit.
pub const MAX_INFLATED_BYTES: usize = 16 * 1024 * 1024;

const GZIP_HEADER_LEN: usize = 10;
const GZIP_TRAILER_LEN: usize = 8;
const FLAG_FHCRC: u8 = 0x02;
const FLAG_FEXTRA: u8 = 0x04;
const FLAG_FNAME: u8 = 0x08;
const FLAG_FCOMMENT: u8 = 0x10;
const FLAG_RESERVED: u8 = 0xE0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitsetError {
    TooShort {
        len: usize,
    },
    BadMagic {
        found: [u8; 2],
    },
    UnsupportedMethod {
        cm: u8,
    },
    ReservedFlags {
        flags: u8,
    },
    /// Optional header fields the strict reader refuses (FEXTRA, FNAME, ...).
    UnsupportedHeaderField {
        field: &'static str,
    },
    Inflate(String),
    /// The deflate stream ended before its final block.
    Truncated,
    /// Bytes between the end of the deflate stream and the trailer.
    TrailingData {
        extra: usize,
    },
    TooLarge {
        limit: usize,
    },
    CrcMismatch {
        trailer: u32,
        actual: u32,
    },
    SizeMismatch {
        trailer: u32,
        actual: u32,
    },
    IndexOutOfRange {
        index: usize,
        len_bits: usize,
    },
}

impl fmt::Display for BitsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => {
                write!(f, "gzip data too short: {len} bytes, need at least {}", GZIP_HEADER_LEN + GZIP_TRAILER_LEN)
            }
            Self::BadMagic { found } => {
                write!(f, "not gzip: magic is {:02x} {:02x}, expected 1f 8b", found[0], found[1])
            }
            Self::UnsupportedMethod { cm } => {
                write!(f, "gzip compression method {cm} unsupported (only 8, deflate)")
            }
            Self::ReservedFlags { flags } => {
                write!(f, "gzip header has reserved flag bits set: 0x{flags:02x}")
            }
            Self::UnsupportedHeaderField { field } => {
                write!(f, "gzip header field {field} is not accepted")
            }
            Self::Inflate(e) => write!(f, "gzip deflate body invalid: {e}"),
            Self::Truncated => write!(f, "gzip deflate body truncated (no final block)"),
            Self::TrailingData { extra } => {
                write!(f, "gzip has {extra} unexpected bytes between the deflate body and the trailer")
            }
            Self::TooLarge { limit } => {
                write!(f, "gzip inflates to more than {limit} bytes")
            }
            Self::CrcMismatch { trailer, actual } => {
                write!(f, "gzip CRC mismatch: trailer says 0x{trailer:08x}, data has 0x{actual:08x}")
            }
            Self::SizeMismatch { trailer, actual } => {
                write!(f, "gzip ISIZE mismatch: trailer says {trailer}, data has {actual} (mod 2^32)")
            }
            Self::IndexOutOfRange { index, len_bits } => {
                write!(f, "bit index {index} out of range for a {len_bits}-bit bitset")
            }
        }
    }
}

impl std::error::Error for BitsetError {}

/// Decoded bits. Bit `i` is `(bytes[i/8] >> (i%8)) & 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitset {
    bytes: Vec<u8>,
    len_bits: usize,
    all_set: bool,
}

impl Bitset {
    /// No bits: allocates no bucket.
    pub const EMPTY: Bitset = Bitset { bytes: Vec::new(), len_bits: 0, all_set: false };

    fn new(bytes: Vec<u8>, len_bits: usize) -> Self {
        let whole = len_bits / 8;
        let all_set = len_bits > 0
            && bytes.get(..whole).is_some_and(|b| b.iter().all(|&x| x == 0xFF))
            && (whole * 8..len_bits).all(|i| bit_of(&bytes, i));
        Bitset { bytes, len_bits, all_set }
    }

    /// Every bit in `0..len_bits` set.
    pub fn full(len_bits: usize) -> Self {
        let mut bytes = vec![0xFF; len_bits.div_ceil(8)];
        // Keep padding bits clear so equality and count_ones stay exact.
        if let (Some(last), r) = (bytes.last_mut(), len_bits % 8) {
            if r != 0 {
                *last = (1u8 << r) - 1;
            }
        }
        Bitset { bytes, len_bits, all_set: len_bits > 0 }
    }

    pub fn from_set_bits(len_bits: usize, set: impl IntoIterator<Item = usize>) -> Result<Self, BitsetError> {
        let mut bytes = vec![0u8; len_bits.div_ceil(8)];
        for index in set {
            if index >= len_bits {
                return Err(BitsetError::IndexOutOfRange { index, len_bits });
            }
            if let Some(b) = bytes.get_mut(index / 8) {
                *b |= 1 << (index % 8);
            }
        }
        Ok(Self::new(bytes, len_bits))
    }

    /// Strict gzip reader: the length in bits is 8 × the inflated size.
    pub fn from_gzip(data: &[u8]) -> Result<Self, BitsetError> {
        let bytes = gunzip_strict(data)?;
        let len_bits = bytes.len() * 8;
        Ok(Self::new(bytes, len_bits))
    }

    /// Standard gzip with a bare 10-byte header, readable by `from_gzip`.
    pub fn to_gzip(&self) -> Vec<u8> {
        let body = deflate(&self.bytes);
        let mut crc = Crc::new();
        crc.update(&self.bytes);
        let mut out = Vec::with_capacity(GZIP_HEADER_LEN + body.len() + GZIP_TRAILER_LEN);
        // mtime 0, XFL 0, OS 255 (unknown): nothing host-dependent in the output.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        out
    }

    pub fn len_bits(&self) -> usize {
        self.len_bits
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn get(&self, i: usize) -> bool {
        i < self.len_bits && bit_of(&self.bytes, i)
    }

    /// True when every bit is set (false for an empty bitset, which matches nothing).
    pub fn all_set(&self) -> bool {
        self.all_set
    }

    pub fn count_ones(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A gzipped bitset inflated when first read. Only for bytes that already
/// passed [`Bitset::from_gzip`] (the build validates an embedded state), so
/// an isolate's first request does not pay for inflating every segment.
#[derive(Debug)]
pub struct DeferredBitset {
    gzip: Bytes,
    bits: OnceLock<Result<Bitset, BitsetError>>,
}

impl DeferredBitset {
    pub fn new(gzip: Bytes) -> Self {
        DeferredBitset { gzip, bits: OnceLock::new() }
    }

    /// Bits the trailer's ISIZE promises, without inflating.
    pub fn declared_len_bits(&self) -> Option<usize> {
        let n = self.gzip.len();
        let isize = self.gzip.get(n.checked_sub(4)?..)?;
        let mut w = [0u8; 4];
        w.copy_from_slice(isize);
        usize::try_from(u32::from_le_bytes(w)).ok()?.checked_mul(8)
    }

    /// Inflates on the first call; later calls return the same result.
    pub fn get(&self) -> Result<&Bitset, &BitsetError> {
        self.bits.get_or_init(|| Bitset::from_gzip(&self.gzip)).as_ref()
    }

    /// The inflate error, if the bitset was read and failed.
    pub fn failure(&self) -> Option<&BitsetError> {
        self.bits.get().and_then(|r| r.as_ref().err())
    }
}

fn bit_of(bytes: &[u8], i: usize) -> bool {
    bytes.get(i / 8).is_some_and(|b| (b >> (i % 8)) & 1 == 1)
}

fn gunzip_strict(data: &[u8]) -> Result<Vec<u8>, BitsetError> {
    if data.len() < GZIP_HEADER_LEN + GZIP_TRAILER_LEN {
        return Err(BitsetError::TooShort { len: data.len() });
    }
    let (header, rest) = data.split_at(GZIP_HEADER_LEN);
    let (body, trailer) = rest.split_at(rest.len() - GZIP_TRAILER_LEN);
    let [m0, m1, cm, flg, ..] = *header else {
        return Err(BitsetError::TooShort { len: data.len() });
    };
    if [m0, m1] != [0x1f, 0x8b] {
        return Err(BitsetError::BadMagic { found: [m0, m1] });
    }
    if cm != 8 {
        return Err(BitsetError::UnsupportedMethod { cm });
    }
    if flg & FLAG_RESERVED != 0 {
        return Err(BitsetError::ReservedFlags { flags: flg });
    }
    for (bit, field) in
        [(FLAG_FEXTRA, "FEXTRA"), (FLAG_FNAME, "FNAME"), (FLAG_FCOMMENT, "FCOMMENT"), (FLAG_FHCRC, "FHCRC")]
    {
        if flg & bit != 0 {
            return Err(BitsetError::UnsupportedHeaderField { field });
        }
    }

    let out = inflate_raw(body)?;

    let mut crc = Crc::new();
    crc.update(&out);
    let le32 = |b: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(b);
        u32::from_le_bytes(w)
    };
    let (crc_bytes, size_bytes) = trailer.split_at(4);
    let trailer_crc = le32(crc_bytes);
    let trailer_size = le32(size_bytes);
    if crc.sum() != trailer_crc {
        return Err(BitsetError::CrcMismatch { trailer: trailer_crc, actual: crc.sum() });
    }
    // ISIZE is the length mod 2^32; truncation is the format's definition.
    let actual_size = out.len() as u32;
    if actual_size != trailer_size {
        return Err(BitsetError::SizeMismatch { trailer: trailer_size, actual: actual_size });
    }
    Ok(out)
}

fn inflate_raw(body: &[u8]) -> Result<Vec<u8>, BitsetError> {
    const CHUNK: usize = 64 * 1024;
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() == out.capacity() {
            // One byte of headroom past the limit lets us tell "exactly at" from "over".
            let room = (MAX_INFLATED_BYTES + 1).saturating_sub(out.len());
            if room == 0 {
                return Err(BitsetError::TooLarge { limit: MAX_INFLATED_BYTES });
            }
            // Geometric growth keeps a bomb near the cap from costing quadratic copies.
            out.reserve_exact(out.len().max(CHUNK).min(room));
        }
        let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
        let input = body.get(consumed..).unwrap_or(&[]);
        let before_in = d.total_in();
        let before_out = d.total_out();
        let status = d
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|e| BitsetError::Inflate(e.to_string()))?;
        if out.len() > MAX_INFLATED_BYTES {
            return Err(BitsetError::TooLarge { limit: MAX_INFLATED_BYTES });
        }
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => {
                let progressed = d.total_in() != before_in || d.total_out() != before_out;
                if !progressed && out.len() < out.capacity() {
                    return Err(BitsetError::Truncated);
                }
            }
        }
    }
    let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
    if consumed != body.len() {
        return Err(BitsetError::TrailingData { extra: body.len().saturating_sub(consumed) });
    }
    Ok(out)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
    match enc.write_all(data).and_then(|_| enc.finish()) {
        Ok(v) => v,
        // Writing into a Vec cannot fail; stored blocks keep this total anyway.
        Err(_) => deflate_stored(data),
    }
}

fn deflate_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / 0xFFFF + 1));
    let mut chunks = data.chunks(0xFFFF).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Bitset {
        Bitset::from_set_bits(BUCKETS, [0, 1, 7, 8, 999_999, 123_456]).unwrap()
    }

    #[test]
    fn lsb_first_bit_order() {
        let b = Bitset::from_set_bits(16, [0, 9]).unwrap();
        assert_eq!(b.as_bytes(), &[0b0000_0001, 0b0000_0010]);
        assert!(b.get(0) && b.get(9));
        assert!(!b.get(1) && !b.get(8) && !b.get(16) && !b.get(usize::MAX));
        assert_eq!(b.count_ones(), 2);
        assert!(!b.all_set());
    }

    #[test]
    fn out_of_range_index_rejected() {
        let e = Bitset::from_set_bits(BUCKETS, [BUCKETS]).unwrap_err();
        assert_eq!(e, BitsetError::IndexOutOfRange { index: BUCKETS, len_bits: BUCKETS });
    }

    #[test]
    fn full_and_round_trip() {
        let f = Bitset::full(BUCKETS);
        assert!(f.all_set());
        assert_eq!(f.count_ones(), BUCKETS);
        assert_eq!(f.byte_len(), 125_000);
        let g = Bitset::from_gzip(&f.to_gzip()).unwrap();
        assert_eq!(g, f);
        assert!(g.all_set());

        let odd = Bitset::full(13);
        assert_eq!(odd.count_ones(), 13);
        assert_eq!(odd, Bitset::from_set_bits(13, 0..13).unwrap());
        assert!(!Bitset::full(0).all_set());

        let s = sample();
        let z = s.to_gzip();
        assert!(z.len() < 1000, "zero-heavy bitset should compress well");
        assert_eq!(Bitset::from_gzip(&z).unwrap(), s);
    }

    #[test]
    fn to_gzip_is_standard_gzip() {
        let s = sample();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&s.to_gzip()[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, s.as_bytes());
    }

    #[test]
    fn reads_flate2_gzip() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&[0xAA; 100]).unwrap();
        let z = enc.finish().unwrap();
        let b = Bitset::from_gzip(&z).unwrap();
        assert_eq!(b.len_bits(), 800);
        assert!(b.get(1) && !b.get(0));
    }

    #[test]
    fn stored_fallback_is_valid_deflate() {
        for n in [0usize, 1, 0xFFFF, 0x10000, 200_000] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(&deflate_stored(&data)[..]).read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn strict_header_checks() {
        let good = sample().to_gzip();
        let with = |i: usize, v: u8| {
            let mut z = good.clone();
            z[i] = v;
            Bitset::from_gzip(&z).unwrap_err()
        };
        assert!(matches!(with(0, 0), BitsetError::BadMagic { .. }));
        assert!(matches!(with(2, 7), BitsetError::UnsupportedMethod { cm: 7 }));
        assert!(matches!(with(3, 0x20), BitsetError::ReservedFlags { .. }));
        for (flag, name) in [(4, "FEXTRA"), (8, "FNAME"), (0x10, "FCOMMENT"), (2, "FHCRC")] {
            let e = with(3, flag);
            assert_eq!(e, BitsetError::UnsupportedHeaderField { field: name });
            assert!(e.to_string().contains(name));
        }
        assert!(matches!(
            Bitset::from_gzip(&good[..12]).unwrap_err(),
            BitsetError::TooShort { .. } | BitsetError::Truncated | BitsetError::Inflate(_)
        ));
    }

    #[test]
    fn trailer_checks() {
        let good = sample().to_gzip();
        let n = good.len();

        let mut bad_crc = good.clone();
        bad_crc[n - 8] ^= 1;
        let e = Bitset::from_gzip(&bad_crc).unwrap_err();
        assert!(matches!(e, BitsetError::CrcMismatch { .. }));
        assert!(e.to_string().starts_with("gzip CRC mismatch: trailer says 0x"));

        let mut bad_size = good.clone();
        bad_size[n - 4] ^= 1;
        assert!(matches!(Bitset::from_gzip(&bad_size).unwrap_err(), BitsetError::SizeMismatch { .. }));

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Bitset::from_gzip(&trailing).is_err());

        // Garbage between the deflate end and a valid trailer.
        let mut gap = good[..n - 8].to_vec();
        gap.extend_from_slice(&[0, 0, 0]);
        gap.extend_from_slice(&good[n - 8..]);
        assert_eq!(Bitset::from_gzip(&gap).unwrap_err(), BitsetError::TrailingData { extra: 3 });

        // Deflate stream cut short.
        let mut cut = good[..n - 10].to_vec();
        cut.extend_from_slice(&good[n - 8..]);
        assert!(Bitset::from_gzip(&cut).is_err());
    }

    #[test]
    fn gzip_bomb_capped() {
        let big = Bitset::full((MAX_INFLATED_BYTES + 1) * 8);
        let z = big.to_gzip();
        assert!(z.len() < 100_000);
        assert_eq!(Bitset::from_gzip(&z).unwrap_err(), BitsetError::TooLarge { limit: MAX_INFLATED_BYTES });
        let at_limit = Bitset::full(MAX_INFLATED_BYTES * 8);
        assert!(Bitset::from_gzip(&at_limit.to_gzip()).is_ok());
    }
}
