//! Every resolver-state input we accept, decoded into one `ResolverState`:
//! bare protobuf, the `ClientResolverState` envelope, proto3 JSON, and the
//! conformance-suite JSON layout (maps keyed by name; also for hand-written states).

use std::fmt;
use std::str::FromStr;

use prost::bytes::Bytes;
use prost::Message;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::bitset::{Bitset, BUCKETS};
use super::bloom::BloomFilter;
use crate::proto::admin::resolver_state::{packed_bitset, BloomFilter as BloomFilterProto, PackedBitset};
use crate::proto::admin::{self, ClientResolverState, ResolverState};
use crate::proto::iam;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateFormat {
    /// A bare serialized `ResolverState`.
    Protobuf,
    /// `ClientResolverState { state, account, log_destinations }`.
    Envelope,
    /// `ResolverState` in proto3 JSON.
    ProtoJson,
    /// The conformance-suite layout (maps keyed by name).
    SuiteJson,
}

impl fmt::Display for StateFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Protobuf => "pb",
            Self::Envelope => "envelope",
            Self::ProtoJson => "json",
            Self::SuiteJson => "suite",
        })
    }
}

impl FromStr for StateFormat {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pb" | "protobuf" | "proto" => Ok(Self::Protobuf),
            "envelope" => Ok(Self::Envelope),
            "json" | "proto-json" | "protojson" => Ok(Self::ProtoJson),
            "suite" | "suite-json" => Ok(Self::SuiteJson),
            _ => Err(FormatError::UnknownFormat(s.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecodedState {
    pub state: admin::ResolverState,
    /// Bare account id (no `accounts/` prefix), when the input carries one.
    pub account_id: Option<String>,
    /// Raw `LogDestination` values from the envelope; empty otherwise.
    pub log_destinations: Vec<i32>,
    pub format: StateFormat,
}

#[derive(Debug)]
pub enum FormatError {
    UnknownFormat(String),
    Protobuf(prost::DecodeError),
    Envelope(prost::DecodeError),
    EnvelopeState(prost::DecodeError),
    ProtoJson(serde_json::Error),
    /// Suite JSON that is not valid JSON or not an object at the top.
    SuiteSyntax(String),
    /// One entry of the suite layout; `path` is like `flags["flags/x"]`.
    Suite {
        path: String,
        message: String,
    },
    JsonEncode(serde_json::Error),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFormat(s) => write!(f, "unknown state format {s:?} (expected pb, envelope, json or suite)"),
            Self::Protobuf(e) => write!(f, "protobuf decode failed: {e}"),
            Self::Envelope(e) => write!(f, "envelope decode failed: {e}"),
            Self::EnvelopeState(e) => write!(f, "envelope field state: {e}"),
            Self::ProtoJson(e) => write!(f, "proto3 JSON ResolverState: {e}"),
            Self::SuiteSyntax(e) => write!(f, "suite state JSON: {e}"),
            Self::Suite { path, message } => write!(f, "suite state JSON: {path}: {message}"),
            Self::JsonEncode(e) => write!(f, "proto3 JSON encode failed: {e}"),
        }
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Protobuf(e) | Self::Envelope(e) | Self::EnvelopeState(e) => Some(e),
            Self::ProtoJson(e) | Self::JsonEncode(e) => Some(e),
            _ => None,
        }
    }
}

/// `"accounts/x"` → `"x"`; a bare id is returned unchanged.
pub fn normalize_account(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix("accounts/").unwrap_or(s).to_string()
}

pub fn detect_format(bytes: &[u8]) -> StateFormat {
    match sniff(&Bytes::copy_from_slice(bytes)) {
        Sniffed::Format(f) => f,
        Sniffed::Envelope(_) => StateFormat::Envelope,
    }
}

enum Sniffed {
    Format(StateFormat),
    /// Telling an envelope apart decodes it; the decode is kept.
    Envelope(Box<DecodedState>),
}

fn sniff(bytes: &Bytes) -> Sniffed {
    let text = strip_bom(bytes);
    if text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Sniffed::Format(detect_json(text));
    }
    match decode_envelope(bytes.clone()) {
        Some(decoded) => Sniffed::Envelope(Box::new(decoded)),
        None => Sniffed::Format(StateFormat::Protobuf),
    }
}

pub fn decode(bytes: &[u8], format: Option<StateFormat>) -> Result<DecodedState, FormatError> {
    decode_shared(Bytes::copy_from_slice(bytes), format)
}

/// As [`decode`], with the protobuf byte fields (an envelope's state,
/// gzipped bitsets) slicing `bytes` instead of copying them, which matters
/// for the embedded state in a cold isolate.
pub fn decode_static(bytes: &'static [u8], format: Option<StateFormat>) -> Result<DecodedState, FormatError> {
    decode_shared(Bytes::from_static(bytes), format)
}

