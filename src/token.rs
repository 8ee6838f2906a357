//! Resolve tokens: what a resolve with `apply=false` hands the client, and
//! what the client hands back to `flags:apply` to report exposure.
//!
//! Confidence's tokens can be read by anyone (the configured key ends up as
//! the CBC IV, the real key travels in clear) and are not bound to anything.
//! Ours are sealed with AES-GCM and bound to the credential that resolved:
//!
//! ```text
//! token = version (1 byte, = 1)
//!       | key id  (4 bytes: SHA-256("edgeflag-token-key-id\0" | key)[..4])
//!       | nonce   (12 bytes, random, from the caller)
//!       | ciphertext | tag (16 bytes)
//! plaintext       = protobuf ResolveToken{token_v1: ResolveTokenV1{
//!                     assignments, resolve_id, account}}
//! associated data = "edgeflag-token-v1\0" | version | key id | credential name
//! ```
//!
//! The key is AES-256-GCM for a 32-byte key and AES-128-GCM for a 16-byte
//! one. The key id only picks the key; it is authenticated like the rest.
//! Random 96-bit nonces stay safe for about 2^32 tokens per key, so rotate
//! keys well before that (`RESOLVE_TOKEN_KEYS_PREVIOUS` keeps old tokens
//! working meanwhile).

use crate::api::ApiError;
use crate::exposure;
use crate::proto::resolver::{resolve_token, ResolveToken, ResolveTokenV1};
use crate::resolve::Resolution;
use aes_gcm::aead::array::Array;
use aes_gcm::{AeadInOut, Aes128Gcm, Aes256Gcm, KeyInit};
use base64::Engine as _;
use prost::Message;
use sha2::{Digest, Sha256};
use std::fmt;

/// The only token version this code issues or accepts.
pub const VERSION: u8 = 1;
pub const KEY_ID_LEN: usize = 4;
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Longest token `open` looks at: the most a 256 KiB apply body can carry
/// as base64. Larger input is refused before any decryption work.
pub const MAX_TOKEN_BYTES: usize = crate::api::MAX_BODY_BYTES / 4 * 3;

const AD_PREFIX: &[u8] = b"edgeflag-token-v1\0";
const KEY_ID_PREFIX: &[u8] = b"edgeflag-token-key-id\0";

/// The one message the API gives for any bad token, so callers learn
/// nothing about which check failed.
pub const INVALID_TOKEN_MESSAGE: &str = "resolve token is invalid, tampered with, or was issued to another client";

const CURRENT_VAR: &str = "RESOLVE_TOKEN_KEY";
const PREVIOUS_VAR: &str = "RESOLVE_TOKEN_KEYS_PREVIOUS";

enum Cipher {
    Aes128(Aes128Gcm),
    Aes256(Aes256Gcm),
}

impl Cipher {
    fn new(key: &[u8]) -> Option<Cipher> {
        match key.len() {
            16 => Aes128Gcm::new_from_slice(key).ok().map(Cipher::Aes128),
            32 => Aes256Gcm::new_from_slice(key).ok().map(Cipher::Aes256),
            _ => None,
        }
    }

    /// Encrypts `buf` in place and returns the tag; `None` only past GCM's
    /// 64 GiB message limit.
    fn seal(&self, nonce: &[u8; NONCE_LEN], ad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let nonce = Array::from(*nonce);
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_inout_detached(&nonce, ad, buf.into()),
            Cipher::Aes256(c) => c.encrypt_inout_detached(&nonce, ad, buf.into()),
        };
        tag.ok().map(Into::into)
    }

    /// Decrypts `buf` in place; false when the tag does not verify.
    fn open(&self, nonce: &[u8; NONCE_LEN], ad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let nonce = Array::from(*nonce);
        let tag = Array::from(*tag);
        match self {
            Cipher::Aes128(c) => c.decrypt_inout_detached(&nonce, ad, buf.into(), &tag).is_ok(),
            Cipher::Aes256(c) => c.decrypt_inout_detached(&nonce, ad, buf.into(), &tag).is_ok(),
        }
    }
}

struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: Cipher,
}

/// The token keys: the current one seals, it and the previous ones open.
pub struct TokenKeys {
    current: Key,
    previous: Vec<Key>,
}

// Hand-written so that no key material can reach a log.
impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<String> = self.previous.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("TokenKeys").field("current", &hex(&self.current.id)).field("previous", &previous).finish()
    }
}

/// A token key setting that cannot be used. The message never contains
/// the key or any part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfigError {
    pub message: String,
}

impl fmt::Display for KeyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyConfigError {}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_id(key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new().chain_update(KEY_ID_PREFIX).chain_update(key).finalize();
    let mut id = [0u8; KEY_ID_LEN];
    for (out, b) in id.iter_mut().zip(digest.iter()) {
        *out = *b;
    }
    id
}

