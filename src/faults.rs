//! Fault injection for end-to-end tests of the shipping bundle:
//! `EDGEFLAG_FAULTS`, which production never sets. Comma-separated
//! `site=action`, where site is `sticky_read`, `sticky_write`,
//! `queue_send` or `state_kv`, and action is `fail` or `slow:MS` (wait MS
//! before the real call, inside its timeout), either optionally followed by
//! `:N` (only the first N calls of that site in this isolate; no N =
//! every call). Example: `sticky_read=slow:2500,queue_send=fail:3`.
//!
//! Parsed once per isolate; each call site asks [`Faults::trip`], which
//! counts without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Where a fault can be injected: the Worker's calls to the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Sticky-assignment KV reads (list and bulk value reads), per attempt.
    StickyRead,
    /// Sticky-assignment KV writes, per attempt.
    StickyWrite,
    /// Flag-log Queue sends.
    QueueSend,
    /// State KV reads of the pointer (`state:current`), per attempt.
    StatePointer,
    /// State KV reads of a blob the pointer names, per attempt.
    StateBlob,
}

impl Site {
    pub const ALL: [Site; 5] =
        [Site::StickyRead, Site::StickyWrite, Site::QueueSend, Site::StatePointer, Site::StateBlob];

    pub fn as_str(self) -> &'static str {
        match self {
            Site::StickyRead => "sticky_read",
            Site::StickyWrite => "sticky_write",
            Site::QueueSend => "queue_send",
            Site::StatePointer => "state_pointer",
            Site::StateBlob => "state_blob",
        }
    }
}

/// What a tripped fault does to the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The call fails without reaching the platform.
    Fail,
    /// The call waits this many milliseconds, then runs.
    Slow(u64),
}

#[derive(Debug)]
struct Rule {
    site: Site,
    action: Action,
    /// How many calls it applies to; `None`: all.
    limit: Option<u64>,
    used: AtomicU64,
}

/// The parsed `EDGEFLAG_FAULTS` of an isolate.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Rule>,
}

impl Faults {
    /// Parses the variable's value; an empty one means no faults. Any
    /// malformed entry rejects the whole value (a half-applied fault
    /// config would make a test pass for the wrong reason).
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut rules: Vec<Rule> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (site, action) =
                entry.split_once('=').ok_or_else(|| format!("EDGEFLAG_FAULTS entry {entry:?} is not site=action"))?;
            let site = Site::ALL
                .into_iter()
                .find(|s| s.as_str() == site.trim())
                .ok_or_else(|| format!("EDGEFLAG_FAULTS: unknown site {:?} (sticky_read, sticky_write, queue_send, state_pointer, state_blob)", site.trim()))?;
            if rules.iter().any(|r| r.site == site) {
                return Err(format!("EDGEFLAG_FAULTS names {} twice", site.as_str()));
            }
            let mut parts = action.trim().split(':');
            let number = |p: Option<&str>, what: &str| -> Result<Option<u64>, String> {
                p.map(|n| {
                    n.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("EDGEFLAG_FAULTS {entry:?}: {what} {n:?} is not a whole number"))
                })
                .transpose()
            };
            let action = match parts.next().map(str::trim) {
                Some("fail") => Action::Fail,
                Some("slow") => Action::Slow(
                    number(parts.next(), "delay")?
                        .ok_or_else(|| format!("EDGEFLAG_FAULTS {entry:?}: slow needs :MS"))?,
                ),
                other => {
                    let other = other.unwrap_or_default();
                    return Err(format!("EDGEFLAG_FAULTS {entry:?}: unknown action {other:?} (fail, slow:MS)"));
                }
            };
            let limit = number(parts.next(), "count")?;
            if parts.next().is_some() {
                return Err(format!("EDGEFLAG_FAULTS {entry:?}: too many ':' parts"));
            }
            rules.push(Rule { site, action, limit, used: AtomicU64::new(0) });
        }
        Ok(Faults { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The fault for this call of `site`, if one applies; counts the call
    /// against the rule's limit.
    pub fn trip(&self, site: Site) -> Option<Action> {
        let rule = self.rules.iter().find(|r| r.site == site)?;
        match rule.limit {
            None => Some(rule.action),
            Some(limit) => rule
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| (u < limit).then_some(u + 1))
                .ok()
                .map(|_| rule.action),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_no_faults() {
        let f = Faults::parse(" ").unwrap();
        assert!(f.is_empty());
        assert_eq!(f.trip(Site::StickyRead), None);
    }

    #[test]
    fn an_uncounted_fault_trips_every_call_of_its_site_only() {
        let f = Faults::parse("sticky_read=fail").unwrap();
        for _ in 0..5 {
            assert_eq!(f.trip(Site::StickyRead), Some(Action::Fail));
        }
        assert_eq!(f.trip(Site::StickyWrite), None);
        assert_eq!(f.trip(Site::QueueSend), None);
    }

    #[test]
    fn a_counted_fault_trips_the_first_n_calls() {
        let f = Faults::parse("queue_send=fail:3, sticky_write=slow:250:1,state_blob=slow:10").unwrap();
        let sends: Vec<_> = (0..5).map(|_| f.trip(Site::QueueSend)).collect();
        assert_eq!(sends, [Some(Action::Fail), Some(Action::Fail), Some(Action::Fail), None, None]);
        assert_eq!(f.trip(Site::StickyWrite), Some(Action::Slow(250)));
        assert_eq!(f.trip(Site::StickyWrite), None);
        assert_eq!(f.trip(Site::StateBlob), Some(Action::Slow(10)));
        assert_eq!(f.trip(Site::StateBlob), Some(Action::Slow(10)));
        assert_eq!(f.trip(Site::StickyRead), None);
    }

    #[test]
    fn a_zero_count_never_trips() {
        let f = Faults::parse("state_blob=fail:0").unwrap();
        assert_eq!(f.trip(Site::StateBlob), None);
    }

    #[test]
    fn malformed_values_are_rejected_whole_with_the_reason() {
        for (bad, says) in [
            ("sticky_read", "site=action"),
            ("sticky_reads=fail", "unknown site"),
            ("sticky_read=crash", "unknown action"),
            ("sticky_read=slow", "slow needs :MS"),
            ("sticky_read=slow:abc", "not a whole number"),
            ("sticky_read=fail:-1", "not a whole number"),
            ("sticky_read=fail:1:2", "too many"),
            ("queue_send=fail,queue_send=fail:1", "twice"),
            ("queue_send=fail,bogus", "site=action"),
        ] {
            let err = Faults::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
