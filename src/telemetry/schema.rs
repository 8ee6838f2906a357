//! Evaluation-context schemas (Confidence's `SchemaFromEvaluationContext`):
//! nested structs flattened to dotted paths, each leaf given a kind and,
//! for strings, maybe a semantic type (country, date, timestamp, version).
//!
//! The recorder calls [`fingerprint`] on every resolve: it walks the
//! context exactly as [`derive`] does but only hashes, allocating nothing,
//! so the full instance is built only the first time a shape is seen.

use crate::proto::admin::client_resolve_info::EvaluationContextSchemaInstance as SchemaInstance;
use crate::proto::admin::context_field_semantic_type::{
    country_semantic_type::CountryFormat, CountrySemanticType, DateSemanticType, TimestampSemanticType, Type,
    VersionSemanticType,
};
use crate::proto::admin::evaluation_context_schema_field::Kind as FieldKind;
use crate::proto::admin::ContextFieldSemanticType;
use crate::proto::wkt::{value::Kind, Struct, Value};
use prost::Message;

/// Deeper nesting is not described; it guards the recursion.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    None,
    Country,
    Date,
    Timestamp,
    Version,
}

/// The schema of `ctx`.
pub fn derive(ctx: &Struct) -> SchemaInstance {
    let mut out = SchemaInstance::default();
    let mut path = Vec::new();
    walk(ctx, &mut path, 0, &mut |path, kind, sem| {
        let key = path.join(".");
        let semantic = match sem {
            Semantic::None => None,
            Semantic::Country => {
                Some(Type::Country(CountrySemanticType { format: CountryFormat::TwoLetterIsoCode as i32 }))
            }
            Semantic::Date => Some(Type::Date(DateSemanticType {})),
            Semantic::Timestamp => Some(Type::Timestamp(TimestampSemanticType {})),
            Semantic::Version => Some(Type::Version(VersionSemanticType {})),
        };
        if let Some(t) = semantic {
            out.semantic_types.insert(key.clone(), ContextFieldSemanticType { r#type: Some(t) });
        }
        out.schema.insert(key, kind as i32);
    });
    out
}

/// A 64-bit fingerprint of `derive(ctx)`: equal schemas give equal values
/// whatever the map order (leaves are combined by addition).
pub fn fingerprint(ctx: &Struct) -> u64 {
    let mut acc = 0u64;
    let mut path = Vec::new();
    walk(ctx, &mut path, 0, &mut |path, kind, sem| {
        let mut h = Fnv::new();
        for (i, part) in path.iter().enumerate() {
            if i > 0 {
                h.write(b".");
            }
            h.write(part.as_bytes());
        }
        h.write(&[0xff, kind as u8, sem as u8]);
        acc = acc.wrapping_add(mix(h.0));
    });
    mix(acc ^ 0x9e37_79b9_7f4a_7c15)
}

/// A canonical byte key for exact-equality dedup of instances from any
/// source (prost maps are HashMaps, so encoded bytes are not canonical).
pub fn canonical_key(s: &SchemaInstance) -> Vec<u8> {
    let mut fields: Vec<(&String, &i32)> = s.schema.iter().collect();
    fields.sort();
    let mut sems: Vec<(&String, Vec<u8>)> = s.semantic_types.iter().map(|(k, v)| (k, v.encode_to_vec())).collect();
    sems.sort();
    let mut out = Vec::new();
    for (k, v) in fields {
        push_framed(&mut out, k.as_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(0xff);
    for (k, v) in sems {
        push_framed(&mut out, k.as_bytes());
        push_framed(&mut out, &v);
    }
    out
}

fn push_framed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn walk<'a>(s: &'a Struct, path: &mut Vec<&'a str>, depth: usize, leaf: &mut impl FnMut(&[&str], FieldKind, Semantic)) {
    if depth >= MAX_DEPTH {
        return;
    }
    for (key, value) in &s.fields {
        path.push(key.as_str());
        match value.kind.as_ref() {
            Some(Kind::StructValue(inner)) => walk(inner, path, depth + 1, leaf),
            Some(Kind::ListValue(list)) => {
                if let Some(kind) = list_kind(&list.values) {
                    leaf(path, kind, Semantic::None);
                }
            }
            Some(Kind::StringValue(v)) => leaf(path, FieldKind::StringKind, semantic(path, v)),
            Some(other) => {
                if let Some(kind) = scalar_kind(other) {
                    leaf(path, kind, Semantic::None);
                }
            }
            // JSON null arrives without a kind: such fields are left out.
            None => {}
        }
        path.pop();
    }
}

fn scalar_kind(k: &Kind) -> Option<FieldKind> {
    match k {
        Kind::NullValue(_) => Some(FieldKind::NullKind),
        Kind::NumberValue(_) => Some(FieldKind::NumberKind),
        Kind::StringValue(_) => Some(FieldKind::StringKind),
        Kind::BoolValue(_) => Some(FieldKind::BoolKind),
        Kind::StructValue(_) | Kind::ListValue(_) => None,
    }
}

/// The shared kind of the list's elements that have one; empty, mixed or
/// nested lists have none and are left out.
fn list_kind(values: &[Value]) -> Option<FieldKind> {
    let mut kinds = values.iter().filter_map(|v| v.kind.as_ref());
    let first = scalar_kind(kinds.next()?)?;
    kinds.all(|k| scalar_kind(k) == Some(first)).then_some(first)
}

fn semantic(path: &[&str], value: &str) -> Semantic {
    // A `country` path is judged as a country only: no fallthrough.
    if path.iter().any(|p| contains_ignore_ascii_case(p, "country")) {
        return if is_country_code(value) { Semantic::Country } else { Semantic::None };
    }
    if value.len() >= 10 && chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok() {
        return Semantic::Date;
    }
    if value.len() >= 15 && is_timestamp(value) {
        return Semantic::Timestamp;
    }
    if is_version(value) {
        return Semantic::Version;
    }
    Semantic::None
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn is_timestamp(v: &str) -> bool {
    if chrono::DateTime::parse_from_rfc3339(v).is_ok() {
        return true;
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(v, f).is_ok())
}

/// Exactly three dot-separated u32 numbers (digits only).
fn is_version(v: &str) -> bool {
    let mut parts = 0;
    for p in v.split('.') {
        parts += 1;
        if parts > 3 || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u32>().is_err() {
            return false;
        }
    }
    parts == 3
}

/// ISO 3166-1 alpha-2, officially assigned codes, upper case, sorted.
const COUNTRY_CODES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD",
    "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA",
    "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE",
    "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA",
    "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK",
    "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP",
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT",
    "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS",
    "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ",
    "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS",
    "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST",
    "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW",
    "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA",
    "ZM", "ZW",
];

fn is_country_code(v: &str) -> bool {
    let &[a, b] = v.as_bytes() else { return false };
    let upper = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
    COUNTRY_CODES.binary_search_by(|c| c.as_bytes().cmp(&upper[..])).is_ok()
}

/// FNV-1a: tiny, deterministic across isolates, no allocation.
pub(crate) struct Fnv(pub(crate) u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// splitmix64 finalizer: spreads FNV's weak low bits before summing.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wkt::ListValue;

    fn ctx(json: &str) -> Struct {
        serde_json::from_str(json).expect("test context")
    }

    fn kinds(s: &SchemaInstance) -> Vec<(String, FieldKind)> {
        let mut v: Vec<_> = s.schema.iter().map(|(k, &x)| (k.clone(), FieldKind::try_from(x).expect("kind"))).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn sem(s: &SchemaInstance, key: &str) -> Option<Type> {
        s.semantic_types.get(key).and_then(|t| t.r#type.clone())
    }

    #[test]
    fn codes_are_sorted_and_unique() {
        assert!(COUNTRY_CODES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_country_code("se") && is_country_code("Gb") && !is_country_code("UK") && !is_country_code("SWE"));
    }

    #[test]
    fn flattens_nested_structs_and_leaves_out_nulls() {
        let s = derive(&ctx(
            r#"{"targeting_key":"u1","user":{"age":31,"premium":true,"address":{"zip":"12345"},"nick":null},"gone":null}"#,
        ));
        assert_eq!(
            kinds(&s),
            vec![
                ("targeting_key".into(), FieldKind::StringKind),
                ("user.address.zip".into(), FieldKind::StringKind),
                ("user.age".into(), FieldKind::NumberKind),
                ("user.premium".into(), FieldKind::BoolKind),
            ]
        );
        assert!(s.semantic_types.is_empty());
    }

    #[test]
    fn explicit_null_value_is_null_kind() {
        let mut c = Struct::default();
        c.fields.insert("n".into(), Value { kind: Some(Kind::NullValue(0)) });
        assert_eq!(kinds(&derive(&c)), vec![("n".into(), FieldKind::NullKind)]);
    }

    #[test]
    fn semantic_types() {
        let s =
            derive(&ctx(r#"{"country":"se","user":{"homeCountry":"US","country_name":"Sweden"},"day":"2024-02-29",
                "when":"2024-02-29T10:11:12Z","naive":"2024-02-29T10:11:12.5","app_version":"1.22.333",
                "short":"1.2","four":"1.2.3.4","country_date":"2024-01-01"}"#));
        let country = Some(Type::Country(CountrySemanticType { format: CountryFormat::TwoLetterIsoCode as i32 }));
        assert_eq!(sem(&s, "country"), country);
        assert_eq!(sem(&s, "user.homeCountry"), country);
        assert_eq!(sem(&s, "user.country_name"), None);
        assert_eq!(sem(&s, "day"), Some(Type::Date(DateSemanticType {})));
        assert_eq!(sem(&s, "when"), Some(Type::Timestamp(TimestampSemanticType {})));
        assert_eq!(sem(&s, "naive"), Some(Type::Timestamp(TimestampSemanticType {})));
        assert_eq!(sem(&s, "app_version"), Some(Type::Version(VersionSemanticType {})));
        assert_eq!(sem(&s, "short"), None);
        assert_eq!(sem(&s, "four"), None);
        // A country path is only ever judged as a country.
        assert_eq!(sem(&s, "country_date"), None);
        assert_eq!(s.schema.len(), 10);
    }

    #[test]
    fn lists_take_the_shared_kind() {
        let mut c = ctx(r#"{"tags":["a","b"],"nums":[1,2],"mixed":[1,"a"],"empty":[],"nested":[{"a":1}]}"#);
        let with_nulls = ListValue {
            values: vec![Value { kind: None }, Value { kind: Some(Kind::BoolValue(true)) }, Value { kind: None }],
        };
        c.fields.insert("flags".into(), Value { kind: Some(Kind::ListValue(with_nulls)) });
        assert_eq!(
            kinds(&derive(&c)),
            vec![
                ("flags".into(), FieldKind::BoolKind),
                ("nums".into(), FieldKind::NumberKind),
                ("tags".into(), FieldKind::StringKind),
            ]
        );
    }

    #[test]
    fn fingerprint_tracks_the_schema_not_the_values() {
        let a = fingerprint(&ctx(r#"{"targeting_key":"u1","n":1,"u":{"c":"SE"}}"#));
        let b = fingerprint(&ctx(r#"{"u":{"c":"NO"},"n":7,"targeting_key":"someone-else"}"#));
        let c = fingerprint(&ctx(r#"{"targeting_key":"u1","n":"1","u":{"c":"SE"}}"#));
        let d = fingerprint(&ctx(r#"{"targeting_key":"u1","n":1,"u":{"country":"SE"}}"#));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn canonical_key_ignores_map_order() {
        let a = derive(&ctx(r#"{"a":1,"b":"2024-01-01","c":true,"country":"se"}"#));
        let mut b = SchemaInstance::default();
        let mut fields: Vec<_> = a.schema.iter().collect();
        fields.sort();
        for (k, v) in fields.into_iter().rev() {
            b.schema.insert(k.clone(), *v);
        }
        for (k, v) in &a.semantic_types {
            b.semantic_types.insert(k.clone(), v.clone());
        }
        assert_eq!(canonical_key(&a), canonical_key(&b));
        b.schema.insert("d".into(), 1);
        assert_ne!(canonical_key(&a), canonical_key(&b));
    }
}