/// Decodes one configured key; `what` names it in errors.
fn decode_key(value: &str, what: &str) -> Result<Vec<u8>, KeyConfigError> {
    let err = |detail: String| KeyConfigError { message: format!("{what} {detail}") };
    // Keys pasted from a terminal may carry line breaks or spaces.
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(err("is empty; it must be the base64 of 16 or 32 random bytes".into()));
    }
    // Padding is optional; the decoder's own error is dropped because it
    // quotes the offending byte of the key.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(compact.as_bytes())
        .map_err(|_| err("is not valid base64; it must be the base64 of 16 or 32 random bytes".into()))?;
    match bytes.len() {
        16 | 32 => Ok(bytes),
        n => Err(err(format!(
            "decodes to {n} bytes; it must be 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes, base64-encoded"
        ))),
    }
}

fn make_key(bytes: &[u8], what: &str) -> Result<Key, KeyConfigError> {
    let cipher =
        Cipher::new(bytes).ok_or_else(|| KeyConfigError { message: format!("{what} has an unusable length") })?;
    Ok(Key { id: key_id(bytes), cipher })
}

impl TokenKeys {
    /// `current` is `RESOLVE_TOKEN_KEY`; `previous` is
    /// `RESOLVE_TOKEN_KEYS_PREVIOUS`, comma-separated, empty entries ignored.
    pub fn from_config(current: &str, previous: Option<&str>) -> Result<TokenKeys, KeyConfigError> {
        let current_bytes = decode_key(current, CURRENT_VAR)?;
        let current_key = make_key(&current_bytes, CURRENT_VAR)?;
        let mut seen = vec![current_bytes];
        let mut previous_keys = Vec::new();
        let entries = previous.unwrap_or("").split(',').filter(|e| !e.trim().is_empty());
        for (i, entry) in entries.enumerate() {
            let what = format!("{PREVIOUS_VAR} entry {}", i + 1);
            let bytes = decode_key(entry, &what)?;
            // A key listed twice would only cost a second failed attempt.
            if seen.contains(&bytes) {
                continue;
            }
            previous_keys.push(make_key(&bytes, &what)?);
            seen.push(bytes);
        }
        Ok(TokenKeys { current: current_key, previous: previous_keys })
    }

    /// The id new tokens carry, as hex: safe to log.
    pub fn current_key_id(&self) -> String {
        hex(&self.current.id)
    }

    /// Keys whose id matches, current first.
    fn candidates<'a>(&'a self, id: &'a [u8]) -> impl Iterator<Item = &'a Key> + 'a {
        std::iter::once(&self.current).chain(&self.previous).filter(move |k| k.id[..] == *id)
    }
}

/// Why a token was refused. For logs only: the API answers every case with
/// [`INVALID_TOKEN_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    UnknownVersion(u8),
    /// No configured key has the token's key id.
    UnknownKey,
    /// The tag did not verify: tampered with, or sealed for another
    /// credential.
    Authentication,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed resolve token: {why}"),
            TokenError::UnknownVersion(v) => write!(f, "resolve token has unknown version {v}"),
            TokenError::UnknownKey => f.write_str("resolve token was sealed with a key that is not configured"),
            TokenError::Authentication => {
                f.write_str("resolve token failed authentication (tampered with, or issued to another credential)")
            }
        }
    }
}

impl std::error::Error for TokenError {}

impl From<TokenError> for ApiError {
    fn from(_: TokenError) -> Self {
        ApiError::bad_request(INVALID_TOKEN_MESSAGE)
    }
}

fn associated_data(version: u8, key_id: &[u8], credential_name: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_PREFIX.len() + 1 + key_id.len() + credential_name.len());
    ad.extend_from_slice(AD_PREFIX);
    ad.push(version);
    ad.extend_from_slice(key_id);
    // Last and alone in its field, so it needs no length prefix.
    ad.extend_from_slice(credential_name.as_bytes());
    ad
}

/// Seals `token` with the current key for `credential_name` (the resolving
/// credential's resource name). `nonce` must be fresh random bytes for
/// every token. Returns an empty vector only if sealing is impossible
/// (a plaintext beyond GCM's 64 GiB limit).
pub fn seal(keys: &TokenKeys, nonce: &[u8; NONCE_LEN], credential_name: &str, token: ResolveTokenV1) -> Vec<u8> {
    let msg = ResolveToken { resolve_token: Some(resolve_token::ResolveToken::TokenV1(token)) };
    let key = &keys.current;
    let mut out = Vec::with_capacity(HEADER_LEN + msg.encoded_len() + TAG_LEN);
    out.push(VERSION);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(nonce);
    // Encoding into a Vec only fails for lack of capacity, which a Vec grows.
    if msg.encode(&mut out).is_err() {
        return Vec::new();
    }
    let ad = associated_data(VERSION, &key.id, credential_name);
    let Some(body) = out.get_mut(HEADER_LEN..) else {
        return Vec::new();
    };
    match key.cipher.seal(nonce, &ad, body) {
        Some(tag) => {
            out.extend_from_slice(&tag);
            out
        }
        None => Vec::new(),
    }
}

