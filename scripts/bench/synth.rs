//! Deterministic synthetic resolver states for benchmarks.
//!
//! Shared by `examples/gen_state.rs` (writes a state to disk) and
//! `benches/resolve.rs` (builds one in memory); both pull it in with
//! `#[path]`, so it uses only the crate's public API. The same `Config`
//! always yields the same bytes: the only randomness is a seeded xorshift.
//!
//! Shape, chosen to resemble a busy production account:
//! - segments: 1–3 attribute criteria (eq/set/range/version/contains/
//!   starts-with/any/bool) combined with and/or/not, some also referencing
//!   an earlier segment (so references never form a cycle); every one with
//!   a full 1,000,000-bit gzipped bitset, about half the bits set, mostly
//!   noise with some solid runs, so each compresses to roughly 120 KB like
//!   real allocation bitsets;
//! - flags: a struct schema, 2–4 variants with struct values, 1–4 rules on
//!   random segments, bucket counts of 1,000,000 or 100 with several ranges
//!   per assignment, some full rollouts, fallthrough and client-default
//!   assignments, environment restrictions, disabled rules and archived flags;
//! - clients `clients/bench-client-<c>`, one credential each with secret
//!   `bench-secret-<c>` in environment `production`.

// Each includer uses a different subset.
#![allow(dead_code)]

use edgeflag::proto::admin::resolver_state::{packed_bitset, PackedBitset};
use edgeflag::proto::admin::{flag, Flag, ResolverState, Segment};
use edgeflag::proto::iam::{client_credential, Client, ClientCredential};
use edgeflag::proto::types::targeting::{self, criterion, Criterion};
use edgeflag::proto::types::{expression, flag_schema, Expression, FlagSchema, Targeting};
use edgeflag::proto::wkt::{value::Kind, ListValue, Struct, Value};
use edgeflag::resolve::DEFAULT_SELECTOR;
use edgeflag::state::bitset::{Bitset, BUCKETS};
use edgeflag::state::snapshot::MAX_FLAGS_PER_RESOLVE;
use prost::Message;

/// Account the synthetic state belongs to; the pb format does not carry it.
pub const ACCOUNT: &str = "bench-account";
pub const ENVIRONMENT: &str = "production";
pub const DEFAULT_SEED: u64 = 0x5EED_F1A6;

const COUNTRIES: [&str; 12] = ["SE", "US", "GB", "DE", "FR", "BR", "JP", "IN", "NO", "DK", "ES", "MX"];
const PLATFORMS: [&str; 4] = ["ios", "android", "web", "desktop"];
const PLANS: [&str; 4] = ["free", "premium", "family", "student"];
const TAGS: [&str; 6] = ["beta", "employee", "tester", "early-adopter", "vip", "churn-risk"];
const LOCALES: [&str; 6] = ["en-US", "en-GB", "sv-SE", "de-DE", "pt-BR", "ja-JP"];
const VARIANTS: [&str; 4] = ["control", "treatment", "treatment-b", "treatment-c"];

#[derive(Debug, Clone)]
pub struct Config {
    pub flags: usize,
    pub segments: usize,
    pub clients: usize,
    /// Keep adding segments and flags until the pb encoding is at least
    /// this long (0: no padding).
    pub target_bytes: usize,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { flags: 1000, segments: 200, clients: 5, target_bytes: 0, seed: DEFAULT_SEED }
    }
}

/// xorshift64*: tiny, fast, and plenty for picking shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // The state must never be zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }
}

pub fn secret(c: usize) -> String {
    format!("bench-secret-{c}")
}

pub fn client_name(c: usize) -> String {
    format!("clients/bench-client-{c}")
}

pub fn flag_name(i: usize) -> String {
    format!("flags/bench-flag-{i:05}")
}

pub fn segment_name(i: usize) -> String {
    format!("segments/bench-seg-{i:05}")
}

/// What `generate` built, for the generator's summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub flags: usize,
    pub segments: usize,
    pub padded_flags: usize,
    pub padded_segments: usize,
    pub gzipped_bitset_bytes: usize,
    /// Active flags per client, by client index.
    pub flags_per_client: Vec<usize>,
}

struct Builder {
    rng: Rng,
    state: ResolverState,
    summary: Summary,
    clients: usize,
}

