//! This isolate's `EDGEFLAG_FAULTS` (see `crate::faults`), read once by the
//! first event; call sites ask [`trip`]. Unset, a call site pays one
//! `OnceLock` read. A malformed value is logged loudly, shown on
//! `/healthz`, and injects nothing.

use super::runtime;
use crate::faults::{Action, Faults, Site};
use std::sync::OnceLock;

struct Active {
    raw: String,
    faults: Faults,
    error: Option<String>,
}

static ACTIVE: OnceLock<Active> = OnceLock::new();

/// Reads `EDGEFLAG_FAULTS` once per isolate; warns when it is set.
pub fn init(env: &::worker::Env) {
    ACTIVE.get_or_init(|| {
        let raw = runtime::config(env, "EDGEFLAG_FAULTS").unwrap_or_default().trim().to_string();
        let (faults, error) = match Faults::parse(&raw) {
            Ok(f) => (f, None),
            Err(e) => (Faults::default(), Some(e)),
        };
        match &error {
            Some(e) => ::worker::console_error!("edgeflag: {e}; no fault is injected"),
            None if !faults.is_empty() => {
                ::worker::console_warn!("edgeflag: EDGEFLAG_FAULTS={raw}: injecting platform faults (tests only)")
            }
            None => {}
        }
        Active { raw, faults, error }
    });
}

/// The fault for this call at `site`, if any.
pub fn trip(site: Site) -> Option<Action> {
    ACTIVE.get().and_then(|a| a.faults.trip(site))
}

/// For `/healthz`: the value as set (empty when unset), and its parse error.
pub fn describe() -> (String, Option<String>) {
    ACTIVE.get().map(|a| (a.raw.clone(), a.error.clone())).unwrap_or_default()
}

/// Applies a fault before a platform call: `Err(why)` for `fail`, a wait
/// for `slow`, nothing otherwise.
pub async fn before(site: Site) -> Result<(), String> {
    match trip(site) {
        None => Ok(()),
        Some(Action::Fail) => Err(format!("injected fault (EDGEFLAG_FAULTS {}=fail)", site.as_str())),
        Some(Action::Slow(ms)) => {
            ::worker::Delay::from(std::time::Duration::from_millis(ms)).await;
            Ok(())
        }
    }
}

/// [`before`] for a KV call, as the KV error the call would have given.
pub async fn before_kv(site: Site) -> Result<(), ::worker::kv::KvError> {
    before(site).await.map_err(|why| ::worker::kv::KvError::JavaScript(why.into()))
}