/// Opens a token for `credential_name` (the applying credential). Fails
/// unless that is the credential the token was sealed for.
pub fn open(keys: &TokenKeys, credential_name: &str, token: &[u8]) -> Result<ResolveTokenV1, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed("too long"));
    }
    let (&version, _) = token.split_first().ok_or(TokenError::Malformed("empty"))?;
    if version != VERSION {
        return Err(TokenError::UnknownVersion(version));
    }
    let (header, body) = token.split_at_checked(HEADER_LEN).ok_or(TokenError::Malformed("too short"))?;
    let tag_at = body.len().checked_sub(TAG_LEN).ok_or(TokenError::Malformed("too short"))?;
    let (ciphertext, tag) = body.split_at_checked(tag_at).ok_or(TokenError::Malformed("too short"))?;
    let key_id = header.get(1..1 + KEY_ID_LEN).ok_or(TokenError::Malformed("too short"))?;
    let nonce: &[u8; NONCE_LEN] = header
        .get(1 + KEY_ID_LEN..HEADER_LEN)
        .and_then(|n| n.try_into().ok())
        .ok_or(TokenError::Malformed("too short"))?;
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| TokenError::Malformed("too short"))?;

    let ad = associated_data(version, key_id, credential_name);
    let mut known_key = false;
    for key in keys.candidates(key_id) {
        known_key = true;
        let mut plain = ciphertext.to_vec();
        if !key.cipher.open(nonce, &ad, &mut plain, tag) {
            continue;
        }
        // Authentic but undecodable would mean we sealed garbage.
        let msg = ResolveToken::decode(plain.as_slice()).map_err(|_| TokenError::Malformed("not a ResolveToken"))?;
        return match msg.resolve_token {
            Some(resolve_token::ResolveToken::TokenV1(v1)) => Ok(v1),
            None => Err(TokenError::Malformed("not a v1 token")),
        };
    }
    Err(if known_key { TokenError::Authentication } else { TokenError::UnknownKey })
}

