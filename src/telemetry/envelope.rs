//! The queue message: `edgeflag.v1.Checkpoint` (proto/edgeflag/v1/
//! telemetry.proto) encoded as protobuf. Protobuf because the logs are
//! protobuf already (no JSON or base64 blow-up against the 128 KB message
//! limit) and because size is then exactly computable while packing.

use crate::proto::edgeflag::v1 as ef;
use crate::proto::resolver::WriteFlagLogsRequest;
use prost::encoding;
use prost::Message;
use std::fmt;

/// `Checkpoint.format` this code writes and accepts.
pub const FORMAT: u32 = 1;

/// Unique per message: a random per-isolate id plus a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointId {
    pub isolate: [u8; 16],
    pub sequence: u64,
}

impl CheckpointId {
    pub fn isolate_hex(&self) -> String {
        hex(&self.isolate)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", hex(&self.isolate), self.sequence)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        // A nibble is < 16 = DIGITS.len(), so `get` always finds it.
        for nibble in [b >> 4, b & 0xf] {
            if let Some(&d) = DIGITS.get(usize::from(nibble)) {
                s.push(char::from(d));
            }
        }
    }
    s
}

/// One queue message's content. Send [`Checkpoint::encode`]; on a failed
/// send hand it back with `Telemetry::restore` so it is retried unchanged,
/// id included.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub id: CheckpointId,
    /// Producer clock (epoch ms) when built.
    pub created_ms: u64,
    pub logs: WriteFlagLogsRequest,
    pub counters: ef::Counters,
}

impl Checkpoint {
    /// Protobuf `edgeflag.v1.Checkpoint`, written field by field so the
    /// logs are not cloned into an owned proto first.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        encoding::uint32::encode(1, &FORMAT, &mut buf);
        encoding::bytes::encode(2, &self.id.isolate.to_vec(), &mut buf);
        if self.id.sequence != 0 {
            encoding::uint64::encode(3, &self.id.sequence, &mut buf);
        }
        if self.created_ms != 0 {
            encoding::uint64::encode(4, &self.created_ms, &mut buf);
        }
        encoding::message::encode(5, &self.logs, &mut buf);
        encoding::message::encode(6, &self.counters, &mut buf);
        buf
    }

    pub fn encoded_len(&self) -> usize {
        encoding::uint32::encoded_len(1, &FORMAT)
            + encoding::bytes::encoded_len(2, &self.id.isolate.to_vec())
            + if self.id.sequence != 0 { encoding::uint64::encoded_len(3, &self.id.sequence) } else { 0 }
            + if self.created_ms != 0 { encoding::uint64::encoded_len(4, &self.created_ms) } else { 0 }
            + encoding::message::encoded_len(5, &self.logs)
            + encoding::message::encoded_len(6, &self.counters)
    }
}

/// Why a queue message was not a checkpoint. The consumer counts it
/// (`malformed_messages`), logs it and acks the message: retrying would
/// not make it parse.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    Protobuf(String),
    Format(u32),
    IsolateId(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Protobuf(e) => write!(f, "not an edgeflag.v1.Checkpoint: {e}"),
            DecodeError::Format(v) => write!(f, "checkpoint format {v}, expected {FORMAT}"),
            DecodeError::IsolateId(n) => write!(f, "isolate id of {n} bytes, expected 16"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Parses one queue message body (the bytes `Checkpoint::encode` wrote).
pub fn decode_message(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
    let m = ef::Checkpoint::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    if m.format != FORMAT {
        return Err(DecodeError::Format(m.format));
    }
    let isolate: [u8; 16] =
        m.isolate_id.as_slice().try_into().map_err(|_| DecodeError::IsolateId(m.isolate_id.len()))?;
    Ok(Checkpoint {
        id: CheckpointId { isolate, sequence: m.sequence },
        created_ms: m.created_ms,
        logs: m.logs.unwrap_or_default(),
        counters: m.counters.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::events::FlagAssigned;

    fn sample() -> Checkpoint {
        Checkpoint {
            id: CheckpointId { isolate: *b"0123456789abcdef", sequence: 7 },
            created_ms: 1_700_000_000_000,
            logs: WriteFlagLogsRequest {
                flag_assigned: vec![FlagAssigned { resolve_id: "r".into(), ..Default::default() }],
                ..Default::default()
            },
            counters: ef::Counters { queue_sends_ok: 3, ..Default::default() },
        }
    }

    #[test]
    fn round_trips_and_matches_the_proto() {
        let cp = sample();
        let bytes = cp.encode();
        assert_eq!(bytes.len(), cp.encoded_len());
        assert_eq!(decode_message(&bytes), Ok(cp.clone()));
        let generic = ef::Checkpoint::decode(bytes.as_slice()).expect("proto");
        assert_eq!(generic.encode_to_vec(), bytes);
        assert_eq!(cp.id.to_string(), format!("{}-7", hex(b"0123456789abcdef")));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(decode_message(b"{\"flagAssigned\":[]}").is_err());
        assert!(matches!(decode_message(&[0xff, 0xff, 0xff]), Err(DecodeError::Protobuf(_))));
        assert_eq!(decode_message(&[]), Err(DecodeError::Format(0)));
        let mut m = ef::Checkpoint { format: 1, isolate_id: vec![1, 2, 3], ..Default::default() };
        assert_eq!(decode_message(&m.encode_to_vec()), Err(DecodeError::IsolateId(3)));
        m.format = 2;
        assert_eq!(decode_message(&m.encode_to_vec()), Err(DecodeError::Format(2)));
    }
}
