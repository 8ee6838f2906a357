//! Resolve info, aggregated per snapshot: dense atomic counters indexed by
//! (flag, variant) and (flag, rule, assignment), plus per-credential
//! resolve counts and context schemas. Recording is a handful of atomic
//! adds; nothing is allocated unless a context shape is new this epoch.
//!
//! Exactness: counters are never swapped out, only drained with
//! `swap(0)`. An add either precedes the swap (this checkpoint) or follows
//! it (a later one), so nothing is lost or counted twice, and no recorder
//! is ever waited for. An aggregate lives while its snapshot is held
//! anywhere else; once only the aggregate holds it, no recorder can reach
//! it, so the drain that notices this is its last and it is dropped.

use super::schema::{self, mix};
use crate::proto::admin::client_resolve_info::EvaluationContextSchemaInstance as SchemaInstance;
use crate::proto::admin::flag_resolve_info::{AssignmentResolveInfo, RuleResolveInfo, VariantResolveInfo};
use crate::proto::admin::{ClientResolveInfo, FlagResolveInfo};
use crate::proto::wkt::Struct;
use crate::resolve::{Assigned, Resolution};
use crate::state::snapshot::{AssignmentKind, Credential, FlagEntry, Snapshot};
use arc_swap::ArcSwapOption;
use crossbeam_queue::SegQueue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Confidence keeps at most this many distinct schemas per credential.
pub const MAX_SCHEMAS_PER_CREDENTIAL: usize = 50;
/// Slots of the seen-this-epoch schema table (8 KiB per aggregate).
const SCHEMA_SLOTS: usize = 1024;
const SCHEMA_PROBES: usize = 16;
/// Low bits of a schema slot hold the epoch it was last claimed in.
const EPOCH_MASK: u64 = 0xffff;
/// Keeps a claimed slot non-zero whatever the key bits are.
const CLAIMED: u64 = 1 << 63;

/// What one drain yields.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub flags: Vec<FlagResolveInfo>,
    pub clients: Vec<ClientResolveInfo>,
    pub credential_resolves: Vec<(String, u64)>,
    pub dropped_schemas: u64,
    pub unattributed: u64,
}

pub(crate) struct ResolveLogger {
    /// One aggregate per live snapshot, newest first (usually exactly one).
    aggs: ArcSwapOption<Vec<Arc<Aggregate>>>,
    orphaned: AtomicU64,
}

impl ResolveLogger {
    pub(crate) const fn new() -> Self {
        ResolveLogger { aggs: ArcSwapOption::const_empty(), orphaned: AtomicU64::new(0) }
    }