/// The token for a resolve with `apply=false`: every flag that should be
/// applied, sealed for the resolving credential.
pub fn for_resolution(
    keys: &TokenKeys,
    nonce: &[u8; NONCE_LEN],
    res: &Resolution<'_, '_>,
    resolve_id: &str,
    account: &str,
) -> Vec<u8> {
    let token = ResolveTokenV1 {
        evaluation_context: None,
        assignments: exposure::token_assignments(res),
        resolve_id: resolve_id.to_string(),
        account: account.to_string(),
    };
    seal(keys, nonce, &res.credential.credential, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::resolver::resolve_token_v1::AssignedFlag;
    use crate::proto::resolver::ResolveReason;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // 0..32
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="; // 32..64
    const KEY_16: &str = "BwcHBwcHBwcHBwcHBwcHBw=="; // 16 x 0x07
    const CRED: &str = "clients/test-client/credentials/cred1";
    const NONCE: [u8; NONCE_LEN] = [9; NONCE_LEN];

    fn sample() -> ResolveTokenV1 {
        let flag = AssignedFlag {
            flag: "flags/simple-flag".into(),
            targeting_key: "user1".into(),
            segment: "segments/country-se".into(),
            variant: "on".into(),
            rule: "flags/simple-flag/rules/rule1".into(),
            reason: ResolveReason::Match as i32,
            assignment_id: "a1".into(),
            fallthrough_assignments: vec![],
            targeting_key_selector: "targeting_key".into(),
        };
        ResolveTokenV1 {
            evaluation_context: None,
            assignments: [(flag.flag.clone(), flag)].into_iter().collect(),
            resolve_id: "resolve-1".into(),
            account: "accounts/test".into(),
        }
    }

    fn keys(current: &str, previous: Option<&str>) -> TokenKeys {
        TokenKeys::from_config(current, previous).expect("test keys are valid")
    }

    #[test]
    fn round_trip_aes256_and_aes128() {
        for k in [KEY_A, KEY_16] {
            let keys = keys(k, None);
            let sealed = seal(&keys, &NONCE, CRED, sample());
            assert_eq!(sealed[0], VERSION);
            assert_eq!(&sealed[1 + KEY_ID_LEN..HEADER_LEN], &NONCE);
            assert_eq!(open(&keys, CRED, &sealed), Ok(sample()));
        }
    }

    #[test]
    fn plaintext_does_not_show() {
        let sealed = seal(&keys(KEY_A, None), &NONCE, CRED, sample());
        let needle = b"flags/simple-flag";
        assert!(!sealed.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn tampering_with_any_byte_fails() {
        let keys = keys(KEY_A, None);
        let sealed = seal(&keys, &NONCE, CRED, sample());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            let err = open(&keys, CRED, &t).expect_err("a flipped bit must not open");
            let expected = match i {
                0 => TokenError::UnknownVersion(VERSION ^ 1),
                1..=4 => TokenError::UnknownKey,
                _ => TokenError::Authentication,
            };
            assert_eq!(err, expected, "byte {i}");
        }
        assert_eq!(open(&keys, CRED, &sealed[..sealed.len() - 1]), Err(TokenError::Authentication));
        assert!(matches!(open(&keys, CRED, &sealed[..HEADER_LEN + 3]), Err(TokenError::Malformed(_))));
        assert!(matches!(open(&keys, CRED, &[]), Err(TokenError::Malformed(_))));
        assert!(matches!(open(&keys, CRED, &[VERSION]), Err(TokenError::Malformed(_))));
        let huge = vec![VERSION; MAX_TOKEN_BYTES + 1];
        assert_eq!(open(&keys, CRED, &huge), Err(TokenError::Malformed("too long")));
    }

    #[test]
    fn another_credential_cannot_open() {
        let keys = keys(KEY_A, None);
        let sealed = seal(&keys, &NONCE, CRED, sample());
        let other = "clients/test-client/credentials/cred2";
        assert_eq!(open(&keys, other, &sealed), Err(TokenError::Authentication));
        assert_eq!(open(&keys, "", &sealed), Err(TokenError::Authentication));
        let api: ApiError = TokenError::Authentication.into();
        assert_eq!((api.status, api.code, api.message.as_str()), (400, "INVALID_ARGUMENT", INVALID_TOKEN_MESSAGE));
    }

    #[test]
    fn rotated_keys_open_old_tokens() {
        let old = seal(&keys(KEY_A, None), &NONCE, CRED, sample());
        let rotated = keys(KEY_B, Some(&format!(" {KEY_16} ,\n{KEY_A} ,")));
        assert_eq!(open(&rotated, CRED, &old), Ok(sample()));
        let new = seal(&rotated, &NONCE, CRED, sample());
        assert_eq!(&new[1..1 + KEY_ID_LEN], &key_id(&(32u8..64).collect::<Vec<_>>()));
        assert_eq!(open(&rotated, CRED, &new), Ok(sample()));
        // The old deployment cannot read tokens of the new key.
        assert_eq!(open(&keys(KEY_A, None), CRED, &new), Err(TokenError::UnknownKey));
        // Once the old key is dropped, its tokens stop working.
        assert_eq!(open(&keys(KEY_B, None), CRED, &old), Err(TokenError::UnknownKey));
    }

    #[test]
    fn key_config_errors_are_clear_and_do_not_echo_the_key() {
        let msg = |c: &str, p: Option<&str>| TokenKeys::from_config(c, p).expect_err("must be refused").message;
        assert_eq!(msg("", None), "RESOLVE_TOKEN_KEY is empty; it must be the base64 of 16 or 32 random bytes");
        assert_eq!(msg(" \n", None), "RESOLVE_TOKEN_KEY is empty; it must be the base64 of 16 or 32 random bytes");
        let secretish = "not*base64*secret";
        let m = msg(secretish, None);
        assert_eq!(m, "RESOLVE_TOKEN_KEY is not valid base64; it must be the base64 of 16 or 32 random bytes");
        assert!(!m.contains("secret") && !m.contains('*'));
        assert_eq!(
            msg("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", None),
            "RESOLVE_TOKEN_KEY decodes to 24 bytes; it must be 16 (AES-128-GCM) or 32 (AES-256-GCM) bytes, base64-encoded"
        );
        assert_eq!(
            msg(KEY_A, Some(&format!("{KEY_B},,oops!"))),
            "RESOLVE_TOKEN_KEYS_PREVIOUS entry 2 is not valid base64; it must be the base64 of 16 or 32 random bytes"
        );
        // Unpadded keys, blank previous lists and duplicates are fine.
        let k = keys(KEY_A.trim_end_matches('='), Some(&format!(" , {KEY_A},{KEY_B},{KEY_B}")));
        assert_eq!(k.previous.len(), 1);
        assert!(keys(KEY_A, Some("")).previous.is_empty());
        let debug = format!("{k:?}");
        assert!(debug.contains(&k.current_key_id()) && !debug.contains(KEY_A));
    }

    #[test]
    fn unknown_version_fails() {
        let keys = keys(KEY_A, None);
        let mut sealed = seal(&keys, &NONCE, CRED, sample());
        sealed[0] = 2;
        assert_eq!(open(&keys, CRED, &sealed), Err(TokenError::UnknownVersion(2)));
    }
}
