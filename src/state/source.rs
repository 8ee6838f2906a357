//! The pure half of where states come from: the KV layout (an immutable
//! blob per state, one small pointer to the current one), the pointer's
//! JSON, verification of a blob against its pointer, and the names of load
//! sources and results that metrics and logs use. The Worker side
//! (`worker::state_source`) does the reads and the swap.
//!
//! A pointer is written only after its blob, but KV is eventually
//! consistent: a reader can see a pointer before its blob, or a blob that
//! is not the one the pointer describes. Every such case is a rejection
//! with its own [`LoadResult`]; the serving state stays.

use super::formats::{self, StateFormat};
use super::snapshot::{etag_of, BitsetCheck, LoadOptions, Snapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The pointer to the current state.
pub const CURRENT_KEY: &str = "state:current";
/// Blob keys are this plus the state's etag.
pub const BLOB_PREFIX: &str = "state:blob:";
/// KV's value limit: a larger state cannot be stored.
pub const MAX_BLOB_BYTES: usize = 25 * 1024 * 1024;
/// A pointer is a few hundred bytes; anything far larger is not one.
const MAX_POINTER_BYTES: usize = 4096;

pub fn blob_key(etag: &str) -> String {
    format!("{BLOB_PREFIX}{etag}")
}

/// `state:current`: which blob serves, and what it must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The blob's etag ([`etag_of`] its bytes); names its key.
    pub etag: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the blob.
    pub sha256: String,
    /// The account the envelope carries.
    pub account: String,
    #[serde(rename = "pushedAt")]
    pub pushed_at: String,
    /// Who wrote it: `push`, `cdn`.
    pub source: String,
}

impl Pointer {
    /// The pointer for `blob` (an envelope).
    pub fn for_blob(blob: &[u8], account: &str, pushed_at: &str, source: &str) -> Pointer {
        Pointer {
            etag: etag_of(blob),
            bytes: blob.len() as u64,
            sha256: sha256_hex(blob),
            account: formats::normalize_account(account),
            pushed_at: pushed_at.to_string(),
            source: source.to_string(),
        }
    }

    pub fn to_json(&self) -> String {
        // Plain strings and a number: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a stored pointer.
    pub fn parse(bytes: &[u8]) -> Result<Pointer, String> {
        if bytes.len() > MAX_POINTER_BYTES {
            return Err(format!("pointer is {} bytes; a pointer is at most {MAX_POINTER_BYTES}", bytes.len()));
        }
        let p: Pointer = serde_json::from_slice(bytes).map_err(|e| format!("pointer is not valid JSON: {e}"))?;
        if p.etag.is_empty() || p.etag.len() > 64 || !p.etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("pointer etag {:?} is not a hex hash", truncate(&p.etag)));
        }
        if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("pointer sha256 {:?} is not 64 hex digits", truncate(&p.sha256)));
        }
        if p.bytes > MAX_BLOB_BYTES as u64 {
            return Err(format!("pointer names a {} byte blob; KV holds at most {MAX_BLOB_BYTES}", p.bytes));
        }
        Ok(p)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where a load attempt read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    Kv,
    Embedded,
    Cdn,
}

impl LoadSource {
    pub const ALL: [LoadSource; 3] = [LoadSource::Kv, LoadSource::Embedded, LoadSource::Cdn];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadSource::Kv => "kv",
            LoadSource::Embedded => "embedded",
            LoadSource::Cdn => "cdn",
        }
    }
}

/// How a load attempt ended: the `result` label of
/// `edgeflag_state_loads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadResult {
    /// A new state was validated and swapped in.
    Ok,
    /// The pointer names the state already serving.
    Unchanged,
    /// No pointer in KV (nothing pushed yet).
    NoPointer,
    /// The pointer names a blob KV does not have (yet).
    MissingBlob,
    /// The blob's size differs from the pointer's: truncated or another blob.
    SizeMismatch,
    /// The blob's sha256 differs from the pointer's.
    ChecksumMismatch,
    /// The pointer or the state does not decode or validate.
    Invalid,
    /// A KV read or CDN fetch failed.
    FetchFailed,
    /// A CDN state did not decrypt.
    DecryptFailed,
    /// This build embeds no state (`EDGEFLAG_STATE=none`).
    NoState,
}

