//! The resolver core: pure, synchronous, no I/O and no globals. Given a
//! snapshot, a request and what is known about sticky assignments, it
//! decides every flag; callers turn the result into responses and logs.

#[cfg(test)]
mod bounds_tests;
pub mod sticky;
#[cfg(test)]
mod tests;

use crate::hash;
use crate::proto::admin::flag::{self, rule::materialization_spec::MaterializationReadMode};
use crate::proto::resolver::ResolveReason;
use crate::proto::types::targeting::{criterion, Criterion};
use crate::proto::wkt::{value::Kind, Struct};
use crate::state::snapshot::{
    AssignmentKind, Credential, FlagEntry, RuleEntry, Snapshot, VariantEntry, MAX_FLAGS_PER_RESOLVE,
};
use crate::targeting::{self, EvalError, Tri};
use std::borrow::Cow;
use sticky::{ReadPlan, Record, Sticky};

/// The context key used when a rule names none.
pub const DEFAULT_SELECTOR: &str = "targeting_key";
/// Longest targeting key accepted, in UTF-8 bytes.
pub const MAX_TARGETING_KEY_BYTES: usize = 100;
/// Deepest evaluation context accepted: the context object is level 1, each
/// nested struct or list one more. 126 is exactly what serde_json's default
/// recursion limit (128) lets through inside a request body, so no body the
/// parser accepts is refused (Confidence accepts the same); contexts built
/// any other way meet the same bound before a recursive walk sees them.
pub const MAX_CONTEXT_DEPTH: usize = 126;

/// Whether `ctx` nests deeper than [`MAX_CONTEXT_DEPTH`] (checked
/// iteratively, so safe on any input).
pub fn context_too_deep(ctx: &Struct) -> bool {
    crate::proto::struct_nests_deeper_than(ctx, MAX_CONTEXT_DEPTH)
}

/// What a caller asks for. Borrowed from the parsed request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    /// Empty means every flag the client may see.
    pub flags: &'r [String],
    pub context: &'r Struct,
    pub client_secret: &'r str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// Deliberately carries nothing about which secrets exist.
    UnknownClientSecret,
    TooManyFlags {
        count: usize,
    },
    /// The evaluation context nests deeper than [`MAX_CONTEXT_DEPTH`].
    ContextTooDeep,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::UnknownClientSecret => f.write_str("client secret not recognized"),
            ResolveError::TooManyFlags { count } => write!(
                f,
                "at most {MAX_FLAGS_PER_RESOLVE} flags can be resolved in one request; this one would resolve {count}"
            ),
            ResolveError::ContextTooDeep => {
                write!(f, "the evaluation context nests deeper than {MAX_CONTEXT_DEPTH} levels of objects and lists")
            }
        }
    }
}

impl std::error::Error for ResolveError {}

/// The rule and assignment a flag got.
#[derive(Debug, Clone)]
pub struct Assigned<'s, 'r> {
    pub rule: &'s flag::Rule,
    /// Position of `rule` in the flag, and of the assignment in the rule:
    /// dense indices telemetry counts by.
    pub rule_index: usize,
    pub assignment_index: usize,
    pub assignment_id: &'s str,
    /// `None` for a client-default assignment.
    pub variant: Option<&'s VariantEntry>,
    pub unit: Option<Cow<'r, str>>,
}

/// A rule the unit fell through on its way.
#[derive(Debug, Clone)]
pub struct Fallthrough<'s, 'r> {
    pub rule: &'s flag::Rule,
    pub rule_index: usize,
    pub assignment_index: usize,
    pub assignment_id: &'s str,
    pub unit: Option<Cow<'r, str>>,
}

#[derive(Debug, Clone)]
pub struct FlagResult<'s, 'r> {
    pub flag: &'s FlagEntry,
    /// Position of `flag` in `Snapshot::flags`.
    pub flag_index: usize,
    pub reason: ResolveReason,
    pub assigned: Option<Assigned<'s, 'r>>,
    pub fallthroughs: Vec<Fallthrough<'s, 'r>>,
}

impl FlagResult<'_, '_> {
    /// Whether the client should report exposure when it uses the flag.
    pub fn should_apply(&self) -> bool {
        self.reason == ResolveReason::Match || !self.fallthroughs.is_empty()
    }
}

