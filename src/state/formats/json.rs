//! The two JSON state layouts, decoded natively only (see the parent
//! module): which one a document is, and the conformance-suite layout.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{normalize_account, strip_bom, DecodedState, FormatError, StateFormat};
use crate::proto::admin::resolver_state::{packed_bitset, BloomFilter as BloomFilterProto, PackedBitset};
use crate::proto::admin::{self, ResolverState};
use crate::proto::iam;
use crate::state::bitset::{Bitset, BUCKETS};
use crate::state::bloom::BloomFilter;

// ---- JSON detection ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Shape, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Shape, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shape::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Only the keys that tell the two layouts apart; everything else is skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonProbe {
    account: Option<IgnoredAny>,
    flags: Option<Shape>,
    segments: Option<Shape>,
    bitsets: Option<Shape>,
    bloom_filters: Option<Shape>,
    clients: Option<Shape>,
}

pub(super) fn detect_json(bytes: &[u8]) -> StateFormat {
    let Ok(p) = serde_json::from_slice::<JsonProbe>(bytes) else {
        // Let the proto3 JSON decoder report the syntax error.
        return StateFormat::ProtoJson;
    };
    // `account` and a `segments` key do not exist in ResolverState's JSON;
    // there `flags`, `bitsets`, `bloomFilters` and `clients` are arrays.
    let is_obj = |s: Option<Shape>| s == Some(Shape::Object);
    if p.account.is_some()
        || p.segments.is_some()
        || is_obj(p.flags)
        || is_obj(p.bitsets)
        || is_obj(p.bloom_filters)
        || is_obj(p.clients)
    {
        StateFormat::SuiteJson
    } else {
        StateFormat::ProtoJson
    }
}

// ---- suite layout ----

fn suite_err(path: String, message: impl fmt::Display) -> FormatError {
    FormatError::Suite { path, message: message.to_string() }
}

fn key_path(section: &str, key: &str) -> String {
    format!("{section}[{key:?}]")
}

/// A section must be an object (map keyed by name); absent or null is empty.
fn section<'a>(top: &'a Map<String, Value>, name: &str) -> Result<Option<&'a Map<String, Value>>, FormatError> {
    match top.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(suite_err(
            name.to_string(),
            format_args!("expected an object keyed by name, found {}", json_kind(other)),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses `v` as message `T`, first filling `field` from the map key when absent.
fn parse_named<T: serde::de::DeserializeOwned>(
    path: impl Fn() -> String,
    v: &Value,
    field: &str,
    key: &str,
) -> Result<T, FormatError> {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        let missing = match m.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if missing {
            m.insert(field.to_string(), Value::String(key.to_string()));
        }
    }
    serde_json::from_value(v).map_err(|e| suite_err(path(), e))
}

pub(super) fn decode_suite(bytes: &[u8]) -> Result<DecodedState, FormatError> {
    let top: Map<String, Value> =
        serde_json::from_slice(strip_bom(bytes)).map_err(|e| FormatError::SuiteSyntax(e.to_string()))?;
    let mut state = ResolverState::default();

    let account_id = match top.get("account") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(normalize_account(s)),
        Some(Value::Object(m)) => match m.get("name") {
            Some(Value::String(s)) => Some(normalize_account(s)),
            _ => return Err(suite_err("account".into(), "expected {\"name\": \"accounts/<id>\"}")),
        },
        Some(other) => {
            return Err(suite_err(
                "account".into(),
                format_args!("expected an object or a string, found {}", json_kind(other)),
            ))
        }
    }
    .filter(|a| !a.is_empty());

    if let Some(flags) = section(&top, "flags")? {
        for (key, v) in flags {
            let flag: admin::Flag = parse_named(|| key_path("flags", key), v, "name", key)?;
            state.flags.push(flag);
        }
    }

    if let Some(segments) = section(&top, "segments")? {
        for (key, v) in segments {
            let seg: admin::Segment = parse_named(|| key_path("segments", key), v, "name", key)?;
            state.segments_no_bitsets.push(seg);
        }
    }

    if let Some(bitsets) = section(&top, "bitsets")? {
        for (key, v) in bitsets {
            state.bitsets.push(suite_bitset(key, v)?);
        }
    }

    if let Some(filters) = section(&top, "bloomFilters")? {
        for (key, v) in filters {
            let path = || key_path("bloomFilters", key);
            let bf: BloomFilterProto = parse_named(path, v, "materializedSegment", key)?;
            // RR silently drops bad filters; in an authored file that is a typo to report.
            BloomFilter::from_proto(&bf).map_err(|e| suite_err(path(), e))?;
            state.bloom_filters.push(bf);
        }
    }

    if let Some(clients) = section(&top, "clients")? {
        for (secret, v) in clients {
            let (client, cred) = suite_client(secret, v, state.client_credentials.len())?;
            if !state.clients.iter().any(|c| c.name == client.name) {
                state.clients.push(client);
            }
            state.client_credentials.push(cred);
        }
    }

    Ok(DecodedState { state, account_id, log_destinations: Vec::new(), format: StateFormat::SuiteJson })
}

fn suite_bitset(key: &str, v: &Value) -> Result<PackedBitset, FormatError> {
    let path = || key_path("bitsets", key);
    let bitset = match v {
        Value::String(s) if s == "ALL" => packed_bitset::Bitset::FullBitset(true),
        Value::Array(items) => {
            let mut indices = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let idx = item.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                    suite_err(
                        format!("{}[{i}]", path()),
                        format_args!("expected a bit index (non-negative integer), found {item}"),
                    )
                })?;
                indices.push(idx);
            }
            let bits = Bitset::from_set_bits(BUCKETS, indices).map_err(|e| suite_err(path(), e))?;
            packed_bitset::Bitset::GzippedBitset(bits.to_gzip().into())
        }
        other => {
            return Err(suite_err(
                path(),
                format_args!("expected \"ALL\" or an array of set bit indices, found {}", json_kind(other)),
            ))
        }
    };
    Ok(PackedBitset { segment: key.to_string(), bitset: Some(bitset) })
}

fn suite_client(secret: &str, v: &Value, ordinal: usize) -> Result<(iam::Client, iam::ClientCredential), FormatError> {
    let path = || key_path("clients", secret);
    let Value::Object(entry) = v else {
        return Err(suite_err(
            path(),
            format_args!("expected {{\"client\": ..., \"clientCredential\": ...}}, found {}", json_kind(v)),
        ));
    };
    let client: iam::Client = match entry.get("client") {
        Some(c) => serde_json::from_value(c.clone()).map_err(|e| suite_err(format!("{}.client", path()), e))?,
        None => return Err(suite_err(path(), "missing \"client\"")),
    };
    if client.name.is_empty() {
        return Err(suite_err(format!("{}.client", path()), "missing \"name\""));
    }
    let mut cred: iam::ClientCredential = match entry.get("clientCredential") {
        Some(c) => {
            serde_json::from_value(c.clone()).map_err(|e| suite_err(format!("{}.clientCredential", path()), e))?
        }
        None => iam::ClientCredential::default(),
    };
    // Hand-written states may lean on the map key for the secret and on the
    // client for the credential name (secrets are matched by name prefix).
    if cred.credential.is_none() {
        cred.credential =
            Some(iam::client_credential::Credential::ClientSecret(iam::client_credential::ClientSecret {
                secret: secret.to_string(),
            }));
    }
    if cred.name.is_empty() {
        cred.name = format!("{}/credentials/{}", client.name, ordinal + 1);
    }
    Ok((client, cred))
}
