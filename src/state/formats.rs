//! Every resolver-state input we accept, decoded into one `ResolverState`:
//! bare protobuf, the `ClientResolverState` envelope, proto3 JSON, and the
//! conformance-suite JSON layout (maps keyed by name; also for hand-written states).
//!
//! The JSON decoders exist natively only (the CLI converts JSON): the
//! isolate is fed protobuf (build-worker.sh, scripts/push-state.sh), and leaving
//! them out of the wasm drops pbjson's state deserializers and most of
//! serde_json's from the bundle. There a JSON state is refused by name.
//! (`cfg(json_states)`, set by build.rs: native, or the `wasm-json-states`
//! feature that bench.sh `code` uses to measure them.)

use std::fmt;
use std::str::FromStr;

use crate::proto::admin::{self, ClientResolverState, ResolverState};
use prost::bytes::Bytes;
use prost::Message;

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
    /// A JSON state reached the wasm build, which decodes protobuf only.
    JsonInIsolate,
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
            Self::JsonInIsolate => f.write_str(
                "this is a JSON state; the worker decodes protobuf only: convert it with \
                 `edgeflag convert --state FILE --to envelope` (scripts/push-state.sh and build-worker.sh do)",
            ),
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
    if looks_like_json(text) {
        #[cfg(json_states)]
        return Sniffed::Format(detect_json(text));
        // Which JSON layout does not matter: the isolate refuses both.
        #[cfg(not(json_states))]
        return Sniffed::Format(StateFormat::ProtoJson);
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
    // Where the format is forced (KV blobs are envelopes), a JSON state
    // fails as garbage protobuf; then say what it is and how to fix it.
    #[cfg(not(json_states))]
    let json = looks_like_json(&bytes);
    let decoded = match format {
        StateFormat::Protobuf => ResolverState::decode(bytes).map(bare).map_err(FormatError::Protobuf),
        // No `?` here: the JSON check below must see every error.
        StateFormat::Envelope => ClientResolverState::decode(bytes).map_err(FormatError::Envelope).and_then(|env| {
            let state = ResolverState::decode(env.state).map_err(FormatError::EnvelopeState)?;
            Ok(envelope_state(state, &env.account, env.log_destinations))
        }),
        #[cfg(json_states)]
        StateFormat::ProtoJson => {
            serde_json::from_slice::<ResolverState>(strip_bom(&bytes)).map(bare).map_err(FormatError::ProtoJson)
        }
        #[cfg(json_states)]
        StateFormat::SuiteJson => decode_suite(&bytes),
        #[cfg(not(json_states))]
        StateFormat::ProtoJson | StateFormat::SuiteJson => Err(FormatError::JsonInIsolate),
    };
    #[cfg(not(json_states))]
    let decoded = decoded.map_err(|e| if json { FormatError::JsonInIsolate } else { e });
    decoded
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

#[cfg(json_states)]
pub fn to_proto_json(state: &admin::ResolverState) -> Result<String, FormatError> {
    serde_json::to_string_pretty(state).map_err(FormatError::JsonEncode)
}

/// Starts like a JSON object (after a BOM and whitespace).
fn looks_like_json(bytes: &[u8]) -> bool {
    strip_bom(bytes).iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
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

#[cfg(json_states)]
mod json;
#[cfg(json_states)]
use json::{decode_suite, detect_json};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::admin::resolver_state::packed_bitset;
    use crate::proto::iam;
    use crate::state::bitset::{Bitset, BUCKETS};
    use crate::state::bloom::BloomFilter;

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