impl LoadResult {
    pub const ALL: [LoadResult; 10] = [
        LoadResult::Ok,
        LoadResult::Unchanged,
        LoadResult::NoPointer,
        LoadResult::MissingBlob,
        LoadResult::SizeMismatch,
        LoadResult::ChecksumMismatch,
        LoadResult::Invalid,
        LoadResult::FetchFailed,
        LoadResult::DecryptFailed,
        LoadResult::NoState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadResult::Ok => "ok",
            LoadResult::Unchanged => "unchanged",
            LoadResult::NoPointer => "no_pointer",
            LoadResult::MissingBlob => "missing_blob",
            LoadResult::SizeMismatch => "size_mismatch",
            LoadResult::ChecksumMismatch => "checksum_mismatch",
            LoadResult::Invalid => "invalid",
            LoadResult::FetchFailed => "fetch_failed",
            LoadResult::DecryptFailed => "decrypt_failed",
            LoadResult::NoState => "no_state",
        }
    }

    /// Whether the source answered for the state that serves: the pointer
    /// was read and names it (or names nothing and the fallback serves).
    pub fn confirms(self) -> bool {
        matches!(self, LoadResult::Ok | LoadResult::Unchanged | LoadResult::NoPointer)
    }
}

/// A rejected load: its result and a reason for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub result: LoadResult,
    pub reason: String,
}

impl Rejected {
    pub fn new(result: LoadResult, reason: impl Into<String>) -> Self {
        Rejected { result, reason: reason.into() }
    }
}

/// Checks `blob` against `pointer` (size, sha256: the etag only names
/// the key, and a writer other than ours may choose it), then decodes and
/// validates it completely (every bitset inflated): only a state that
/// passes all of it may serve.
pub fn load_blob(pointer: &Pointer, blob: &[u8]) -> Result<Snapshot, Rejected> {
    if blob.len() as u64 != pointer.bytes {
        return Err(Rejected::new(
            LoadResult::SizeMismatch,
            format!("blob {} is {} bytes; the pointer says {}", pointer.etag, blob.len(), pointer.bytes),
        ));
    }
    let sha = sha256_hex(blob);
    if !sha.eq_ignore_ascii_case(&pointer.sha256) {
        return Err(Rejected::new(
            LoadResult::ChecksumMismatch,
            format!("blob {} has sha256 {sha}; the pointer says {}", pointer.etag, pointer.sha256),
        ));
    }
    let opts = LoadOptions {
        format: Some(StateFormat::Envelope),
        account: None,
        etag: Some(&pointer.etag),
        bitsets: BitsetCheck::Eager,
    };
    let snap = Snapshot::load_with(blob, opts)
        .map_err(|e| Rejected::new(LoadResult::Invalid, format!("state {} rejected: {e}", pointer.etag)))?;
    let account = formats::normalize_account(&pointer.account);
    if !account.is_empty() && account != snap.account_id {
        return Err(Rejected::new(
            LoadResult::Invalid,
            format!("state {} is for account {}; the pointer says {account}", pointer.etag, snap.account_id),
        ));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Vec<u8> {
        let decoded = formats::decode(include_bytes!("../demo_state.json"), None).expect("demo decodes");
        formats::encode_envelope(&decoded.state, "demo", &[])
    }

    fn pointer(blob: &[u8]) -> Pointer {
        Pointer::for_blob(blob, "demo", "2026-01-01T00:00:00Z", "push")
    }

    #[test]
    fn a_blob_matching_its_pointer_loads() {
        let blob = envelope();
        let p = Pointer::parse(pointer(&blob).to_json().as_bytes()).expect("round trip");
        let snap = load_blob(&p, &blob).expect("loads");
        assert_eq!(snap.etag, etag_of(&blob));
        assert_eq!(snap.account_id, "demo");
    }

    #[test]
    fn each_mismatch_is_rejected_with_its_result() {
        let blob = envelope();
        let p = pointer(&blob);
        let truncated = blob.get(..blob.len() / 2).unwrap_or_default();
        assert_eq!(load_blob(&p, truncated).err().map(|r| r.result), Some(LoadResult::SizeMismatch));
        let mut flipped = blob.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert_eq!(load_blob(&p, &flipped).err().map(|r| r.result), Some(LoadResult::ChecksumMismatch));
        // A pointer that describes garbage exactly: it verifies, then fails to decode.
        let garbage = b"not a protobuf envelope at all".to_vec();
        let r = load_blob(&pointer(&garbage), &garbage).expect_err("undecodable");
        assert_eq!(r.result, LoadResult::Invalid);
        let mut other = pointer(&blob);
        other.account = "someone-else".into();
        assert_eq!(load_blob(&other, &blob).err().map(|r| r.result), Some(LoadResult::Invalid));
    }

    #[test]
    fn malformed_pointers_are_refused() {
        assert!(Pointer::parse(b"{").is_err());
        assert!(Pointer::parse(br#"{"etag":"zz","bytes":1,"sha256":"00","account":"a","pushedAt":"","source":""}"#)
            .is_err());
        let mut p = pointer(b"x");
        p.bytes = MAX_BLOB_BYTES as u64 + 1;
        assert!(Pointer::parse(p.to_json().as_bytes()).is_err());
        assert!(Pointer::parse(&vec![b' '; 5000]).is_err());
    }
}