#[derive(Debug)]
pub struct Resolution<'s, 'r> {
    pub credential: &'s Credential,
    pub flags: Vec<FlagResult<'s, 'r>>,
    /// Sticky assignments to store, one per (unit, materialization, rule).
    pub writes: Vec<Record>,
    /// Sticky reads still needed: non-empty only from a `Sticky::Discover`
    /// pass, and then the flags above are provisional.
    pub reads: ReadPlan,
}

impl Resolution<'_, '_> {
    pub fn needs_reads(&self) -> bool {
        !self.reads.reads.is_empty()
    }
}

/// Resolves `req` against `snap`. `trace`, when given, receives one line per
/// decision (for `edgeflag explain`); it costs nothing when `None`.
pub fn resolve<'s, 'r>(
    snap: &'s Snapshot,
    req: &Request<'r>,
    sticky: Sticky<'_>,
    trace: Option<&mut Vec<String>>,
) -> Result<Resolution<'s, 'r>, ResolveError> {
    let credential = snap.credential(req.client_secret).ok_or(ResolveError::UnknownClientSecret)?;
    if context_too_deep(req.context) {
        return Err(ResolveError::ContextTooDeep);
    }
    let selected = select_flags(snap, req.flags, &credential.client);
    if selected.len() > MAX_FLAGS_PER_RESOLVE {
        return Err(ResolveError::TooManyFlags { count: selected.len() });
    }
    let mut engine = Engine {
        snap,
        ctx: req.context,
        credential,
        sticky,
        writes: Vec::new(),
        reads: ReadPlan::default(),
        trace,
        bitset_bucket: None,
        path: Vec::new(),
        nesting: 0,
    };
    let mut flags = Vec::with_capacity(selected.len());
    for i in selected {
        if let Some(flag) = snap.flags.get(i) {
            flags.push(engine.resolve_flag(flag, i));
        }
    }
    Ok(Resolution { credential, flags, writes: engine.writes, reads: engine.reads })
}

/// Active flags of `client`, in request order (state order for "all"),
/// each once. Unknown names are skipped, as Confidence does.
fn select_flags(snap: &Snapshot, names: &[String], client: &str) -> Vec<usize> {
    if names.is_empty() {
        return snap.client_flag_indices(client).to_vec();
    }
    let mut out: Vec<usize> = Vec::with_capacity(names.len());
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let Some(i) = snap.flag_index(name) else {
            continue;
        };
        let Some(f) = snap.flags.get(i) else { continue };
        if !f.active || !f.proto.clients.iter().any(|c| c == client) {
            continue;
        }
        if names.len() <= 16 {
            if out.contains(&i) {
                continue;
            }
        } else if !seen.insert(i) {
            continue;
        }
        out.push(i);
    }
    out
}

enum Key<'r> {
    Valid(Cow<'r, str>),
    Absent,
    Invalid(&'static str),
}

fn targeting_key<'r>(ctx: &'r Struct, selector: &str) -> Key<'r> {
    let key = match targeting::lookup(ctx, selector).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => return Key::Absent,
        Some(Kind::StringValue(s)) => Cow::Borrowed(s.as_str()),
        Some(Kind::NumberValue(n)) => {
            if !n.is_finite() || n.fract() != 0.0 {
                return Key::Invalid("a number that is not a whole number");
            }
            Cow::Owned(format!("{n:.0}"))
        }
        Some(Kind::BoolValue(_)) => return Key::Invalid("a boolean"),
        Some(Kind::StructValue(_)) => return Key::Invalid("an object"),
        Some(Kind::ListValue(_)) => return Key::Invalid("a list"),
    };
    if key.len() > MAX_TARGETING_KEY_BYTES {
        return Key::Invalid("longer than 100 bytes");
    }
    Key::Valid(key)
}

struct Engine<'s, 'r, 'm, 't> {
    snap: &'s Snapshot,
    ctx: &'r Struct,
    credential: &'s Credential,
    sticky: Sticky<'m>,
    writes: Vec<Record>,
    reads: ReadPlan,
    trace: Option<&'t mut Vec<String>>,
    /// The unit's bitset bucket, reused across segments of one request.
    bitset_bucket: Option<(String, u64)>,
    /// Segments being evaluated, innermost last: the cycle guard.
    path: Vec<&'s str>,
    /// Targeting depth where the segment being matched starts.
    nesting: usize,
}

