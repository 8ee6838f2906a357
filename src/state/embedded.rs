//! The state compiled into this build (see build.rs: `EDGEFLAG_STATE`,
//! `EDGEFLAG_ACCOUNT`; the demo state by default).

include!(concat!(env!("OUT_DIR"), "/embedded_state.rs"));

use super::snapshot::{LoadError, Snapshot};

/// Decodes and validates the embedded state.
pub fn load() -> Result<Snapshot, LoadError> {
    Snapshot::load(EMBEDDED_STATE, None, EMBEDDED_ACCOUNT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_state_loads() {
        let snap = super::load().expect("embedded state is valid");
        assert!(!snap.etag.is_empty());
        assert!(snap.stats.active_flags > 0);
    }
}