fn decode_shared(bytes: Bytes, format: Option<StateFormat>) -> Result<DecodedState, FormatError> {
    let format = match format {
        Some(f) => f,
        None => match sniff(&bytes) {
            Sniffed::Format(f) => f,
            Sniffed::Envelope(decoded) => return Ok(*decoded),
        },
    };
    let bare = |state| DecodedState { state, account_id: None, log_destinations: Vec::new(), format };
    match format {
        StateFormat::Protobuf => ResolverState::decode(bytes).map(bare).map_err(FormatError::Protobuf),
        StateFormat::Envelope => {
            let env = ClientResolverState::decode(bytes).map_err(FormatError::Envelope)?;
            let state = ResolverState::decode(env.state).map_err(FormatError::EnvelopeState)?;
            Ok(envelope_state(state, &env.account, env.log_destinations))
        }
        StateFormat::ProtoJson => {
            serde_json::from_slice::<ResolverState>(strip_bom(&bytes)).map(bare).map_err(FormatError::ProtoJson)
        }
        StateFormat::SuiteJson => decode_suite(&bytes),
    }
}

fn envelope_state(state: ResolverState, account: &str, log_destinations: Vec<i32>) -> DecodedState {
    let account = normalize_account(account);
    DecodedState {
        state,
        account_id: (!account.is_empty()).then_some(account),
        log_destinations,
        format: StateFormat::Envelope,
    }
}

/// Canonical bytes: the same state always gives the same bytes (and etag).
pub fn encode_pb(state: &admin::ResolverState) -> Vec<u8> {
    super::canonical::encode(state)
}

pub fn encode_envelope(state: &admin::ResolverState, account_id: &str, log_destinations: &[i32]) -> Vec<u8> {
    ClientResolverState {
        state: super::canonical::encode(state).into(),
        account: normalize_account(account_id),
        log_destinations: log_destinations.to_vec(),
    }
    .encode_to_vec()
}

