//! The few things the Worker takes from the JavaScript runtime: randomness,
//! the clock and configuration.

use crate::api::ApiError;
use crate::proto::wkt::Timestamp;
use crate::token::TokenKeys;
use ::worker::Env;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsCast;

thread_local! {
    /// CSPRNG output fetched ahead, so a resolve does not cross into
    /// JavaScript for its resolve id and nonce.
    static POOL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

const POOL_REFILL: usize = 4096;

/// Fills `buf` with bytes from `crypto.getRandomValues`, drawn in blocks.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), ApiError> {
    if buf.len() > POOL_REFILL {
        return fill_from_crypto(buf);
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < buf.len() {
            let mut fresh = vec![0u8; POOL_REFILL];
            fill_from_crypto(&mut fresh)?;
            *pool = fresh;
        }
        // The refill above leaves at least `buf.len()` bytes; should it not,
        // draw directly rather than hand out short or repeated bytes.
        let Some(at) = pool.len().checked_sub(buf.len()) else {
            return fill_from_crypto(buf);
        };
        let Some(tail) = pool.get(at..) else {
            return fill_from_crypto(buf);
        };
        buf.copy_from_slice(tail);
        // Each byte is handed out once.
        pool.truncate(at);
        Ok(())
    })
}

fn fill_from_crypto(buf: &mut [u8]) -> Result<(), ApiError> {
    let fail = |what: &str| ApiError::new(500, "INTERNAL", format!("no secure randomness available: {what}"));
    let global = js_sys::global();
    let crypto = js_sys::Reflect::get(&global, &"crypto".into()).map_err(|_| fail("no crypto"))?;
    let get = js_sys::Reflect::get(&crypto, &"getRandomValues".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or_else(|| fail("no crypto.getRandomValues"))?;
    for chunk in buf.chunks_mut(65536) {
        let arr = js_sys::Uint8Array::new_with_length(chunk.len() as u32);
        get.call1(&crypto, &arr).map_err(|_| fail("getRandomValues threw"))?;
        arr.copy_to(chunk);
    }
    Ok(())
}

/// Milliseconds since the epoch. Workers advance it only across I/O.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

pub fn timestamp(ms: f64) -> Timestamp {
    let ms = ms.max(0.0) as i64;
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A var or secret as a string, if set.
pub fn config(env: &Env, name: &str) -> Option<String> {
    if let Ok(s) = env.secret(name) {
        return Some(s.to_string());
    }
    env.var(name).ok().map(|v| v.to_string())
}

/// `FORCE_APPLY`: on unless it is exactly `false` (any case, trimmed).
pub fn force_apply(env: &Env) -> bool {
    !config(env, "FORCE_APPLY").is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

thread_local! {
    /// Whether the sticky-assignment KV is bound; bindings do not change
    /// within an isolate, so this is asked once.
    static STICKY_BOUND: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Is `MATERIALIZATIONS_KV` bound? (Cheap after the first call.)
pub fn sticky_bound(env: &Env) -> bool {
    STICKY_BOUND.with(|c| match c.get() {
        Some(b) => b,
        None => {
            let b = env.kv("MATERIALIZATIONS_KV").is_ok();
            c.set(Some(b));
            b
        }
    })
}

/// `MATERIALIZATION_TTL_SECONDS`: how long sticky assignments live in KV.
pub fn sticky_ttl(env: &Env) -> Option<u64> {
    config(env, "MATERIALIZATION_TTL_SECONDS").and_then(|v| v.trim().parse().ok())
}

thread_local! {
    /// Parsed keys, reused while the configuration is unchanged.
    static KEYS: RefCell<Option<(String, Rc<TokenKeys>)>> = const { RefCell::new(None) };
}

/// The resolve-token keys (`RESOLVE_TOKEN_KEY`, `RESOLVE_TOKEN_KEYS_PREVIOUS`).
pub fn token_keys(env: &Env) -> Result<Rc<TokenKeys>, ApiError> {
    let current = config(env, "RESOLVE_TOKEN_KEY").unwrap_or_default();
    if current.trim().is_empty() {
        return Err(ApiError::new(
            500,
            "FAILED_PRECONDITION",
            "resolve tokens need the RESOLVE_TOKEN_KEY secret (base64 of 32 random bytes); it is not set",
        ));
    }
    let previous = config(env, "RESOLVE_TOKEN_KEYS_PREVIOUS");
    let id = format!("{current}\n{}", previous.as_deref().unwrap_or(""));
    if let Some(keys) = KEYS.with(|k| k.borrow().as_ref().filter(|(c, _)| *c == id).map(|(_, keys)| keys.clone())) {
        return Ok(keys);
    }
    let keys = Rc::new(
        TokenKeys::from_config(&current, previous.as_deref())
            .map_err(|e| ApiError::new(500, "FAILED_PRECONDITION", e.message))?,
    );
    KEYS.with(|k| *k.borrow_mut() = Some((id, keys.clone())));
    Ok(keys)
}
