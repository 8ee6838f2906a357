//! A validated, indexed, immutable state: what one resolve reads. Built once
//! per state (never per request) and swapped whole, so a request sees one
//! consistent state from start to finish.

use super::bitset::{Bitset, BitsetError, DeferredBitset, BUCKETS};
use super::bloom::BloomFilter;
use super::formats::{self, StateFormat};
use super::sorted_json::{SortedStruct, SortedStructSchema};
use crate::proto::admin::{self, flag, resolver_state::packed_bitset};
use crate::proto::types::{flag_schema, FlagSchema};
use crate::proto::wkt::{value::Kind, Struct, Value};
use crate::targeting;
use std::collections::HashMap;
use std::fmt;

/// Confidence refuses requests that would resolve more flags than this.
pub const MAX_FLAGS_PER_RESOLVE: usize = 1000;

/// Everything wrong with a state, each naming the resource at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub problems: Vec<String>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "state rejected ({} problem{})",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// The caller's identity, found by client secret.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `clients/<id>`
    pub client: String,
    /// `clients/<id>/credentials/<id>`
    pub credential: String,
    pub environments: Vec<String>,
}

#[derive(Debug)]
pub struct VariantEntry {
    pub name: String,
    /// The value, with the schema fields it lacks filled with null, as
    /// JSON: written once here instead of on every resolve.
    pub value_json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentKind {
    Variant(usize),
    Fallthrough,
    ClientDefault,
    /// No oneof set: the rule falls through to the next one.
    Unset,
}

#[derive(Debug)]
pub struct RuleEntry {
    /// Second path component of the rule's segment (`segments/abc` → `abc`),
    /// the salt of the variant bucket.
    pub segment_id: String,
    /// One assignment covering every bucket: assigned without hashing.
    pub full_rollout: bool,
    pub bucket_count: u64,
    /// Parallel to the proto's assignments.
    pub assignments: Vec<AssignmentKind>,
}

#[derive(Debug)]
pub struct FlagEntry {
    pub proto: admin::Flag,
    pub active: bool,
    pub variants: Vec<VariantEntry>,
    /// Parallel to `proto.rules`.
    pub rules: Vec<RuleEntry>,
    /// The flag schema as JSON, when the flag has one.
    pub schema_json: Option<String>,
}

impl FlagEntry {
    pub fn name(&self) -> &str {
        &self.proto.name
    }
}

#[derive(Debug)]
pub struct SegmentEntry {
    pub proto: admin::Segment,
    bits: Bits,
}

#[derive(Debug)]
enum Bits {
    /// No bitset, or `full_bitset`: every bucket is allocated.
    All,
    Ready(Bitset),
    Deferred(DeferredBitset),
}

impl SegmentEntry {
    /// The allocation bitset; `None` when every bucket is allocated. A
    /// deferred bitset that fails to inflate allocates nothing (fail closed);
    /// it was validated before serving, so that takes corrupted memory.
    pub fn bitset(&self) -> Option<&Bitset> {
        match &self.bits {
            Bits::All => None,
            Bits::Ready(b) => Some(b),
            Bits::Deferred(d) => Some(d.get().unwrap_or(&UNREADABLE)),
        }
    }
}

static UNREADABLE: Bitset = Bitset::EMPTY;

/// When the gzipped segment bitsets are inflated and checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BitsetCheck {
    /// At load: every gzip header, CRC and size is checked before serving.
    #[default]
    Eager,
    /// On first read of each segment. Only for bytes that passed an eager
    /// load before (the build validates the embedded state that way).
    Deferred,
}

/// How [`Snapshot::load_with`] reads a state.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// `None` detects the format.
    pub format: Option<StateFormat>,
    /// Names the account when the format carries none.
    pub account: Option<&'a str>,
    /// The etag to report instead of hashing `bytes`: the build computes
    /// the embedded state's (that of the file it was converted from).
    pub etag: Option<&'a str>,
    pub bitsets: BitsetCheck,
}

/// Counts for `edgeflag validate` and the load log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes: usize,
    pub flags: usize,
    pub active_flags: usize,
    pub segments: usize,
    pub bitsets: usize,
    pub full_bitsets: usize,
    pub bloom_filters: usize,
    pub clients: usize,
    pub credentials: usize,
}

