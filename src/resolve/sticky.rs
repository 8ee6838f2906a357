//! Sticky assignments ("materializations"): what a resolve may read, and the
//! records it asks to write. The store itself (KV in the worker, a file in
//! the CLI) lives outside the core; the core only answers from what it is
//! given, or lists what it would need.

use std::collections::{BTreeSet, HashMap};

/// A stored assignment. `rule` empty means "unit is in the materialization".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub unit: String,
    pub materialization: String,
    pub rule: String,
    pub variant: String,
}

/// A read the resolve needs: is `unit` in `materialization`, and which
/// variant did `rule` give it?
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadKey {
    pub unit: String,
    pub materialization: String,
    pub rule: String,
}

/// Everything known about some units' materializations.
#[derive(Debug, Clone, Default)]
pub struct StickySet {
    /// (unit, materialization) → rule → variant.
    entries: HashMap<(String, String), HashMap<String, String>>,
    /// Pairs whose read failed: neither present nor absent. A flag that
    /// needs one cannot be decided without risking a unit's variant, so it
    /// resolves as MATERIALIZATION_NOT_SUPPORTED and writes nothing.
    unavailable: BTreeSet<(String, String)>,
}

impl StickySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records membership, and the rule's variant when `rule` is non-empty.
    pub fn insert(&mut self, unit: &str, materialization: &str, rule: &str, variant: &str) {
        let rules = self.entries.entry((unit.to_string(), materialization.to_string())).or_default();
        if !rule.is_empty() {
            rules.insert(rule.to_string(), variant.to_string());
        }
    }

    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut set = Self::new();
        for r in records {
            set.insert(&r.unit, &r.materialization, &r.rule, &r.variant);
        }
        set
    }

    /// `None`: the unit is not in the materialization. `Some(v)`: it is, and
    /// `v` is the variant stored for `rule` (empty when none is).
    pub fn lookup(&self, unit: &str, materialization: &str, rule: &str) -> Option<&str> {
        // Tuple keys of owned strings need owned probes; sticky reads are
        // rare next to plain resolves, so this stays simple.
        let rules = self.entries.get(&(unit.to_string(), materialization.to_string()))?;
        Some(rules.get(rule).map(String::as_str).unwrap_or(""))
    }

    /// Marks (unit, materialization) as unreadable: what the store holds
    /// for it is unknown, which is not the same as holding nothing.
    pub fn mark_unavailable(&mut self, unit: &str, materialization: &str) {
        self.entries.remove(&(unit.to_string(), materialization.to_string()));
        self.unavailable.insert((unit.to_string(), materialization.to_string()));
    }

    pub fn is_unavailable(&self, unit: &str, materialization: &str) -> bool {
        // Checked before every sticky lookup; empty in the common case.
        !self.unavailable.is_empty() && self.unavailable.contains(&(unit.to_string(), materialization.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unavailable.is_empty()
    }
}

/// What the resolve may know about sticky assignments.
#[derive(Debug, Clone, Copy)]
pub enum Sticky<'m> {
    /// No store: flags that need one report MATERIALIZATION_NOT_SUPPORTED.
    Unsupported,
    /// First pass: answer nothing, list every read needed.
    Discover,
    /// Answer from this set; what it lacks is absent.
    Known(&'m StickySet),
}

/// Reads collected by a discovery pass, deduplicated and ordered.
#[derive(Debug, Default)]
pub struct ReadPlan {
    pub reads: BTreeSet<ReadKey>,
}

impl ReadPlan {
    pub fn add(&mut self, unit: &str, materialization: &str, rule: &str) {
        self.reads.insert(ReadKey {
            unit: unit.to_string(),
            materialization: materialization.to_string(),
            rule: rule.to_string(),
        });
    }
}

impl StickySet {
    /// Reads the conformance suite's layout, which the CLI accepts too:
    /// `{unit: {materialization: {isUnitInMaterialization, ruleToVariant: {rule: variant}}}}`.
    /// A unit marked as not in a materialization contributes nothing.
    pub fn from_suite_json(v: &serde_json::Value) -> Result<StickySet, String> {
        let mut set = StickySet::new();
        let units = v.as_object().ok_or("expected an object keyed by unit")?;
        for (unit, mats) in units {
            let mats =
                mats.as_object().ok_or_else(|| format!("{unit:?}: expected an object keyed by materialization"))?;
            for (mat, entry) in mats {
                let included = entry
                    .get("isUnitInMaterialization")
                    .map(|b| {
                        b.as_bool()
                            .ok_or_else(|| format!("{unit:?}/{mat:?}: isUnitInMaterialization must be a boolean"))
                    })
                    .transpose()?
                    .unwrap_or(false);
                if !included {
                    continue;
                }
                set.insert(unit, mat, "", "");
                if let Some(rules) = entry.get("ruleToVariant") {
                    let rules = rules
                        .as_object()
                        .ok_or_else(|| format!("{unit:?}/{mat:?}: ruleToVariant must be an object"))?;
                    for (rule, variant) in rules {
                        let variant = variant
                            .as_str()
                            .ok_or_else(|| format!("{unit:?}/{mat:?}/{rule:?}: variant must be a string"))?;
                        set.insert(unit, mat, rule, variant);
                    }
                }
            }
        }
        Ok(set)
    }
}
