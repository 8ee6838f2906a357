//! Canonical protobuf bytes for a state: the same state always encodes to
//! the same bytes, so its etag (a hash of the bytes) names its content.
//!
//! Generated maps are `BTreeMap`s (build.rs), which prost encodes in key
//! order. `google.protobuf.Struct` comes from pbjson-types as a `HashMap`,
//! encoded in a per-map random order; this module reorders those entries by
//! key on the wire. Reordering never changes a length, so the rewrite is a
//! permutation of byte ranges inside an otherwise untouched encoding.

use crate::proto::admin::ResolverState;
use prost::Message;

/// Where `Struct`/`Value` sit inside a message, by field number.
enum Node {
    Message(&'static [(u64, &'static Node)]),
    Struct,
}

// google.protobuf.Value: struct_value = 5, list_value = 6 (values = 1).
static VALUE: Node = Node::Message(&[(5, &Node::Struct), (6, &LIST)]);
static LIST: Node = Node::Message(&[(1, &VALUE)]);
static STRUCT_ENTRY: Node = Node::Message(&[(2, &VALUE)]);
static VARIANT: Node = Node::Message(&[(2, &Node::Struct)]);
static FLAG: Node = Node::Message(&[(3, &VARIANT)]);
// Client.managed_context = 13: map<string, Value>, entry value = 2.
static CLIENT: Node = Node::Message(&[(13, &STRUCT_ENTRY)]);
static RESOLVER_STATE: Node = Node::Message(&[(1, &FLAG), (6, &CLIENT)]);

/// The canonical encoding of `state`.
pub fn encode(state: &ResolverState) -> Vec<u8> {
    let bytes = state.encode_to_vec();
    // prost's own output always parses; the fallback is only defensive.
    rewrite(&bytes, &RESOLVER_STATE).unwrap_or(bytes)
}

/// One field as it sits on the wire: its tag and length prefix, and (for
/// length-delimited fields) where the payload starts.
struct Field<'a> {
    number: u64,
    head: &'a [u8],
    payload: Option<&'a [u8]>,
    raw: &'a [u8],
}

fn fields(mut buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let payload = match wire {
            0 => {
                varint(&mut buf)?;
                None
            }
            1 => {
                buf = buf.get(8..)?;
                None
            }
            5 => {
                buf = buf.get(4..)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let p = buf.get(..len)?;
                let head_len = start.len().checked_sub(buf.len())?;
                buf = buf.get(len..)?;
                let head = start.get(..head_len)?;
                out.push(Field { number, head, payload: Some(p), raw: start.get(..head_len.checked_add(len)?)? });
                continue;
            }
            _ => return None,
        };
        let used = start.len().checked_sub(buf.len())?;
        let raw = start.get(..used)?;
        out.push(Field { number, head: raw, payload, raw });
    }
    Some(out)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn rewrite(msg: &[u8], node: &Node) -> Option<Vec<u8>> {
    match node {
        Node::Message(children) => {
            let mut out = Vec::with_capacity(msg.len());
            for f in fields(msg)? {
                match (f.payload, children.iter().find(|(n, _)| *n == f.number)) {
                    (Some(p), Some((_, child))) => {
                        out.extend_from_slice(f.head);
                        out.extend_from_slice(&rewrite(p, child)?);
                    }
                    _ => out.extend_from_slice(f.raw),
                }
            }
            Some(out)
        }
        Node::Struct => {
            // fields = 1: map entries {key = 1, value = 2}.
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for f in fields(msg)? {
                let mut raw = f.head.to_vec();
                let key = match f.payload {
                    Some(p) => {
                        raw.extend_from_slice(&rewrite(p, &STRUCT_ENTRY)?);
                        fields(p)?.iter().find(|e| e.number == 1).and_then(|e| e.payload).unwrap_or_default().to_vec()
                    }
                    None => {
                        raw = f.raw.to_vec();
                        Vec::new()
                    }
                };
                entries.push((key, raw));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Some(entries.into_iter().flat_map(|(_, raw)| raw).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::admin::flag::Variant;
    use crate::proto::admin::Flag;
    use crate::proto::wkt::{value::Kind, ListValue, Struct, Value};

    fn value(i: usize) -> Value {
        let inner: Struct = Struct {
            fields: (0..20).map(|j| (format!("k{j}"), Value { kind: Some(Kind::NumberValue(j as f64)) })).collect(),
        };
        let list = ListValue { values: vec![Value { kind: Some(Kind::StructValue(inner.clone())) }] };
        let fields = (0..30)
            .map(|j| {
                let v = if j % 2 == 0 { Kind::StructValue(inner.clone()) } else { Kind::ListValue(list.clone()) };
                (format!("f{i}-{j}"), Value { kind: Some(v) })
            })
            .collect();
        Value { kind: Some(Kind::StructValue(Struct { fields })) }
    }

    fn state() -> ResolverState {
        let Some(Kind::StructValue(s)) = value(1).kind else { unreachable!() };
        let variant = Variant { name: "flags/f/variants/a".into(), value: Some(s), ..Default::default() };
        let flag = Flag { name: "flags/f".into(), variants: vec![variant], ..Default::default() };
        ResolverState { flags: vec![flag], ..Default::default() }
    }

    #[test]
    fn the_same_state_encodes_to_the_same_bytes() {
        // Each HashMap gets its own random order; many tries make a lucky
        // pass of a broken canonicalizer vanishingly unlikely.
        let first = encode(&state());
        for _ in 0..20 {
            assert_eq!(encode(&state()), first);
        }
        assert_eq!(ResolverState::decode(first.as_slice()).expect("decodes"), state());
    }
}