pub fn generate(cfg: &Config) -> (ResolverState, Summary) {
    assert!(cfg.segments > 0 || cfg.target_bytes > 0, "rules need at least one segment");
    assert!(cfg.clients > 0, "at least one client");
    let mut b = Builder {
        rng: Rng::new(cfg.seed),
        state: ResolverState::default(),
        summary: Summary { flags_per_client: vec![0; cfg.clients], ..Summary::default() },
        clients: cfg.clients,
    };
    for c in 0..cfg.clients {
        b.add_client(c);
    }
    for _ in 0..cfg.segments {
        b.add_segment();
    }
    if b.state.segments_no_bitsets.is_empty() {
        b.add_segment();
        b.summary.padded_segments += 1;
    }
    for _ in 0..cfg.flags {
        b.add_flag();
    }
    // Padding: a segment (about 120 KB of bitset) and a few flags per step;
    // encoded_len walks the tree without encoding it, so this stays cheap.
    while b.state.encoded_len() < cfg.target_bytes {
        b.add_segment();
        b.summary.padded_segments += 1;
        for _ in 0..5 {
            b.add_flag();
            b.summary.padded_flags += 1;
        }
    }
    b.summary.flags = b.state.flags.len();
    b.summary.segments = b.state.segments_no_bitsets.len();
    (b.state, b.summary)
}

impl Builder {
    fn add_client(&mut self, c: usize) {
        let name = client_name(c);
        self.state.clients.push(Client {
            name: name.clone(),
            display_name: format!("Bench client {c}"),
            ..Default::default()
        });
        self.state.client_credentials.push(ClientCredential {
            name: format!("{name}/credentials/cred-0"),
            display_name: format!("Bench credential {c}"),
            credential: Some(client_credential::Credential::ClientSecret(client_credential::ClientSecret {
                secret: secret(c),
            })),
            environments: vec![ENVIRONMENT.to_string()],
            ..Default::default()
        });
    }

    fn add_segment(&mut self) {
        let i = self.state.segments_no_bitsets.len();
        let name = segment_name(i);
        let targeting = self.targeting(i);
        self.state.segments_no_bitsets.push(Segment {
            name: name.clone(),
            targeting,
            display_name: format!("Bench segment {i}"),
            state: 2, // ALLOCATED
            ..Default::default()
        });
        let gz = self.bitset().to_gzip();
        self.summary.gzipped_bitset_bytes += gz.len();
        self.state
            .bitsets
            .push(PackedBitset { segment: name, bitset: Some(packed_bitset::Bitset::GzippedBitset(gz.into())) });
    }

    /// About half the bits set: mostly noise (gzip cannot shrink it) with
    /// a few solid 1,024-bit runs, like a real allocation after exclusivity.
    fn bitset(&mut self) -> Bitset {
        let mut bytes = vec![0u8; BUCKETS / 8];
        for chunk in bytes.chunks_mut(128) {
            match self.rng.below(100) {
                0..=1 => chunk.fill(0xFF),
                2..=3 => chunk.fill(0),
                _ => {
                    for pair in chunk.chunks_mut(8) {
                        let r = self.rng.next_u64().to_le_bytes();
                        pair.copy_from_slice(&r[..pair.len()]);
                    }
                }
            }
        }
        let set = (0..BUCKETS).filter(|&i| (bytes[i / 8] >> (i % 8)) & 1 == 1);
        Bitset::from_set_bits(BUCKETS, set).expect("indices are below BUCKETS")
    }