    pub(crate) fn record(&self, snap: &Arc<Snapshot>, res: &Resolution<'_, '_>, ctx: &Struct) {
        {
            let guard = self.aggs.load();
            if let Some(a) = guard.as_deref().and_then(|l| l.iter().find(|a| Arc::ptr_eq(&a.snap, snap))) {
                a.record(res, ctx);
                return;
            }
        }
        // First resolve against this snapshot: add its aggregate. Rare (once
        // per snapshot), so the allocation and the RCU loop are fine here.
        let fresh = Arc::new(Aggregate::new(snap.clone()));
        self.aggs.rcu(|cur| {
            let mut list: Vec<Arc<Aggregate>> = cur.as_deref().cloned().unwrap_or_default();
            if !list.iter().any(|a| Arc::ptr_eq(&a.snap, snap)) {
                list.insert(0, fresh.clone());
            }
            Some(Arc::new(list))
        });
        let guard = self.aggs.load();
        match guard.as_deref().and_then(|l| l.iter().find(|a| Arc::ptr_eq(&a.snap, snap))) {
            Some(a) => a.record(res, ctx),
            // Cannot happen: a drain only drops aggregates of snapshots
            // nobody holds, and the caller holds `snap`. Counted if it does.
            None => {
                self.orphaned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes everything counted so far and forgets aggregates whose
    /// snapshot nobody else holds any more (after draining them a last time).
    pub(crate) fn drain(&self, out: &mut Drained) {
        out.unattributed += self.orphaned.swap(0, Ordering::AcqRel);
        let Some(list) = self.aggs.load_full() else { return };
        let mut dead: Vec<*const Aggregate> = Vec::new();
        for agg in list.iter() {
            let quiet = Arc::strong_count(&agg.snap) == 1;
            if quiet {
                // Pairs with the Release of each recorder's snapshot drop:
                // all of their adds are visible to the drain below.
                fence(Ordering::Acquire);
                dead.push(Arc::as_ptr(agg));
            }
            agg.drain(out);
        }
        if !dead.is_empty() {
            self.aggs.rcu(|cur| {
                let kept: Vec<Arc<Aggregate>> =
                    cur.iter().flat_map(|l| l.iter()).filter(|a| !dead.contains(&Arc::as_ptr(a))).cloned().collect();
                (!kept.is_empty()).then(|| Arc::new(kept))
            });
        }
    }

    /// Aggregates currently held (one per snapshot still in use).
    pub(crate) fn live(&self) -> usize {
        self.aggs.load().as_deref().map_or(0, Vec::len)
    }
}

struct CredSlot {
    /// Address of the snapshot's `Credential`: unique and stable while the
    /// aggregate holds the snapshot. 0 = free.
    key: AtomicUsize,
    /// (client, credential), set by the first recorder to claim the slot.
    names: OnceLock<(String, String)>,
    resolves: AtomicU64,
}

pub(crate) struct Aggregate {
    snap: Arc<Snapshot>,
    counters: Box<[AtomicU64]>,
    /// Per flag: first of its `variants.len() + 1` variant counters (the
    /// last one counts "no variant").
    flag_base: Box<[usize]>,
    /// Per flag, plus one: where its rules start in `rule_base`.
    rule_first: Box<[usize]>,
    /// Per rule: its counter, followed by one per assignment.
    rule_base: Box<[usize]>,
    rule_width: Box<[usize]>,
    creds: Box<[CredSlot]>,
    schema_slots: Box<[AtomicU64]>,
    epoch: AtomicU64,
    /// Newly seen (credential slot, schema) pairs; bounded by the table.
    schemas: SegQueue<(usize, SchemaInstance)>,
    dropped_schemas: AtomicU64,
    unattributed: AtomicU64,
}

impl Aggregate {
    fn new(snap: Arc<Snapshot>) -> Self {
        let mut len = 0usize;
        let mut flag_base = Vec::with_capacity(snap.flags.len());
        let mut rule_first = Vec::with_capacity(snap.flags.len() + 1);
        let mut rule_base = Vec::new();
        let mut rule_width = Vec::new();
        for f in &snap.flags {
            flag_base.push(len);
            len += f.variants.len() + 1;
            rule_first.push(rule_base.len());
            for r in &f.rules {
                rule_base.push(len);
                rule_width.push(r.assignments.len());
                len += 1 + r.assignments.len();
            }
        }
        rule_first.push(rule_base.len());
        // Twice the credentials, so probing always finds a free slot.
        let cred_slots = snap.stats.credentials.saturating_mul(2).max(16).next_power_of_two();
        Aggregate {
            counters: (0..len).map(|_| AtomicU64::new(0)).collect(),
            flag_base: flag_base.into(),
            rule_first: rule_first.into(),
            rule_base: rule_base.into(),
            rule_width: rule_width.into(),
            creds: (0..cred_slots)
                .map(|_| CredSlot { key: AtomicUsize::new(0), names: OnceLock::new(), resolves: AtomicU64::new(0) })
                .collect(),
            schema_slots: (0..SCHEMA_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            schemas: SegQueue::new(),
            dropped_schemas: AtomicU64::new(0),
            unattributed: AtomicU64::new(0),
            snap,
        }
    }

    fn bump(&self, i: usize) -> bool {
        match self.counters.get(i) {
            Some(c) => {
                c.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Counter indices of (rule, assignment) of flag `fi`.
    fn rule_slots(&self, fi: usize, ri: usize, ai: usize) -> Option<(usize, usize)> {
        let first = *self.rule_first.get(fi)?;
        let end = *self.rule_first.get(fi + 1)?;
        let g = first.checked_add(ri).filter(|&g| g < end)?;
        if ai >= *self.rule_width.get(g)? {
            return None;
        }
        let base = *self.rule_base.get(g)?;
        Some((base, base + 1 + ai))
    }

    fn variant_slot(&self, entry: &FlagEntry, fi: usize, a: Option<&Assigned<'_, '_>>) -> Option<usize> {
        let base = *self.flag_base.get(fi)?;
        let k = match a.and_then(|a| a.variant.map(|v| (a, v))) {
            None => entry.variants.len(),
            Some((a, v)) => {
                // The rule's assignment names the variant index directly; the
                // scan is only a fallback.
                let by_rule = match entry.rules.get(a.rule_index).and_then(|r| r.assignments.get(a.assignment_index)) {
                    Some(AssignmentKind::Variant(i)) => Some(*i),
                    _ => None,
                };
                by_rule
                    .filter(|&i| entry.variants.get(i).is_some_and(|e| std::ptr::eq(e, v)))
                    .or_else(|| entry.variants.iter().position(|e| std::ptr::eq(e, v)))?
            }
        };
        Some(base + k)
    }

    fn record(&self, res: &Resolution<'_, '_>, ctx: &Struct) {
        let mut unattributed = 0u64;
        for f in &res.flags {
            let fi = f.flag_index;
            let Some(entry) = self.snap.flags.get(fi).filter(|e| std::ptr::eq(*e, f.flag)) else {
                unattributed += 1;
                continue;
            };
            for ft in &f.fallthroughs {
                match self.rule_slots(fi, ft.rule_index, ft.assignment_index) {
                    Some((r, a)) => {
                        self.bump(r);
                        self.bump(a);
                    }
                    None => unattributed += 1,
                }
            }
            if let Some(a) = &f.assigned {
                match self.rule_slots(fi, a.rule_index, a.assignment_index) {
                    Some((r, x)) => {
                        self.bump(r);
                        self.bump(x);
                    }
                    None => unattributed += 1,
                }
            }
            match self.variant_slot(entry, fi, f.assigned.as_ref()) {
                Some(v) if self.bump(v) => {}
                _ => unattributed += 1,
            }
        }
        match self.cred_slot(res.credential) {
            Some(i) => {
                if let Some(slot) = self.creds.get(i) {
                    slot.resolves.fetch_add(1, Ordering::Relaxed);
                }
                self.note_schema(i, ctx);
            }
            None => unattributed += 1,
        }
        if unattributed > 0 {
            self.unattributed.fetch_add(unattributed, Ordering::Relaxed);
        }
    }

    fn cred_slot(&self, cred: &Credential) -> Option<usize> {
        let key = cred as *const Credential as usize;
        let mask = self.creds.len().checked_sub(1)?;
        let start = mix(key as u64) as usize;
        for step in 0..self.creds.len() {
            let i = start.wrapping_add(step) & mask;
            let slot = self.creds.get(i)?;
            let cur = slot.key.load(Ordering::Acquire);
            if cur != key {
                if cur != 0 {
                    continue;
                }
                match slot.key.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {}
                    Err(now) if now == key => {}
                    Err(_) => continue,
                }
            }
            let names = slot.names.get_or_init(|| (cred.client.clone(), cred.credential.clone()));
            // Only a credential from another snapshot could differ here.
            if names.1 == cred.credential {
                return Some(i);
            }
        }
        None
    }

    /// Queues the full schema the first time (credential, shape) is seen
    /// in the current epoch; every other time it costs one hash walk and
    /// one atomic load.
    fn note_schema(&self, cred: usize, ctx: &Struct) {
        let key = mix(schema::fingerprint(ctx) ^ (cred as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let epoch = self.epoch.load(Ordering::Acquire) & EPOCH_MASK;
        let want = (key & !EPOCH_MASK) | CLAIMED | epoch;
        let mask = self.schema_slots.len() - 1;
        let start = (key >> 32) as usize;
        for step in 0..SCHEMA_PROBES {
            let Some(slot) = self.schema_slots.get(start.wrapping_add(step) & mask) else { break };
            let cur = slot.load(Ordering::Acquire);
            if cur == want {
                return;
            }
            // Free, or claimed in an earlier epoch: reusable.
            if cur == 0 || cur & EPOCH_MASK != epoch {
                match slot.compare_exchange(cur, want, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        self.schemas.push((cred, schema::derive(ctx)));
                        return;
                    }
                    Err(now) if now == want => return,
                    Err(_) => {}
                }
            }
        }
        self.dropped_schemas.fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self, i: usize) -> u64 {
        match self.counters.get(i) {
            Some(c) if c.load(Ordering::Relaxed) != 0 => c.swap(0, Ordering::AcqRel),
            _ => 0,
        }
    }

    fn drain(&self, out: &mut Drained) {
        // A new epoch first: shapes seen from now on are queued again.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for (fi, entry) in self.snap.flags.iter().enumerate() {
            if let Some(info) = self.drain_flag(fi, entry) {
                out.flags.push(info);
            }
        }

        let mut per_cred: HashMap<usize, (HashSet<Vec<u8>>, Vec<SchemaInstance>)> = HashMap::new();
        while let Some((cred, s)) = self.schemas.pop() {
            let (seen, list) = per_cred.entry(cred).or_default();
            if seen.insert(schema::canonical_key(&s)) {
                if list.len() < MAX_SCHEMAS_PER_CREDENTIAL {
                    list.push(s);
                } else {
                    out.dropped_schemas += 1;
                }
            }
        }
        for (i, slot) in self.creds.iter().enumerate() {
            let Some((client, credential)) = slot.names.get() else { continue };
            let resolves = match slot.resolves.load(Ordering::Relaxed) {
                0 => 0,
                _ => slot.resolves.swap(0, Ordering::AcqRel),
            };
            let schemas = per_cred.remove(&i).map(|(_, l)| l).unwrap_or_default();
            if resolves > 0 {
                out.credential_resolves.push((credential.clone(), resolves));
            }
            if resolves > 0 || !schemas.is_empty() {
                out.clients.push(ClientResolveInfo {
                    client: client.clone(),
                    client_credential: credential.clone(),
                    schema: schemas,
                });
            }
        }
        out.dropped_schemas += self.dropped_schemas.swap(0, Ordering::AcqRel);
        out.unattributed += self.unattributed.swap(0, Ordering::AcqRel);
    }

    fn drain_flag(&self, fi: usize, entry: &FlagEntry) -> Option<FlagResolveInfo> {
        let base = *self.flag_base.get(fi)?;
        let mut variant_resolve_info = Vec::new();
        for k in 0..=entry.variants.len() {
            let count = self.take(base + k);
            if count > 0 {
                let variant = entry.variants.get(k).map(|v| v.name.clone()).unwrap_or_default();
                variant_resolve_info.push(VariantResolveInfo { variant, count: to_i64(count) });
            }
        }
        let first = *self.rule_first.get(fi)?;
        let end = *self.rule_first.get(fi + 1)?;
        let mut rule_resolve_info = Vec::new();
        for (ri, g) in (first..end).enumerate() {
            let (Some(&rb), Some(&width)) = (self.rule_base.get(g), self.rule_width.get(g)) else { continue };
            let rule = entry.proto.rules.get(ri);
            let count = self.take(rb);
            let mut assignment_resolve_info = Vec::new();
            for ai in 0..width {
                let c = self.take(rb + 1 + ai);
                if c > 0 {
                    let assignment_id = rule
                        .and_then(|r| r.assignment_spec.as_ref())
                        .and_then(|s| s.assignments.get(ai))
                        .map(|a| a.assignment_id.clone())
                        .unwrap_or_default();
                    assignment_resolve_info.push(AssignmentResolveInfo { assignment_id, count: to_i64(c) });
                }
            }
            if count > 0 || !assignment_resolve_info.is_empty() {
                rule_resolve_info.push(RuleResolveInfo {
                    rule: rule.map(|r| r.name.clone()).unwrap_or_default(),
                    count: to_i64(count),
                    assignment_resolve_info,
                });
            }
        }
        if variant_resolve_info.is_empty() && rule_resolve_info.is_empty() {
            return None;
        }
        Some(FlagResolveInfo { flag: entry.name().to_string(), variant_resolve_info, rule_resolve_info })
    }
}

fn to_i64(c: u64) -> i64 {
    i64::try_from(c).unwrap_or(i64::MAX)
}