#[derive(Debug)]
pub struct Snapshot {
    pub account_id: String,
    /// `MegaSalt-<account>`: salts segment-bitset buckets.
    pub bitset_salt: String,
    pub flags: Vec<FlagEntry>,
    flag_index: HashMap<String, usize>,
    pub segments: HashMap<String, SegmentEntry>,
    pub bloom_filters: HashMap<String, BloomFilter>,
    credentials: HashMap<String, Credential>,
    /// Active flags per client name, in state order: "resolve all".
    client_flags: HashMap<String, Vec<usize>>,
    pub log_destinations: Vec<i32>,
    /// Identifies the exact bytes this snapshot was built from.
    pub etag: String,
    pub format: StateFormat,
    pub stats: Stats,
    /// Oddities that do not stop the state from serving correctly.
    pub warnings: Vec<String>,
    /// Where the serving isolate got it (`kv`, `embedded`, ...); set by
    /// the loader, empty until then.
    pub source: String,
    /// When it was installed (epoch ms; 0 until then).
    pub loaded_at_ms: u64,
}

impl Snapshot {
    /// Decodes, validates and indexes a state in any accepted format.
    /// `account` names the account when the format carries none.
    pub fn load(bytes: &[u8], format: Option<StateFormat>, account: Option<&str>) -> Result<Snapshot, LoadError> {
        Self::load_with(bytes, LoadOptions { format, account, ..LoadOptions::default() })
    }

    pub fn load_with(bytes: &[u8], opts: LoadOptions<'_>) -> Result<Snapshot, LoadError> {
        Self::from_decoded(formats::decode(bytes, opts.format), bytes, opts)
    }

    /// As [`Snapshot::load_with`], borrowing byte fields from `bytes`
    /// instead of copying them.
    pub fn load_static(bytes: &'static [u8], opts: LoadOptions<'_>) -> Result<Snapshot, LoadError> {
        Self::from_decoded(formats::decode_static(bytes, opts.format), bytes, opts)
    }

    fn from_decoded(
        decoded: Result<formats::DecodedState, formats::FormatError>,
        bytes: &[u8],
        opts: LoadOptions<'_>,
    ) -> Result<Snapshot, LoadError> {
        let decoded = decoded.map_err(|e| LoadError { problems: vec![e.to_string()] })?;
        let account_id = match (opts.account, decoded.account_id.as_deref()) {
            (Some(a), _) => formats::normalize_account(a),
            (None, Some(a)) => a.to_string(),
            (None, None) => {
                return Err(LoadError {
                    problems: vec![format!(
                        "no account: the {} format does not carry one, so name it (--account / EDGEFLAG_ACCOUNT)",
                        decoded.format
                    )],
                })
            }
        };
        let mut snap = Snapshot::compile_with(decoded.state, &account_id, decoded.log_destinations, opts.bitsets)?;
        snap.etag = opts.etag.map_or_else(|| etag_of(bytes), str::to_string);
        snap.format = decoded.format;
        snap.stats.bytes = bytes.len();
        Ok(snap)
    }

    /// Validates and indexes a decoded state.
    pub fn compile(
        state: admin::ResolverState,
        account_id: &str,
        log_destinations: Vec<i32>,
    ) -> Result<Snapshot, LoadError> {
        Self::compile_with(state, account_id, log_destinations, BitsetCheck::Eager)
    }

    pub fn compile_with(
        state: admin::ResolverState,
        account_id: &str,
        log_destinations: Vec<i32>,
        check: BitsetCheck,
    ) -> Result<Snapshot, LoadError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let account_id = formats::normalize_account(account_id);
        if account_id.is_empty() {
            problems.push("account id is empty".to_string());
        }
        let mut stats = Stats::default();