    /// `None` (everyone) for some segments; otherwise 1–3 criteria.
    fn targeting(&mut self, seg_index: usize) -> Option<Targeting> {
        if self.rng.chance(8) {
            return None;
        }
        let mut t = Targeting::default();
        let n = 1 + self.rng.index(3);
        let mut refs = Vec::with_capacity(n + 1);
        for k in 0..n {
            let key = format!("c{k}");
            t.criteria.insert(key.clone(), self.attribute_criterion());
            refs.push(key);
        }
        // Nested reference to an earlier segment only: no cycles possible.
        if seg_index > 0 && self.rng.chance(20) {
            let target = segment_name(self.rng.index(seg_index));
            let key = "parent".to_string();
            t.criteria.insert(
                key.clone(),
                Criterion {
                    criterion: Some(criterion::Criterion::Segment(criterion::SegmentCriterion { segment: target })),
                },
            );
            refs.push(key);
        }
        let leaf = |r: &String| Expression { expression: Some(expression::Expression::Ref(r.clone())) };
        let mut operands: Vec<Expression> = refs.iter().map(leaf).collect();
        if operands.len() > 1 && self.rng.chance(15) {
            let last = operands.pop().expect("len > 1");
            operands.push(Expression { expression: Some(expression::Expression::Not(Box::new(last))) });
        }
        t.expression = Some(if operands.len() == 1 {
            operands.pop().expect("one operand")
        } else if self.rng.chance(70) {
            Expression { expression: Some(expression::Expression::And(expression::Operands { operands })) }
        } else {
            Expression { expression: Some(expression::Expression::Or(expression::Operands { operands })) }
        });
        Some(t)
    }

    fn attribute_criterion(&mut self) -> Criterion {
        use criterion::attribute_criterion::Rule;
        let (attribute, rule) = match self.rng.below(9) {
            0 => ("country", Rule::EqRule(targeting::EqRule { value: Some(tstr(self.rng.pick(&COUNTRIES))) })),
            1 => {
                let n = 2 + self.rng.index(5);
                let values = (0..n).map(|_| tstr(self.rng.pick(&COUNTRIES))).collect();
                ("country", Rule::SetRule(targeting::SetRule { values }))
            }
            2 => {
                let lo = 13 + self.rng.below(30) as i32;
                let hi = lo + 10 + self.rng.below(40) as i32;
                let range = targeting::RangeRule {
                    start: Some(targeting::range_rule::Start::StartInclusive(tnum(lo as f64))),
                    end: Some(targeting::range_rule::End::EndExclusive(tnum(hi as f64))),
                };
                ("age", Rule::RangeRule(range))
            }
            3 => {
                let v = format!("{}.{}.0", 3 + self.rng.below(4), self.rng.below(10));
                let range = targeting::RangeRule {
                    start: Some(targeting::range_rule::Start::StartInclusive(tversion(&v))),
                    end: None,
                };
                ("app.version", Rule::RangeRule(range))
            }
            4 => ("email", Rule::ContainsRule(targeting::ContainsRule { value: "@example.".to_string() })),
            5 => {
                let prefix = &self.rng.pick(&LOCALES)[..2];
                ("locale", Rule::StartsWithRule(targeting::StartsWithRule { value: prefix.to_string() }))
            }
            6 => {
                let inner = targeting::InnerRule {
                    rule: Some(targeting::inner_rule::Rule::EqRule(targeting::EqRule {
                        value: Some(tstr(self.rng.pick(&TAGS))),
                    })),
                };
                ("tags", Rule::AnyRule(targeting::AnyRule { rule: Some(inner) }))
            }
            7 => ("premium", Rule::EqRule(targeting::EqRule { value: Some(tbool(self.rng.chance(50))) })),
            _ => {
                let n = 1 + self.rng.index(3);
                let values = (0..n).map(|_| tstr(self.rng.pick(&PLATFORMS))).collect();
                ("app.platform", Rule::SetRule(targeting::SetRule { values }))
            }
        };
        Criterion {
            criterion: Some(criterion::Criterion::Attribute(criterion::AttributeCriterion {
                attribute_name: attribute.to_string(),
                rule: Some(rule),
            })),
        }
    }