/// How one rule ended, when it ends the flag.
enum Stop<'s, 'r> {
    Assigned(Assigned<'s, 'r>),
    Reason(ResolveReason),
    /// A sticky read the flag depends on failed: nothing can be decided
    /// without risking the unit's stored variant (resolves as
    /// MATERIALIZATION_NOT_SUPPORTED).
    StickyUnavailable,
}

impl<'s, 'r> Engine<'s, 'r, '_, '_> {
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.push(line());
        }
    }

    fn resolve_flag(&mut self, flag: &'s FlagEntry, flag_index: usize) -> FlagResult<'s, 'r> {
        let mut fallthroughs = Vec::new();
        let mut missing_reads = false;
        let writes_before = self.writes.len();
        let name = flag.name();
        self.note(|| name.to_string());
        for (rule_index, (rule, entry)) in flag.proto.rules.iter().zip(&flag.rules).enumerate() {
            match self.resolve_rule(flag, rule_index, rule, entry, &mut fallthroughs, &mut missing_reads) {
                None => continue,
                Some(Stop::Assigned(a)) => {
                    return FlagResult {
                        flag,
                        flag_index,
                        reason: ResolveReason::Match,
                        assigned: Some(a),
                        fallthroughs,
                    };
                }
                Some(Stop::Reason(reason)) => {
                    return FlagResult { flag, flag_index, reason, assigned: None, fallthroughs };
                }
                Some(Stop::StickyUnavailable) => {
                    // Not "absent": a fresh assignment written now could
                    // replace the one the store holds. Undecided, so the
                    // SDK serves its default and nothing is written. The
                    // reason SDKs already take for "no sticky store here".
                    self.writes.truncate(writes_before);
                    self.note(|| {
                        "  => sticky data unavailable: MATERIALIZATION_NOT_SUPPORTED, nothing written".to_string()
                    });
                    return FlagResult {
                        flag,
                        flag_index,
                        reason: ResolveReason::MaterializationNotSupported,
                        assigned: None,
                        fallthroughs: Vec::new(),
                    };
                }
            }
        }
        if missing_reads {
            self.note(|| "  provisional: sticky assignments must be read first".to_string());
        }
        self.note(|| "  => no rule matched: NO_SEGMENT_MATCH".to_string());
        FlagResult { flag, flag_index, reason: ResolveReason::NoSegmentMatch, assigned: None, fallthroughs }
    }

    /// `None` moves on to the next rule.
    fn resolve_rule(
        &mut self,
        flag: &'s FlagEntry,
        rule_index: usize,
        rule: &'s flag::Rule,
        entry: &'s RuleEntry,
        fallthroughs: &mut Vec<Fallthrough<'s, 'r>>,
        missing_reads: &mut bool,
    ) -> Option<Stop<'s, 'r>> {
        let rname = rule.name.as_str();
        if !rule.enabled {
            self.note(|| format!("  {rname}: disabled"));
            return None;
        }
        if !rule.environments.is_empty()
            && !rule.environments.iter().any(|e| self.credential.environments.iter().any(|c| c == e))
        {
            self.note(|| {
                format!(
                    "  {rname}: only for environments {:?}; the credential has {:?}",
                    rule.environments, self.credential.environments
                )
            });
            return None;
        }
        if !self.snap.segments.contains_key(&rule.segment) {
            self.note(|| format!("  {rname}: segment {:?} is not in the state", rule.segment));
            return None;
        }

        let blank = rule.targeting_key_selector.is_empty();
        let selector = if blank { DEFAULT_SELECTOR } else { rule.targeting_key_selector.as_str() };
        let unit: Option<Cow<'r, str>> = match targeting_key(self.ctx, selector) {
            Key::Valid(u) => Some(u),
            Key::Absent if blank => {
                self.note(|| format!("  {rname}: no targeting key; only a full rollout can match"));
                None
            }
            Key::Absent => {
                self.note(|| format!("  {rname}: context has no {selector:?} to bucket on"));
                return None;
            }
            Key::Invalid(_) if blank && entry.full_rollout => None,
            Key::Invalid(why) => {
                self.note(|| format!("  {rname}: targeting key {selector:?} is {why} => TARGETING_KEY_ERROR"));
                return Some(Stop::Reason(ResolveReason::TargetingKeyError));
            }
        };
        let spec = rule.assignment_spec.as_ref()?;
        let mat = rule.materialization_spec.as_ref();

        // Sticky read: a unit already stored keeps its variant.
        let mut matched_by_sticky = false;
        let mut discovering = false;
        if let Some(read) = mat.map(|m| m.read_materialization.as_str()).filter(|r| !r.is_empty()) {
            let Some(u) = unit.as_deref() else {
                self.note(|| format!("  {rname}: sticky read needs a targeting key"));
                return None;
            };
            let mode = mat.and_then(|m| m.mode).unwrap_or(MaterializationReadMode {
                materialization_must_match: false,
                segment_targeting_can_be_ignored: false,
            });
            match self.sticky {
                Sticky::Unsupported => {
                    self.note(|| {
                        format!("  {rname}: reads {read} but there is no sticky store => MATERIALIZATION_NOT_SUPPORTED")
                    });
                    return Some(Stop::Reason(ResolveReason::MaterializationNotSupported));
                }
                Sticky::Discover => {
                    self.reads.add(u, read, rname);
                    *missing_reads = true;
                    discovering = true;
                }
                Sticky::Known(set) if set.is_unavailable(u, read) => {
                    self.note(|| format!("  {rname}: reading {read} failed"));
                    return Some(Stop::StickyUnavailable);
                }
                Sticky::Known(set) => match set.lookup(u, read, rname) {
                    None if mode.materialization_must_match => {
                        self.note(|| format!("  {rname}: unit not in {read}, and intake is paused"));
                        return None;
                    }
                    None => self.note(|| format!("  {rname}: unit not in {read}")),
                    Some(stored) => {
                        let targeted = mode.segment_targeting_can_be_ignored
                            || match self.segment_match(&rule.segment, Some(u), false) {
                                Ok(t) => t == Tri::True,
                                Err(EvalError::MaterializationUnsupported) => {
                                    return Some(Stop::Reason(ResolveReason::MaterializationNotSupported))
                                }
                                Err(EvalError::StickyUnavailable) => return Some(Stop::StickyUnavailable),
                                Err(EvalError::Unrecognized) => false,
                            };
                        if !targeted {
                            self.note(|| format!("  {rname}: unit is in {read} but fails the segment targeting"));
                            return None;
                        }
                        if let Some(i) = self.sticky_pick(flag, entry, spec, &rule.segment, u, stored) {
                            let a = self.assign(flag, rule_index, rule, entry, spec, i, unit.clone(), fallthroughs)?;
                            self.note(|| format!("  {rname}: sticky: {read} recorded variant {stored:?} => MATCH"));
                            return Some(a);
                        }
                        self.note(|| format!("  {rname}: unit is in {read} (no stored variant for this rule); bucketing without the bitset"));
                        matched_by_sticky = true;
                    }
                },
            }
        }

        if !matched_by_sticky {
            match self.segment_match(&rule.segment, unit.as_deref(), true) {
                Err(EvalError::Unrecognized) => {
                    self.note(|| {
                        format!("  {rname}: segment uses a targeting rule this resolver does not recognize; skipped")
                    });
                    return None;
                }
                Err(EvalError::MaterializationUnsupported) => {
                    self.note(|| format!("  {rname}: segment needs sticky membership but there is no store => MATERIALIZATION_NOT_SUPPORTED"));
                    return Some(Stop::Reason(ResolveReason::MaterializationNotSupported));
                }
                Err(EvalError::StickyUnavailable) => {
                    self.note(|| format!("  {rname}: segment needs sticky membership whose read failed"));
                    return Some(Stop::StickyUnavailable);
                }
                Ok(Tri::False) => {
                    self.note(|| format!("  {rname}: unit not in segment {} (targeting or bitset)", rule.segment));
                    return None;
                }
                Ok(Tri::Unknown) => {
                    *missing_reads = true;
                    return None;
                }
                Ok(Tri::True) if discovering => return None,
                Ok(Tri::True) => self.note(|| format!("  {rname}: unit is in segment {}", rule.segment)),
            }
        }

        let index = if entry.full_rollout {
            Some(0)
        } else if let Some(u) = unit.as_deref() {
            let b = hash::bucket(&entry.segment_id, u, entry.bucket_count);
            let found = find_bucket(spec, b, None);
            self.note(|| match found {
                Some(i) => format!(
                    "  {rname}: bucket {b} of {} -> assignment {:?}",
                    entry.bucket_count,
                    spec.assignments.get(i).map(|a| a.assignment_id.as_str()).unwrap_or("")
                ),
                None => format!("  {rname}: bucket {b} of {} falls in no assignment's range", entry.bucket_count),
            });
            found
        } else {
            self.note(|| format!("  {rname}: not a full rollout and no targeting key to bucket"));
            None
        };
        let i = index?;
        self.assign(flag, rule_index, rule, entry, spec, i, unit, fallthroughs)
    }

    /// Applies assignment `i` of `rule`: queues the sticky write, records a
    /// fallthrough (and returns `None` to go on), or ends the flag.
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &mut self,
        flag: &'s FlagEntry,
        rule_index: usize,
        rule: &'s flag::Rule,
        entry: &'s RuleEntry,
        spec: &'s flag::rule::AssignmentSpec,
        i: usize,
        unit: Option<Cow<'r, str>>,
        fallthroughs: &mut Vec<Fallthrough<'s, 'r>>,
    ) -> Option<Stop<'s, 'r>> {
        let rname = rule.name.as_str();
        let kind = *entry.assignments.get(i)?;
        let assignment_id = spec.assignments.get(i).map(|a| a.assignment_id.as_str()).unwrap_or("");
        let variant = match kind {
            AssignmentKind::Unset => {
                self.note(|| format!("  {rname}: assignment {assignment_id:?} assigns nothing; next rule"));
                return None;
            }
            AssignmentKind::Variant(v) => flag.variants.get(v),
            AssignmentKind::Fallthrough | AssignmentKind::ClientDefault => None,
        };
        if let (Some(u), Some(write)) = (
            unit.as_deref(),
            rule.materialization_spec.as_ref().map(|m| m.write_materialization.as_str()).filter(|w| !w.is_empty()),
        ) {
            if matches!(self.sticky, Sticky::Unsupported) {
                self.note(|| {
                    format!("  {rname}: writes {write} but there is no sticky store => MATERIALIZATION_NOT_SUPPORTED")
                });
                return Some(Stop::Reason(ResolveReason::MaterializationNotSupported));
            }
            let dup = self.writes.iter().any(|w| w.unit == u && w.materialization == write && w.rule == rname);
            // Rewriting the record the store already holds (a sticky hit)
            // changes nothing but costs a KV write per resolve, and KV takes
            // one write a second per key: a busy unit would hit 429s.
            let variant_name = variant.map(|v| v.name.as_str()).unwrap_or("");
            let held = match self.sticky {
                Sticky::Known(set) => !variant_name.is_empty() && set.lookup(u, write, rname) == Some(variant_name),
                _ => false,
            };
            if held {
                self.note(|| format!("  {rname}: {write} already holds {variant_name:?} for the unit; not rewritten"));
            }
            if !dup && !held {
                self.writes.push(Record {
                    unit: u.to_string(),
                    materialization: write.to_string(),
                    rule: rname.to_string(),
                    variant: variant.map(|v| v.name.clone()).unwrap_or_default(),
                });
            }
        }
        match kind {
            AssignmentKind::Fallthrough => {
                self.note(|| format!("  {rname}: fallthrough {assignment_id:?}; next rule"));
                fallthroughs.push(Fallthrough { rule, rule_index, assignment_index: i, assignment_id, unit });
                None
            }
            AssignmentKind::ClientDefault => {
                self.note(|| format!("  {rname}: client default {assignment_id:?} => MATCH"));
                Some(Stop::Assigned(Assigned {
                    rule,
                    rule_index,
                    assignment_index: i,
                    assignment_id,
                    variant: None,
                    unit,
                }))
            }
            AssignmentKind::Variant(_) => {
                let v = variant?;
                self.note(|| format!("  {rname}: variant {} ({assignment_id:?}) => MATCH", v.name));
                Some(Stop::Assigned(Assigned {
                    rule,
                    rule_index,
                    assignment_index: i,
                    assignment_id,
                    variant: Some(v),
                    unit,
                }))
            }
            AssignmentKind::Unset => None,
        }
    }

    /// Segment membership: targeting, then (when `with_bitset`) the
    /// allocation bitset. `path` guards against reference cycles.
    fn segment_match(&mut self, name: &'s str, unit: Option<&str>, with_bitset: bool) -> Result<Tri, EvalError> {
        let snap = self.snap;
        let Some(seg) = snap.segments.get(name) else {
            return Ok(Tri::False);
        };
        // A cycle is a non-match; depth is bounded by `nesting`, which grows
        // by at least one per segment on the path.
        if self.path.contains(&name) {
            return Ok(Tri::False);
        }
        let targeted = match seg.proto.targeting.as_ref() {
            None => Tri::True,
            Some(t) => match t.expression.as_ref() {
                None => Tri::True,
                Some(expr) => {
                    self.path.push(name);
                    let start = self.nesting;
                    // A referenced segment's expression starts one below the
                    // `Ref` that names it, so the bound counts the whole chain.
                    let mut leaf = |c: &'s Criterion, depth: usize| {
                        self.nesting = depth.saturating_add(1);
                        let r = self.criterion(c, unit);
                        self.nesting = start;
                        r
                    };
                    let r = targeting::eval_expression(expr, &t.criteria, &mut leaf, start);
                    self.path.pop();
                    r?
                }
            },
        };
        if targeted == Tri::False || !with_bitset {
            return Ok(targeted);
        }
        let Some(bits) = seg.bitset() else {
            return Ok(targeted);
        };
        let allocated = match unit {
            Some(u) => bits.get(self.bitset_bucket(u) as usize),
            None => bits.all_set(),
        };
        Ok(if allocated { targeted } else { Tri::False })
    }

    fn bitset_bucket(&mut self, unit: &str) -> u64 {
        if let Some((u, b)) = &self.bitset_bucket {
            if u == unit {
                return *b;
            }
        }
        let b = hash::bucket(&self.snap.bitset_salt, unit, hash::SEGMENT_BUCKETS);
        self.bitset_bucket = Some((unit.to_string(), b));
        b
    }

    fn criterion(&mut self, c: &'s Criterion, unit: Option<&str>) -> Result<Tri, EvalError> {
        match &c.criterion {
            None => Ok(Tri::False),
            Some(criterion::Criterion::Attribute(a)) => targeting::attribute_matches(a, self.ctx).map(Tri::from),
            Some(criterion::Criterion::Segment(s)) => self.segment_match(&s.segment, unit, true),
            Some(criterion::Criterion::MaterializedSegment(m)) => {
                let Some(u) = unit else { return Ok(Tri::False) };
                let name = m.materialized_segment.as_str();
                if let Some(bf) = self.snap.bloom_filters.get(name) {
                    return Ok(bf.might_contain(u).into());
                }
                match self.sticky {
                    Sticky::Unsupported => Err(EvalError::MaterializationUnsupported),
                    Sticky::Discover => {
                        self.reads.add(u, name, "");
                        Ok(Tri::Unknown)
                    }
                    Sticky::Known(set) if set.is_unavailable(u, name) => Err(EvalError::StickyUnavailable),
                    Sticky::Known(set) => Ok(set.lookup(u, name, "").is_some().into()),
                }
            }
        }
    }

    /// Among assignments giving the stored variant: the only one, or the
    /// one whose range holds the unit's bucket.
    fn sticky_pick(
        &self,
        flag: &FlagEntry,
        entry: &RuleEntry,
        spec: &flag::rule::AssignmentSpec,
        segment: &str,
        unit: &str,
        stored: &str,
    ) -> Option<usize> {
        if stored.is_empty() {
            return None;
        }
        let candidates: Vec<usize> = entry
            .assignments
            .iter()
            .enumerate()
            .filter(|(_, k)| matches!(k, AssignmentKind::Variant(v) if flag.variants.get(*v).is_some_and(|v| v.name == stored)))
            .map(|(i, _)| i)
            .collect();
        match candidates.len() {
            0 => None,
            1 => candidates.first().copied(),
            _ => {
                let _ = segment;
                let b = hash::bucket(&entry.segment_id, unit, entry.bucket_count);
                find_bucket(spec, b, Some(&candidates))
            }
        }
    }
}

/// First assignment (in list order, optionally among `only`) with a range
/// holding bucket `b`.
fn find_bucket(spec: &flag::rule::AssignmentSpec, b: u64, only: Option<&[usize]>) -> Option<usize> {
    spec.assignments.iter().enumerate().find_map(|(i, a)| {
        if only.is_some_and(|o| !o.contains(&i)) {
            return None;
        }
        a.bucket_ranges.iter().any(|r| (r.lower.max(0) as u64) <= b && b < (r.upper.max(0) as u64)).then_some(i)
    })
}