        // Segments and their bitsets.
        let mut segments: HashMap<String, SegmentEntry> = HashMap::with_capacity(state.segments_no_bitsets.len());
        for seg in state.segments_no_bitsets {
            if segments.contains_key(&seg.name) {
                problems.push(format!("segment {}: defined twice", seg.name));
                continue;
            }
            segments.insert(seg.name.clone(), SegmentEntry { proto: seg, bits: Bits::All });
        }
        stats.segments = segments.len();
        problems.extend(too_deep_segments(&segments));
        for packed in state.bitsets {
            let name = packed.segment;
            let (bits, len_bits) = match packed.bitset {
                None => continue,
                Some(packed_bitset::Bitset::FullBitset(true)) => {
                    stats.full_bitsets += 1;
                    continue;
                }
                Some(packed_bitset::Bitset::FullBitset(false)) => {
                    problems.push(format!("bitset of {name}: full_bitset=false carries no bits"));
                    continue;
                }
                Some(packed_bitset::Bitset::GzippedBitset(data)) if check == BitsetCheck::Deferred => {
                    let d = DeferredBitset::new(data);
                    let len = d.declared_len_bits().unwrap_or(0);
                    (Bits::Deferred(d), len)
                }
                Some(packed_bitset::Bitset::GzippedBitset(data)) => match Bitset::from_gzip(&data) {
                    Ok(b) => {
                        let len = b.len_bits();
                        (Bits::Ready(b), len)
                    }
                    Err(e) => {
                        problems.push(format!("bitset of {name}: {e}"));
                        continue;
                    }
                },
            };
            stats.bitsets += 1;
            if len_bits < BUCKETS {
                warnings.push(format!(
                    "bitset of {name}: {len_bits} bits, fewer than {BUCKETS}; units beyond it never match"
                ));
            }
            match segments.get_mut(&name) {
                Some(seg) if !matches!(seg.bits, Bits::All) => problems.push(format!("bitset of {name}: given twice")),
                Some(seg) => seg.bits = bits,
                None => warnings.push(format!("bitset of {name}: no such segment; ignored")),
            }
        }

        // Bloom filters of materialized segments.
        let mut bloom_filters = HashMap::new();
        for bf in &state.bloom_filters {
            match BloomFilter::from_proto(bf) {
                Ok(f) => {
                    if bloom_filters.insert(bf.materialized_segment.clone(), f).is_some() {
                        problems.push(format!("bloom filter of {}: given twice", bf.materialized_segment));
                    }
                }
                Err(e) => problems.push(format!("bloom filter of {}: {e}", bf.materialized_segment)),
            }
        }
        stats.bloom_filters = bloom_filters.len();

        // Credentials by secret. A credential belongs to the client whose
        // name is its path prefix (`clients/a/credentials/x` → `clients/a`).
        let mut credentials: HashMap<String, Credential> = HashMap::new();
        stats.clients = state.clients.len();
        for cred in &state.client_credentials {
            let Some(admin_cred) = cred.credential.as_ref() else {
                continue;
            };
            let crate::proto::iam::client_credential::Credential::ClientSecret(secret) = admin_cred;
            let Some(client) = state.clients.iter().find(|c| {
                !c.name.is_empty() && cred.name.strip_prefix(c.name.as_str()).is_some_and(|r| r.starts_with('/'))
            }) else {
                warnings.push(format!("credential {}: no client in the state owns it; ignored", cred.name));
                continue;
            };
            if secret.secret.is_empty() {
                problems.push(format!("credential {}: empty client secret", cred.name));
                continue;
            }
            stats.credentials += 1;
            let entry = Credential {
                client: client.name.clone(),
                credential: cred.name.clone(),
                environments: cred.environments.clone(),
            };
            if let Some(prev) = credentials.insert(secret.secret.clone(), entry) {
                problems.push(format!(
                    "credential {}: shares its secret with {}, so requests could not tell them apart",
                    cred.name, prev.credential
                ));
            }
        }

        // Flags.
        let mut flags = Vec::with_capacity(state.flags.len());
        let mut flag_index = HashMap::with_capacity(state.flags.len());
        for proto in state.flags {
            if flag_index.contains_key(&proto.name) {
                problems.push(format!("{}: defined twice", proto.name));
                continue;
            }
            match compile_flag(proto, &segments, &mut warnings) {
                Ok(entry) => {
                    flag_index.insert(entry.proto.name.clone(), flags.len());
                    flags.push(entry);
                }
                Err(mut errs) => problems.append(&mut errs),
            }
        }
        stats.flags = flags.len();
        stats.active_flags = flags.iter().filter(|f| f.active).count();