    fn add_flag(&mut self) {
        let i = self.state.flags.len();
        let name = flag_name(i);
        let n_variants = 2 + self.rng.index(3);
        let variants: Vec<flag::Variant> = (0..n_variants)
            .map(|v| flag::Variant {
                name: format!("{name}/variants/{}", VARIANTS[v]),
                value: Some(self.variant_value(v)),
                description: format!("{} arm", VARIANTS[v]),
                ..Default::default()
            })
            .collect();
        let n_rules = 1 + self.rng.index(4);
        let rules = (0..n_rules).map(|r| self.rule(&name, r, &variants)).collect();

        let active = !self.rng.chance(3);
        let mut clients = Vec::new();
        for c in 0..self.clients {
            if self.rng.chance(60) && self.summary.flags_per_client[c] < MAX_FLAGS_PER_RESOLVE {
                clients.push(c);
            }
        }
        // Every flag is visible to someone, while "resolve all" for any one
        // client stays under the per-request limit.
        if clients.is_empty() {
            if let Some(c) = (0..self.clients)
                .map(|k| (i + k) % self.clients)
                .find(|&c| self.summary.flags_per_client[c] < MAX_FLAGS_PER_RESOLVE)
            {
                clients.push(c);
            }
        }
        if active {
            for &c in &clients {
                self.summary.flags_per_client[c] += 1;
            }
        }
        self.state.flags.push(Flag {
            name,
            schema: Some(schema()),
            variants,
            state: if active { flag::State::Active } else { flag::State::Archived } as i32,
            rules,
            clients: clients.into_iter().map(client_name).collect(),
            description: format!("Synthetic benchmark flag {i}"),
            owner: "user:bench@example.com".to_string(),
            ..Default::default()
        });
    }

    /// Values follow `schema()`; some leave fields out (they read as null).
    fn variant_value(&mut self, v: usize) -> Struct {
        let mut s = Struct::default();
        s.fields.insert("enabled".into(), vbool(v != 0));
        s.fields.insert("title".into(), vstr(&format!("{} headline {}", VARIANTS[v], self.rng.below(1000))));
        s.fields.insert("limit".into(), vnum((10 * (v + 1)) as f64));
        if !self.rng.chance(25) {
            s.fields.insert("ratio".into(), vnum(0.25 * (v as f64 + 1.0)));
        }
        let mut style = Struct::default();
        style.fields.insert("color".into(), vstr(["#1DB954", "#191414", "#FFFFFF", "#FF4632"][v % 4]));
        style.fields.insert("size".into(), vnum((12 + 2 * v) as f64));
        s.fields.insert("style".into(), Value { kind: Some(Kind::StructValue(style)) });
        s
    }

    fn rule(&mut self, flag: &str, r: usize, variants: &[flag::Variant]) -> flag::Rule {
        use flag::rule::assignment::{
            Assignment as Kind_, ClientDefaultAssignment, FallthroughAssignment, VariantAssignment,
        };
        let nseg = self.state.segments_no_bitsets.len();
        let segment = segment_name(self.rng.index(nseg));
        let bucket_count: i32 = if self.rng.chance(60) { 1_000_000 } else { 100 };
        let variant = |v: &flag::Variant| Kind_::Variant(VariantAssignment { variant: v.name.clone() });
        let short = |v: &flag::Variant| v.name.rsplit('/').next().unwrap_or_default().to_string();

        let mut assignments = Vec::new();
        if self.rng.chance(20) {
            // Full rollout of one variant: assigned without hashing.
            let v = &variants[self.rng.index(variants.len())];
            assignments.push(flag::rule::Assignment {
                assignment_id: short(v),
                assignment: Some(variant(v)),
                bucket_ranges: vec![flag::rule::BucketRange { lower: 0, upper: bucket_count }],
            });
        } else {
            let mut kinds: Vec<(String, Kind_)> = variants.iter().map(|v| (short(v), variant(v))).collect();
            if self.rng.chance(15) {
                kinds.push(("holdout".into(), Kind_::Fallthrough(FallthroughAssignment {})));
            }
            if self.rng.chance(5) {
                kinds.push(("client-default".into(), Kind_::ClientDefault(ClientDefaultAssignment {})));
            }
            let k = kinds.len();
            // Interleaved slices: each assignment gets 1–3 ranges. Sometimes
            // the last slice is left unassigned, so some units miss the rule.
            let per = 1 + self.rng.index(3);
            let slices = k * per;
            let gap = self.rng.chance(10);
            let bounds: Vec<i32> =
                (0..=slices).map(|s| (bucket_count as i64 * s as i64 / slices as i64) as i32).collect();
            for (a, (id, kind)) in kinds.into_iter().enumerate() {
                let bucket_ranges = (0..per)
                    .map(|p| p * k + a)
                    .filter(|&s| !(gap && s == slices - 1))
                    .map(|s| flag::rule::BucketRange { lower: bounds[s], upper: bounds[s + 1] })
                    .collect();
                assignments.push(flag::rule::Assignment { assignment_id: id, assignment: Some(kind), bucket_ranges });
            }
        }
        let environments = match self.rng.below(100) {
            0..=14 => vec![ENVIRONMENT.to_string()],
            15..=19 => vec!["staging".to_string()],
            _ => Vec::new(),
        };
        flag::Rule {
            name: format!("{flag}/rules/rule-{r}"),
            segment,
            targeting_key_selector: if self.rng.chance(10) { "visitor_id".into() } else { String::new() },
            enabled: !self.rng.chance(5),
            assignment_spec: Some(flag::rule::AssignmentSpec { bucket_count, assignments }),
            environments,
            ..Default::default()
        }
    }
}