pub fn to_proto_json(state: &admin::ResolverState) -> Result<String, FormatError> {
    serde_json::to_string_pretty(state).map_err(FormatError::JsonEncode)
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

// ---- binary detection ----

/// An envelope has only fields 1 (bytes), 2 (string) and 4 (enum); a bare
/// `ResolverState` can masquerade as one on the wire (its fields 1 and 2
/// are also length-delimited), so besides a full decode we demand a clean
/// field set and an account id that reads like an id. The decoded envelope
/// when the bytes are one.
fn decode_envelope(bytes: Bytes) -> Option<DecodedState> {
    if !only_envelope_fields(&bytes) {
        return None;
    }
    let env = ClientResolverState::decode(bytes).ok()?;
    if env.account.is_empty() || env.account.chars().any(char::is_control) {
        return None;
    }
    let state = ResolverState::decode(env.state).ok()?;
    Some(envelope_state(state, &env.account, env.log_destinations))
}

fn only_envelope_fields(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        let Some(key) = read_varint(&mut buf) else {
            return false;
        };
        let (field, wire) = (key >> 3, key & 7);
        match (field, wire) {
            (1 | 2 | 4, 2) => {
                let Some(len) = read_varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return false;
                };
                let Some(rest) = buf.get(len..) else {
                    return false;
                };
                buf = rest;
            }
            (4, 0) => {
                if read_varint(&mut buf).is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

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

fn detect_json(bytes: &[u8]) -> StateFormat {
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

fn decode_suite(bytes: &[u8]) -> Result<DecodedState, FormatError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared");

    fn read(rel: &str) -> Vec<u8> {
        std::fs::read(format!("{SHARED}/{rel}")).unwrap()
    }

    fn spec() -> DecodedState {
        decode(&read("conformance/resolver-spec/state.json"), None).unwrap()
    }

    #[test]
    fn format_names_round_trip() {
        for f in [StateFormat::Protobuf, StateFormat::Envelope, StateFormat::ProtoJson, StateFormat::SuiteJson] {
            assert_eq!(f.to_string().parse::<StateFormat>().unwrap(), f);
        }
        assert!("yaml".parse::<StateFormat>().is_err());
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_account("accounts/x"), "x");
        assert_eq!(normalize_account("x"), "x");
    }

    #[test]
    fn spec_state_counts() {
        let d = spec();
        assert_eq!(d.format, StateFormat::SuiteJson);
        assert_eq!(d.account_id.as_deref(), Some("test-account"));
        let s = &d.state;
        assert_eq!(s.flags.len(), 95);
        assert_eq!(s.segments_no_bitsets.len(), 54);
        assert_eq!(s.bitsets.len(), 54);
        assert_eq!(s.bloom_filters.len(), 1);
        assert_eq!(s.clients.len(), 2);
        assert_eq!(s.client_credentials.len(), 2);
        assert!(s.flags.iter().all(|f| f.name.starts_with("flags/")));

        let full = s.bitsets.iter().filter(|b| b.bitset == Some(packed_bitset::Bitset::FullBitset(true))).count();
        assert_eq!(full, 53);
        let specific = s.bitsets.iter().find(|b| b.segment == "segments/bitset-specific").unwrap();
        let Some(packed_bitset::Bitset::GzippedBitset(z)) = &specific.bitset else {
            panic!("expected gzipped bitset");
        };
        let bits = Bitset::from_gzip(z).unwrap();
        assert_eq!(bits.len_bits(), BUCKETS);
        assert_eq!(bits.count_ones(), 10);
        assert!((0..10).all(|i| bits.get(i)) && !bits.get(10));

        let bf = BloomFilter::from_proto(&s.bloom_filters[0]).unwrap();
        assert_eq!(s.bloom_filters[0].materialized_segment, "materializations/bf-seg");
        assert!(bf.might_contain("user1") && !bf.might_contain("user2"));

        let secrets: Vec<_> = s
            .client_credentials
            .iter()
            .filter_map(|c| {
                let Some(iam::client_credential::Credential::ClientSecret(cs)) = &c.credential else {
                    return None;
                };
                Some(cs.secret.as_str())
            })
            .collect();
        assert!(secrets.contains(&"test-secret") && secrets.contains(&"minimal-secret"));
    }

    #[test]
    fn shared_pb_states() {
        for name in [
            "resolver_state.pb",
            "resolver_state_with_custom_targeting_flag.pb",
            "resolver_state_with_multiple_sticky_flags.pb",
        ] {
            let bytes = read(&format!("states/{name}"));
            assert_eq!(detect_format(&bytes), StateFormat::Protobuf, "{name}");
            let d = decode(&bytes, None).unwrap();
            assert_eq!(d.account_id, None);
            for b in &d.state.bitsets {
                if let Some(packed_bitset::Bitset::GzippedBitset(z)) = &b.bitset {
                    let bits = Bitset::from_gzip(z).unwrap();
                    assert_eq!(bits.len_bits(), BUCKETS, "{name} {}", b.segment);
                }
            }
            // pb -> json -> pb is lossless. Compared as messages: map fields
            // (Struct, labels) are HashMaps, so re-encoded bytes may reorder.
            let json = to_proto_json(&d.state).unwrap();
            assert_eq!(detect_format(json.as_bytes()), StateFormat::ProtoJson);
            let back = decode(json.as_bytes(), None).unwrap();
            assert_eq!(back.state, d.state, "{name}");
            let again = decode(&encode_pb(&back.state), None).unwrap();
            assert_eq!(again.state, d.state, "{name}");
        }
        let d = decode(&read("states/resolver_state.pb"), None).unwrap();
        assert_eq!(d.state.flags.len(), 3);
        assert_eq!(d.state.segments_no_bitsets.len(), 4);
        assert_eq!(d.state.clients.len(), 1);
    }

    #[test]
    fn shared_proto_json_state() {
        let bytes = read("states/resolver_state.json");
        assert_eq!(detect_format(&bytes), StateFormat::ProtoJson);
        let d = decode(&bytes, None).unwrap();
        assert!(!d.state.flags.is_empty());
        let pb = encode_pb(&d.state);
        assert_eq!(decode(&pb, None).unwrap().state, d.state);
        // The JSON file is the same state as resolver_state.pb.
        let from_pb = decode(&read("states/resolver_state.pb"), None).unwrap();
        assert_eq!(from_pb.state, d.state);
    }

    #[test]
    fn envelope_round_trip_and_detection() {
        let state = decode(&read("states/resolver_state.pb"), None).unwrap().state;
        let env = encode_envelope(&state, "accounts/acme", &[2, 1]);
        assert_eq!(detect_format(&env), StateFormat::Envelope);
        let d = decode(&env, None).unwrap();
        assert_eq!(d.format, StateFormat::Envelope);
        assert_eq!(d.account_id.as_deref(), Some("acme"));
        assert_eq!(d.log_destinations, vec![2, 1]);
        assert_eq!(d.state, state);

        // Suite state (no bitsets gzip quirks) also survives the envelope.
        let s = spec().state;
        let env = encode_envelope(&s, "test-account", &[]);
        assert_eq!(detect_format(&env), StateFormat::Envelope);
        assert_eq!(decode(&env, None).unwrap().state, s);
        assert_eq!(detect_format(&encode_pb(&s)), StateFormat::Protobuf);

        // An envelope without an account is only recognised when asked for.
        let anon = encode_envelope(&state, "", &[]);
        let d = decode(&anon, Some(StateFormat::Envelope)).unwrap();
        assert_eq!((d.account_id, d.state), (None, state));
    }

    #[test]
    fn suite_round_trips_through_pb_and_json() {
        let s = spec().state;
        let back = decode(&encode_pb(&s), None).unwrap().state;
        assert_eq!(back, s);
        let json = to_proto_json(&s).unwrap();
        assert_eq!(decode(json.as_bytes(), None).unwrap().state, s);
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(detect_format(b""), StateFormat::Protobuf);
        assert_eq!(decode(b"", None).unwrap().state, ResolverState::default());
        assert_eq!(detect_format(b"  {}"), StateFormat::ProtoJson);
        assert_eq!(detect_format(br#"{"account":"a"}"#), StateFormat::SuiteJson);
        let d = decode(br#"{"account":"accounts/a"}"#, None).unwrap();
        assert_eq!(d.account_id.as_deref(), Some("a"));
    }

    #[test]
    fn suite_errors_name_the_entry() {
        let e = decode(br#"{"flags": {"flags/x": {"state": "BOGUS"}}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"flags["flags/x"]"#) && e.contains("BOGUS"), "{e}");

        let e = decode(br#"{"segments": {"segments/s": {"targeting": 3}}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"segments["segments/s"]"#), "{e}");

        let e = decode(br#"{"bitsets": {"segments/s": [1000000]}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"bitsets["segments/s"]"#) && e.contains("1000000"), "{e}");

        let e = decode(br#"{"bitsets": {"segments/s": [-1]}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"bitsets["segments/s"][0]"#), "{e}");

        let e = decode(br#"{"bitsets": {"segments/s": "SOME"}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"bitsets["segments/s"]"#), "{e}");

        let e = decode(
            br#"{"bloomFilters": {"m": {"data": "AAAAAAAAAAA=", "hashFunctionCount": 3, "bitCount": 64, "strategy": 2}}}"#,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(r#"bloomFilters["m"]"#) && e.contains("strategy 2"), "{e}");

        let e = decode(br#"{"clients": {"s": {}}}"#, None).unwrap_err().to_string();
        assert!(e.contains(r#"clients["s"]"#), "{e}");

        let e = decode(br#"{"flags": [1]}"#, Some(StateFormat::SuiteJson)).unwrap_err().to_string();
        assert!(e.contains("flags") && e.contains("array"), "{e}");

        let e = decode(b"{not json", None).unwrap_err().to_string();
        assert!(e.starts_with("proto3 JSON ResolverState:"), "{e}");

        let e = decode(b"\xff\xff\xff", Some(StateFormat::Protobuf)).unwrap_err().to_string();
        assert!(e.starts_with("protobuf decode failed:"), "{e}");
    }

    #[test]
    fn suite_fills_names_from_keys() {
        let d = decode(
            br#"{
              "account": {"name": "accounts/demo"},
              "flags": {"flags/a": {"state": "ACTIVE"}},
              "segments": {"segments/s": {}},
              "bitsets": {"segments/s": []},
              "clients": {
                "sec1": {"client": {"name": "clients/c"}},
                "sec2": {"client": {"name": "clients/c"}, "clientCredential": {"name": "clients/c/credentials/x"}}
              },
              "schema": {}, "stateFileHash": "h", "somethingElse": 1
            }"#,
            None,
        )
        .unwrap();
        assert_eq!(d.format, StateFormat::SuiteJson);
        assert_eq!(d.account_id.as_deref(), Some("demo"));
        assert_eq!(d.state.flags[0].name, "flags/a");
        assert_eq!(d.state.segments_no_bitsets[0].name, "segments/s");
        assert_eq!(d.state.clients.len(), 1);
        assert_eq!(d.state.client_credentials.len(), 2);
        let c = &d.state.client_credentials[0];
        assert!(c.name.starts_with("clients/c/credentials/"));
        assert_eq!(
            c.credential,
            Some(iam::client_credential::Credential::ClientSecret(iam::client_credential::ClientSecret {
                secret: "sec1".into()
            }))
        );
        let Some(packed_bitset::Bitset::GzippedBitset(z)) = &d.state.bitsets[0].bitset else { panic!() };
        let b = Bitset::from_gzip(z).unwrap();
        assert_eq!((b.len_bits(), b.count_ones()), (BUCKETS, 0));
    }
}