        let mut client_flags: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, f) in flags.iter().enumerate() {
            if !f.active {
                continue;
            }
            for c in &f.proto.clients {
                let list = client_flags.entry(c.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }

        if !problems.is_empty() {
            return Err(LoadError { problems });
        }
        Ok(Snapshot {
            bitset_salt: format!("MegaSalt-{account_id}"),
            account_id,
            flags,
            flag_index,
            segments,
            bloom_filters,
            credentials,
            client_flags,
            log_destinations,
            etag: String::new(),
            format: StateFormat::Protobuf,
            stats,
            warnings,
            source: String::new(),
            loaded_at_ms: 0,
        })
    }

    /// Deferred bitsets that failed to inflate when read, by segment: for
    /// readiness reporting (they allocate nothing meanwhile).
    pub fn bitset_failures(&self) -> Vec<(&str, &BitsetError)> {
        let mut out: Vec<_> = self
            .segments
            .iter()
            .filter_map(|(name, seg)| match &seg.bits {
                Bits::Deferred(d) => d.failure().map(|e| (name.as_str(), e)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(name, _)| *name);
        out
    }

    pub fn credential(&self, secret: &str) -> Option<&Credential> {
        self.credentials.get(secret)
    }

    /// All client secrets, for authenticating callers of operator routes.
    pub fn has_secret(&self, secret: &str) -> bool {
        self.credentials.contains_key(secret)
    }

    pub fn flag(&self, name: &str) -> Option<&FlagEntry> {
        self.flag_index.get(name).and_then(|&i| self.flags.get(i))
    }

    pub(crate) fn flag_index(&self, name: &str) -> Option<usize> {
        self.flag_index.get(name).copied()
    }

    pub(crate) fn client_flag_indices(&self, client: &str) -> &[usize] {
        self.client_flags.get(client).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// 128-bit MurmurHash3 of the state bytes, hex: an identity, not a MAC.
pub fn etag_of(bytes: &[u8]) -> String {
    format!("{:032x}", fastmurmur3::murmur3_x64_128(bytes, 0))
}

fn compile_flag(
    mut proto: admin::Flag,
    segments: &HashMap<String, SegmentEntry>,
    warnings: &mut Vec<String>,
) -> Result<FlagEntry, Vec<String>> {
    let mut problems = Vec::new();
    let name = proto.name.clone();
    if name.is_empty() {
        return Err(vec!["a flag has no name".to_string()]);
    }
    let schema = proto.schema.as_ref();
    if schema.is_some_and(schema_too_deep) {
        return Err(vec![format!("{name}: schema nests deeper than {MAX_VALUE_DEPTH} levels")]);
    }
    let mut variants = Vec::with_capacity(proto.variants.len());
    for v in &mut proto.variants {
        if variants.iter().any(|e: &VariantEntry| e.name == v.name) {
            problems.push(format!("{name}: variant {} defined twice", v.name));
            continue;
        }
        // Filled in place: the proto's value becomes the value served.
        let value = v.value.get_or_insert_with(Struct::default);
        // Bounded before the recursive null fill and JSON writers see it.
        if crate::proto::struct_nests_deeper_than(value, MAX_VALUE_DEPTH) {
            problems.push(format!("{name}: variant {} value nests deeper than {MAX_VALUE_DEPTH} levels", v.name));
            continue;
        }
        if let Some(s) = schema {
            null_fill(value, s, 0);
        }
        let value_json = match serde_json::to_string(&SortedStruct(value)) {
            Ok(j) => j,
            Err(e) => {
                problems.push(format!("{name}: variant {} value cannot be written as JSON: {e}", v.name));
                continue;
            }
        };
        variants.push(VariantEntry { name: v.name.clone(), value_json });
    }
    let schema_json = match schema {
        Some(s) => match serde_json::to_string(&SortedStructSchema(s)) {
            Ok(j) => Some(j),
            Err(e) => {
                problems.push(format!("{name}: schema cannot be written as JSON: {e}"));
                None
            }
        },
        None => None,
    };

    let mut rules = Vec::with_capacity(proto.rules.len());
    for rule in &proto.rules {
        let rname = if rule.name.is_empty() { "(unnamed rule)" } else { rule.name.as_str() };
        if !rule.segment.is_empty() && !segments.contains_key(&rule.segment) {
            warnings.push(format!("{rname}: segment {} is not in the state; the rule never matches", rule.segment));
        }
        let spec = rule.assignment_spec.as_ref();
        let bucket_count = spec.map(|s| s.bucket_count).unwrap_or(0);
        let mut assignments = Vec::new();
        if let Some(spec) = spec {
            if bucket_count <= 0 && !spec.assignments.is_empty() {
                problems.push(format!("{rname}: bucket count {bucket_count} must be positive"));
            }
            for a in &spec.assignments {
                let kind = match &a.assignment {
                    None => AssignmentKind::Unset,
                    Some(flag::rule::assignment::Assignment::Fallthrough(_)) => AssignmentKind::Fallthrough,
                    Some(flag::rule::assignment::Assignment::ClientDefault(_)) => AssignmentKind::ClientDefault,
                    Some(flag::rule::assignment::Assignment::Variant(va)) => {
                        match variants.iter().position(|v| v.name == va.variant) {
                            Some(i) => AssignmentKind::Variant(i),
                            None => {
                                problems.push(format!(
                                    "{rname}: assignment {} names variant {:?}, which {name} does not have",
                                    a.assignment_id, va.variant
                                ));
                                AssignmentKind::Unset
                            }
                        }
                    }
                };
                assignments.push(kind);
            }
        }
        // Exactly one assignment with exactly one range covering every bucket.
        let full_rollout = spec.is_some_and(|s| match (s.assignments.as_slice(), s.assignments.first()) {
            ([_], Some(a)) => match a.bucket_ranges.as_slice() {
                [r] => r.lower == 0 && r.upper == s.bucket_count,
                _ => false,
            },
            _ => false,
        });
        rules.push(RuleEntry {
            segment_id: rule.segment.split('/').nth(1).unwrap_or("").to_string(),
            full_rollout,
            bucket_count: bucket_count.max(0) as u64,
            assignments,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(FlagEntry { active: proto.state == flag::State::Active as i32, proto, variants, rules, schema_json })
}

/// Segments whose targeting nests deeper than [`targeting::MAX_DEPTH`],
/// counting through the segments they reference, as load problems. A
/// reference back onto the current chain is a cycle, which evaluates as a
/// non-match and adds nothing. The walk over references is itself bounded:
/// a chain of more than `MAX_DEPTH` references is too deep whatever its
/// expressions are, so it stops there.
fn too_deep_segments(segments: &HashMap<String, SegmentEntry>) -> Vec<String> {
    struct Walk<'a> {
        segments: &'a HashMap<String, SegmentEntry>,
        memo: HashMap<&'a str, usize>,
        chain: Vec<&'a str>,
        /// Set when the walk stopped at the bound: the root is too deep, and
        /// nothing measured since is exact, so nothing more is memoized.
        overflow: bool,
    }
    impl<'a> Walk<'a> {
        fn depth(&mut self, name: &'a str) -> usize {
            if self.overflow {
                return 0;
            }
            if let Some(&d) = self.memo.get(name) {
                return d;
            }
            let segments = self.segments;
            let Some(t) = segments.get(name).and_then(|s| s.proto.targeting.as_ref()) else {
                return 0;
            };
            let Some(expr) = t.expression.as_ref() else { return 0 };
            if self.chain.contains(&name) {
                return 0;
            }
            if self.chain.len() > targeting::MAX_DEPTH {
                self.overflow = true;
                return 0;
            }
            self.chain.push(name);
            let d =
                targeting::nesting_depth(expr, &t.criteria, &mut |child: &str| match segments.get_key_value(child) {
                    Some((key, _)) => self.depth(key.as_str()),
                    None => 0,
                });
            self.chain.pop();
            if !self.overflow {
                self.memo.insert(name, d);
            }
            d
        }
    }
    let mut walk = Walk { segments, memo: HashMap::new(), chain: Vec::new(), overflow: false };
    let mut names: Vec<&str> = segments.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
        .into_iter()
        .filter_map(|name| {
            let d = walk.depth(name);
            let too_deep = std::mem::take(&mut walk.overflow) || d > targeting::MAX_DEPTH;
            too_deep.then(|| {
                format!(
                    "segment {name}: targeting nests deeper than {} levels, counting the segments it references",
                    targeting::MAX_DEPTH
                )
            })
        })
        .collect()
}

/// Deepest variant value or flag schema a state may carry, in levels of
/// structs and lists (the value itself is level 1). Decoding already caps
/// nesting (prost at 100 messages, serde_json at 128); this is the
/// resolver's own, stated bound for its recursive null fill and JSON writers.
pub const MAX_VALUE_DEPTH: usize = 64;

/// Whether a flag schema nests deeper than [`MAX_VALUE_DEPTH`]; iterative.
fn schema_too_deep(schema: &flag_schema::StructFlagSchema) -> bool {
    use flag_schema::SchemaType;
    let mut stack: Vec<(&FlagSchema, usize)> = schema.schema.values().map(|f| (f, 2)).collect();
    while let Some((f, depth)) = stack.pop() {
        match f.schema_type.as_ref() {
            Some(SchemaType::StructSchema(s)) => {
                if depth > MAX_VALUE_DEPTH {
                    return true;
                }
                stack.extend(s.schema.values().map(|c| (c, depth.saturating_add(1))));
            }
            Some(SchemaType::ListSchema(l)) => {
                if depth > MAX_VALUE_DEPTH {
                    return true;
                }
                if let Some(e) = l.element_schema.as_deref() {
                    stack.push((e, depth.saturating_add(1)));
                }
            }
            _ => {}
        }
    }
    false
}

/// Adds `null` for every schema field the value lacks, recursing into
/// nested struct fields (not into lists).
fn null_fill(value: &mut Struct, schema: &flag_schema::StructFlagSchema, depth: usize) {
    // Never reached on a loaded state: values and schemas are bounded first.
    if depth > MAX_VALUE_DEPTH {
        return;
    }
    for (key, field) in &schema.schema {
        match value.fields.get_mut(key) {
            None => {
                value.fields.insert(key.clone(), Value { kind: Some(Kind::NullValue(0)) });
            }
            Some(Value { kind: Some(Kind::StructValue(inner)) }) => {
                if let Some(FlagSchema { schema_type: Some(flag_schema::SchemaType::StructSchema(s)) }) = Some(field) {
                    null_fill(inner, s, depth + 1);
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::admin::resolver_state::PackedBitset;

    #[test]
    fn variant_values_and_schemas_are_served_with_sorted_keys() {
        // Protobuf maps iterate in a random order per map, so an unsorted
        // write of 24 keys would come out sorted by chance almost never.
        let keys: Vec<String> = (0..24).map(|i| format!("k{:02}", (i * 7) % 24)).collect();
        let mut value = Struct::default();
        let mut schema = flag_schema::StructFlagSchema::default();
        for k in &keys {
            value.fields.insert(k.clone(), Value { kind: Some(Kind::BoolValue(true)) });
            let bool_schema = flag_schema::SchemaType::BoolSchema(flag_schema::BoolFlagSchema {});
            schema.schema.insert(k.clone(), FlagSchema { schema_type: Some(bool_schema) });
        }
        let mut state = admin::ResolverState::default();
        state.flags.push(admin::Flag {
            name: "flags/f".into(),
            state: admin::flag::State::Active as i32,
            variants: vec![admin::flag::Variant {
                name: "flags/f/variants/v".into(),
                value: Some(value),
                ..Default::default()
            }],
            schema: Some(schema),
            ..Default::default()
        });
        let bytes = formats::encode_envelope(&state, "acme", &[]);
        let snap = Snapshot::load(&bytes, None, None).unwrap();
        let mut sorted = keys.clone();
        sorted.sort();
        let order = |json: &str| -> Vec<String> {
            let mut found: Vec<(usize, String)> =
                keys.iter().map(|k| (json.find(&format!("\"{k}\"")).expect("key written"), k.clone())).collect();
            found.sort();
            found.into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!(order(&snap.flags[0].variants[0].value_json), sorted);
        assert_eq!(order(snap.flags[0].schema_json.as_deref().unwrap()), sorted);
    }

    #[test]
    fn a_schema_past_the_value_depth_bound_is_detected_without_recursing() {
        use flag_schema::{SchemaType, StructFlagSchema};
        // `levels` of struct schemas, the outermost being level 1.
        let nested = |levels: usize| {
            let mut s = StructFlagSchema::default();
            for _ in 1..levels {
                let field = FlagSchema { schema_type: Some(SchemaType::StructSchema(s)) };
                s = StructFlagSchema { schema: [("n".to_string(), field)].into_iter().collect() };
            }
            s
        };
        assert!(!schema_too_deep(&nested(MAX_VALUE_DEPTH)));
        assert!(schema_too_deep(&nested(MAX_VALUE_DEPTH + 1)));
        let far = nested(10_000);
        assert!(schema_too_deep(&far));
        // Dropping 10k nested maps recurses in Drop; not what is under test.
        std::mem::forget(far);
    }

    /// Three segments: a sparse and a dense bitset, one short of BUCKETS.
    fn state_with_bitsets(gzip_of_b: Option<Vec<u8>>) -> (admin::ResolverState, Vec<Bitset>) {
        let bits = vec![
            Bitset::from_set_bits(BUCKETS, (0..BUCKETS).step_by(7919)).unwrap(),
            Bitset::from_set_bits(BUCKETS, (0..BUCKETS).filter(|i| i % 3 != 0)).unwrap(),
            Bitset::from_set_bits(800, [1, 799]).unwrap(),
        ];
        let mut state = admin::ResolverState::default();
        for (i, b) in bits.iter().enumerate() {
            let name = format!("segments/s{i}");
            state.segments_no_bitsets.push(admin::Segment { name: name.clone(), ..Default::default() });
            let gz = match (i, &gzip_of_b) {
                (1, Some(z)) => z.clone(),
                _ => b.to_gzip(),
            };
            state
                .bitsets
                .push(PackedBitset { segment: name, bitset: Some(packed_bitset::Bitset::GzippedBitset(gz.into())) });
        }
        (state, bits)
    }

    #[test]
    fn deferred_bitsets_read_the_same_bits_as_eager_ones() {
        let (state, bits) = state_with_bitsets(None);
        let bytes = formats::encode_envelope(&state, "acme", &[]);
        let eager = Snapshot::load(&bytes, None, None).unwrap();
        let opts = LoadOptions { bitsets: BitsetCheck::Deferred, ..LoadOptions::default() };
        let deferred = Snapshot::load_with(&bytes, opts).unwrap();
        assert_eq!(eager.stats, deferred.stats);
        assert_eq!(eager.warnings, deferred.warnings, "the short bitset is reported from the gzip trailer");
        assert_eq!(eager.warnings.len(), 1);
        assert_eq!(eager.etag, deferred.etag);
        for (i, want) in bits.iter().enumerate() {
            let name = format!("segments/s{i}");
            assert_eq!(eager.segments[&name].bitset(), Some(want));
            assert!(matches!(deferred.segments[&name].bits, Bits::Deferred(_)));
            assert_eq!(deferred.segments[&name].bitset(), Some(want), "{name}");
        }
        assert!(deferred.bitset_failures().is_empty());
    }

    #[test]
    fn a_deferred_bitset_that_fails_to_inflate_allocates_nothing_and_is_reported() {
        let (good, _) = state_with_bitsets(None);
        let Some(packed_bitset::Bitset::GzippedBitset(z)) = &good.bitsets[1].bitset else { panic!("gzipped") };
        let mut z = z.to_vec();
        let mid = z.len() / 2;
        z[mid] ^= 0x55;
        let (state, _) = state_with_bitsets(Some(z));
        let bytes = formats::encode_pb(&state);
        let eager = Snapshot::load(&bytes, None, Some("acme")).unwrap_err();
        assert!(eager.problems.iter().any(|p| p.starts_with("bitset of segments/s1:")), "{eager}");

        let opts = LoadOptions { account: Some("acme"), bitsets: BitsetCheck::Deferred, ..LoadOptions::default() };
        let snap = Snapshot::load_with(&bytes, opts).unwrap();
        let seg = &snap.segments["segments/s1"];
        let b = seg.bitset().expect("a bitset, not 'every bucket'");
        assert!(!b.all_set() && (0..BUCKETS).step_by(997).all(|i| !b.get(i)), "fails closed");
        let failures = snap.bitset_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "segments/s1");
    }

    #[test]
    fn a_known_etag_is_used_as_given() {
        let (state, _) = state_with_bitsets(None);
        let bytes = formats::encode_envelope(&state, "acme", &[]);
        let opts = LoadOptions { etag: Some("0123"), ..LoadOptions::default() };
        assert_eq!(Snapshot::load_with(&bytes, opts).unwrap().etag, "0123");
        assert_eq!(Snapshot::load(&bytes, None, None).unwrap().etag, etag_of(&bytes));
    }
}