fn schema() -> flag_schema::StructFlagSchema {
    use flag_schema::SchemaType as T;
    let field = |t: T| FlagSchema { schema_type: Some(t) };
    let mut style = flag_schema::StructFlagSchema::default();
    style.schema.insert("color".into(), field(T::StringSchema(flag_schema::StringFlagSchema {})));
    style.schema.insert("size".into(), field(T::IntSchema(flag_schema::IntFlagSchema {})));
    let mut s = flag_schema::StructFlagSchema::default();
    s.schema.insert("enabled".into(), field(T::BoolSchema(flag_schema::BoolFlagSchema {})));
    s.schema.insert("title".into(), field(T::StringSchema(flag_schema::StringFlagSchema {})));
    s.schema.insert("limit".into(), field(T::IntSchema(flag_schema::IntFlagSchema {})));
    s.schema.insert("ratio".into(), field(T::DoubleSchema(flag_schema::DoubleFlagSchema {})));
    s.schema.insert("style".into(), field(T::StructSchema(style)));
    s
}

/// `n` evaluation contexts spread over the attributes the segments test.
/// The targeting key is a placeholder for the caller to overwrite.
pub fn contexts(n: usize, seed: u64) -> Vec<Struct> {
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    (0..n)
        .map(|i| {
            let mut app = Struct::default();
            app.fields.insert("platform".into(), vstr(rng.pick(&PLATFORMS)));
            app.fields
                .insert("version".into(), vstr(&format!("{}.{}.{}", 3 + rng.below(5), rng.below(10), rng.below(20))));
            let mut s = Struct::default();
            s.fields.insert(DEFAULT_SELECTOR.into(), vstr(&format!("user-{i}")));
            s.fields.insert("visitor_id".into(), vstr(&format!("visitor-{}", rng.next_u64())));
            s.fields.insert("country".into(), vstr(rng.pick(&COUNTRIES)));
            s.fields.insert("age".into(), vnum((16 + rng.below(60)) as f64));
            s.fields
                .insert("email".into(), vstr(if rng.chance(50) { "someone@example.com" } else { "someone@mail.test" }));
            s.fields.insert("locale".into(), vstr(rng.pick(&LOCALES)));
            s.fields.insert("premium".into(), vbool(rng.chance(40)));
            s.fields.insert("plan".into(), vstr(rng.pick(&PLANS)));
            let tags = (0..rng.index(3)).map(|_| vstr(rng.pick(&TAGS))).collect();
            s.fields.insert("tags".into(), Value { kind: Some(Kind::ListValue(ListValue { values: tags })) });
            s.fields.insert("app".into(), Value { kind: Some(Kind::StructValue(app)) });
            s
        })
        .collect()
}

fn tstr(s: &str) -> targeting::Value {
    targeting::Value { value: Some(targeting::value::Value::StringValue(s.to_string())) }
}

fn tnum(n: f64) -> targeting::Value {
    targeting::Value { value: Some(targeting::value::Value::NumberValue(n)) }
}

fn tbool(b: bool) -> targeting::Value {
    targeting::Value { value: Some(targeting::value::Value::BoolValue(b)) }
}

fn tversion(v: &str) -> targeting::Value {
    targeting::Value {
        value: Some(targeting::value::Value::VersionValue(targeting::SemanticVersion { version: v.to_string() })),
    }
}

fn vstr(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

fn vnum(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

fn vbool(b: bool) -> Value {
    Value { kind: Some(Kind::BoolValue(b)) }
}
