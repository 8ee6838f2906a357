//! The state compiled into this build (see build.rs: `EDGEFLAG_STATE`,
//! `EDGEFLAG_ACCOUNT`; the demo state by default).

include!(concat!(env!("OUT_DIR"), "/embedded_state.rs"));

use super::snapshot::{BitsetCheck, LoadError, LoadOptions, Snapshot};

/// Decodes, validates and indexes the embedded state. Bitsets that the
/// build already validated are inflated on first use instead: a large state
/// would otherwise spend most of the isolate's first request inflating
/// segments that request never reads.
pub fn load() -> Result<Snapshot, LoadError> {
    if !EMBEDDED {
        return Err(LoadError { problems: vec!["this build embeds no state (EDGEFLAG_STATE=none)".to_string()] });
    }
    Snapshot::load_static(
        EMBEDDED_STATE,
        LoadOptions {
            account: EMBEDDED_ACCOUNT,
            etag: Some(EMBEDDED_ETAG),
            bitsets: if EMBEDDED_PREVALIDATED { BitsetCheck::Deferred } else { BitsetCheck::Eager },
            ..LoadOptions::default()
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_state_loads() {
        if !super::EMBEDDED {
            assert!(super::load().is_err(), "a build without a state serves none");
            return;
        }
        let snap = super::load().expect("embedded state is valid");
        if !super::EMBEDDED_PREVALIDATED {
            assert_eq!(snap.etag, super::super::snapshot::etag_of(super::EMBEDDED_STATE), "build.rs hashes alike");
        }
        assert!(snap.stats.active_flags > 0);
    }
}
