//! The serving state: one immutable snapshot behind an `ArcSwap`. A request
//! takes the current `Arc` once and uses it throughout, so everything it
//! reports (etag included) describes the snapshot that served it; a new
//! state replaces the whole snapshot atomically, only after it validated.

use super::snapshot::{LoadError, Snapshot};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct LiveState {
    current: ArcSwapOption<Snapshot>,
    /// The most recent failed load, for readiness reporting.
    last_error: ArcSwapOption<LoadError>,
    loads: AtomicU64,
    load_failures: AtomicU64,
}

impl Default for LiveState {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveState {
    pub const fn new() -> Self {
        LiveState {
            current: ArcSwapOption::const_empty(),
            last_error: ArcSwapOption::const_empty(),
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
        }
    }

    /// The serving snapshot, loading it with `load` if there is none yet. A
    /// failed load serves nothing (never a partial state) and is retried
    /// by the next caller.
    pub fn get_or_load(
        &self,
        load: impl FnOnce() -> Result<Snapshot, LoadError>,
    ) -> Result<Arc<Snapshot>, Arc<LoadError>> {
        if let Some(s) = self.current.load_full() {
            return Ok(s);
        }
        match load() {
            Ok(snap) => Ok(self.install(snap)),
            Err(e) => {
                let e = Arc::new(e);
                self.load_failures.fetch_add(1, Ordering::Relaxed);
                self.last_error.store(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Swaps in a validated snapshot; requests already running keep theirs.
    pub fn install(&self, snap: Snapshot) -> Arc<Snapshot> {
        let snap = Arc::new(snap);
        self.current.store(Some(snap.clone()));
        self.last_error.store(None);
        self.loads.fetch_add(1, Ordering::Relaxed);
        snap
    }

    /// Installs `snap` only if nothing serves yet (a cold isolate's
    /// concurrent first loads: the first to finish wins, the others must
    /// not replace a state a refresh may already have moved past). Returns
    /// what serves afterwards.
    pub fn install_first(&self, snap: Snapshot) -> Arc<Snapshot> {
        let snap = Arc::new(snap);
        let prev = self.current.compare_and_swap(&None::<Arc<Snapshot>>, Some(snap.clone()));
        match &*prev {
            Some(existing) => existing.clone(),
            None => {
                self.last_error.store(None);
                self.loads.fetch_add(1, Ordering::Relaxed);
                snap
            }
        }
    }

    /// Records a failed load; the serving state (if any) stays.
    pub fn record_failure(&self, e: LoadError) {
        self.load_failures.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(Some(Arc::new(e)));
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn last_error(&self) -> Option<Arc<LoadError>> {
        self.last_error.load_full()
    }

    /// (successful loads, failed loads) since the isolate started.
    pub fn load_counts(&self) -> (u64, u64) {
        (self.loads.load(Ordering::Relaxed), self.load_failures.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Snapshot {
        // The demo state itself, not the embedded one: an EDGEFLAG_STATE=none
        // build embeds nothing.
        Snapshot::load(include_bytes!("../demo_state.json"), None, None).expect("demo state")
    }

    #[test]
    fn loads_once_and_serves_the_same_snapshot() {
        let live = LiveState::new();
        let a = live.get_or_load(|| Ok(demo())).expect("loads");
        let b = live.get_or_load(|| panic!("must not load twice")).expect("cached");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(live.load_counts(), (1, 0));
    }

    #[test]
    fn a_failed_load_serves_nothing_and_is_retried() {
        let live = LiveState::new();
        let err = live.get_or_load(|| Err(LoadError { problems: vec!["broken".into()] }));
        assert!(err.is_err());
        assert!(live.current().is_none());
        assert_eq!(live.last_error().map(|e| e.problems.clone()), Some(vec!["broken".to_string()]));
        live.get_or_load(|| Ok(demo())).expect("retried");
        assert!(live.last_error().is_none());
        assert_eq!(live.load_counts(), (1, 1));
    }

    #[test]
    fn a_first_install_never_replaces_a_serving_state() {
        let live = LiveState::new();
        let mut first = demo();
        first.etag = "first".into();
        assert_eq!(live.install_first(first).etag, "first");
        let mut late = demo();
        late.etag = "late".into();
        assert_eq!(live.install_first(late).etag, "first", "a late cold load loses");
        assert_eq!(live.load_counts(), (1, 0));
    }

    #[test]
    fn a_request_keeps_its_snapshot_across_a_swap() {
        let live = LiveState::new();
        let held = live.get_or_load(|| Ok(demo())).expect("loads");
        let etag = held.etag.clone();
        let mut next = demo();
        next.etag = "next".into();
        live.install(next);
        assert_eq!(held.etag, etag, "the in-flight request still sees its own snapshot");
        assert_eq!(live.current().map(|s| s.etag.clone()), Some("next".to_string()));
    }
}
