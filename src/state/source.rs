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
    /// For states from the Confidence CDN: its HTTP ETag, sent back as
    /// `If-None-Match` by the next tick.
    #[serde(rename = "cdnEtag", default, skip_serializing_if = "Option::is_none")]
    pub cdn_etag: Option<String>,
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
            cdn_etag: None,
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
    /// A CDN state could not be written to STATE_KV.
    WriteFailed,
}

impl LoadResult {
    pub const ALL: [LoadResult; 11] = [
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
        LoadResult::WriteFailed,
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
            LoadResult::WriteFailed => "write_failed",
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

/// The Confidence CDN's default base URL (`STATE_CDN_BASE` overrides it).
pub const DEFAULT_CDN_BASE: &str = "https://confidence-resolver-state-cdn.spotifycdn.com";

/// `{base}/{sha256hex(client secret)}`, plus `.enc` for encrypted states.
pub fn cdn_url(base: &str, client_secret: &str, encrypted: bool) -> String {
    let base = base.trim().trim_end_matches('/');
    let name = sha256_hex(client_secret.trim().as_bytes());
    format!("{base}/{name}{}", if encrypted { ".enc" } else { "" })
}

/// Decrypts a CDN state: AES-256-GCM, a 12-byte nonce prefix and a 16-byte
/// tag suffix (Tink NO_PREFIX); `key_hex` is the 32-byte key in hex.
pub fn decrypt_cdn(key_hex: &str, data: &[u8]) -> Result<Vec<u8>, Rejected> {
    use aes_gcm::aead::array::Array;
    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
    let fail = |why: &str| Rejected::new(LoadResult::DecryptFailed, why.to_string());
    let key = hex_decode(key_hex.trim()).ok_or_else(|| fail("STATE_ENCRYPTION_KEY is not hex"))?;
    let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| fail("STATE_ENCRYPTION_KEY is not 32 bytes"))?;
    let (nonce, rest) = data.split_at_checked(12).ok_or_else(|| fail("encrypted state shorter than its nonce"))?;
    let body_len = rest.len().checked_sub(16).ok_or_else(|| fail("encrypted state shorter than its tag"))?;
    let (body, tag) = rest.split_at(body_len);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail("bad nonce"))?;
    let tag: [u8; 16] = tag.try_into().map_err(|_| fail("bad tag"))?;
    let mut buf = body.to_vec();
    cipher
        .decrypt_inout_detached(&Array::from(nonce), b"", buf.as_mut_slice().into(), &Array::from(tag))
        .map_err(|_| fail("the tag does not verify (wrong key or corrupt state)"))?;
    Ok(buf)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// A CDN state (an envelope) validated completely, and the pointer to write
/// for it: the blob is the envelope's exact bytes.
pub fn prepare_cdn(envelope: &[u8], cdn_etag: Option<&str>, now: &str) -> Result<(Snapshot, Pointer), Rejected> {
    if envelope.len() > MAX_BLOB_BYTES {
        return Err(Rejected::new(
            LoadResult::Invalid,
            format!("CDN state is {} bytes; KV holds at most {MAX_BLOB_BYTES}", envelope.len()),
        ));
    }
    let snap = Snapshot::load_with(
        envelope,
        LoadOptions { format: Some(StateFormat::Envelope), bitsets: BitsetCheck::Eager, ..LoadOptions::default() },
    )
    .map_err(|e| Rejected::new(LoadResult::Invalid, format!("CDN state rejected: {e}")))?;
    let mut pointer = Pointer::for_blob(envelope, &snap.account_id, now, "cdn");
    pointer.cdn_etag = cdn_etag.map(|e| e.trim().trim_start_matches("W/").trim_matches('"').to_string());
    Ok((snap, pointer))
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
    fn cdn_states_decrypt_and_validate() {
        use aes_gcm::aead::array::Array;
        use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
        let key = [7u8; 32];
        let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let plain = envelope();
        let mut body = plain.clone();
        let nonce = [9u8; 12];
        let cipher = Aes256Gcm::new_from_slice(&key).expect("key");
        let tag = cipher.encrypt_inout_detached(&Array::from(nonce), b"", body.as_mut_slice().into()).expect("seals");
        let mut data = nonce.to_vec();
        data.extend_from_slice(&body);
        data.extend_from_slice(tag.as_slice());
        assert_eq!(decrypt_cdn(&key_hex, &data).expect("opens"), plain);
        let mut bad = data.clone();
        if let Some(b) = bad.get_mut(20) {
            *b ^= 1;
        }
        assert_eq!(decrypt_cdn(&key_hex, &bad).err().map(|r| r.result), Some(LoadResult::DecryptFailed));
        assert_eq!(decrypt_cdn("zz", &data).err().map(|r| r.result), Some(LoadResult::DecryptFailed));
        assert_eq!(decrypt_cdn(&key_hex, b"short").err().map(|r| r.result), Some(LoadResult::DecryptFailed));
        let (snap, p) = prepare_cdn(&plain, Some("W/\"abc\""), "t").expect("valid");
        assert_eq!(
            (p.cdn_etag.as_deref(), p.source.as_str(), p.etag.as_str()),
            (Some("abc"), "cdn", snap.etag.as_str())
        );
        assert_eq!(load_blob(&p, &plain).map(|s| s.account_id).ok().as_deref(), Some("demo"));
        assert_eq!(prepare_cdn(b"junk", None, "t").err().map(|r| r.result), Some(LoadResult::Invalid));
        assert!(cdn_url("https://cdn.example/", "s", true).ends_with(".enc"));
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
