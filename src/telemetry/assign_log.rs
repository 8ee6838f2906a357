//! Exposure events (`FlagAssigned`) waiting for a checkpoint, on a
//! lock-free queue with a running byte estimate, plus the splitting that
//! keeps any one event under a queue message's size.

use crate::proto::events::FlagAssigned;
use crossbeam_queue::SegQueue;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};

/// Beyond this much pending, new events are dropped (and counted) rather
/// than letting a dead queue exhaust the isolate's 128 MB.
pub const MAX_PENDING_ASSIGN_BYTES: u64 = 32 << 20;

/// Bytes a message of `len` bytes takes as one entry of a repeated field
/// numbered below 16: tag, length prefix, body.
pub(crate) fn entry_size(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

pub(crate) struct AssignLogger {
    /// Events put back by a checkpoint that ran out of room: first in line.
    carry: SegQueue<(FlagAssigned, usize)>,
    queue: SegQueue<(FlagAssigned, usize)>,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl AssignLogger {
    pub(crate) const fn new() -> Self {
        AssignLogger {
            carry: SegQueue::new(),
            queue: SegQueue::new(),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn push(&self, ev: FlagAssigned) -> bool {
        let size = entry_size(ev.encoded_len());
        if self.bytes.load(Ordering::Relaxed).saturating_add(size as u64) > MAX_PENDING_ASSIGN_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Counted before it is visible, so a pop never underflows the sum.
        self.bytes.fetch_add(size as u64, Ordering::AcqRel);
        self.queue.push((ev, size));
        true
    }

    pub(crate) fn push_front(&self, ev: FlagAssigned, size: usize) {
        self.bytes.fetch_add(size as u64, Ordering::AcqRel);
        self.carry.push((ev, size));
    }

    pub(crate) fn pop(&self) -> Option<(FlagAssigned, usize)> {
        let (ev, size) = self.carry.pop().or_else(|| self.queue.pop())?;
        self.bytes.fetch_sub(size as u64, Ordering::AcqRel);
        Some((ev, size))
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    pub(crate) fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::AcqRel)
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Splits `msg` along one repeated field so each piece's [`entry_size`]
/// stays within `max`; a piece keeps every other field of `msg`. An
/// element too big even alone is dropped, and counted in the second value.
pub(crate) fn split_by<M, E>(mut msg: M, max: usize, field: fn(&mut M) -> &mut Vec<E>) -> (Vec<M>, u64)
where
    M: Message + Clone,
    E: Message,
{
    if entry_size(msg.encoded_len()) <= max {
        return (vec![msg], 0);
    }
    let items = std::mem::take(field(&mut msg));
    let base = msg.encoded_len();
    if entry_size(base) > max {
        return (Vec::new(), items.len().max(1) as u64);
    }
    let mut out = Vec::new();
    let mut dropped = 0u64;
    let mut cur: Vec<E> = Vec::new();
    let mut cur_len = base;
    for item in items {
        let w = entry_size(item.encoded_len());
        if entry_size(base + w) > max {
            dropped += 1;
            continue;
        }
        if !cur.is_empty() && entry_size(cur_len + w) > max {
            let mut piece = msg.clone();
            *field(&mut piece) = std::mem::take(&mut cur);
            out.push(piece);
            cur_len = base;
        }
        cur.push(item);
        cur_len += w;
    }
    if !cur.is_empty() {
        *field(&mut msg) = cur;
        out.push(msg);
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::events::flag_assigned::AppliedFlag;

    fn event(id: &str, flags: usize) -> FlagAssigned {
        FlagAssigned {
            resolve_id: id.to_string(),
            flags: (0..flags)
                .map(|i| AppliedFlag {
                    flag: format!("flags/f{i}"),
                    targeting_key: "u".repeat(90),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn byte_estimate_follows_the_queue() {
        let q = AssignLogger::new();
        let e = event("r1", 3);
        let size = entry_size(e.encoded_len());
        assert!(q.push(e));
        assert_eq!(q.pending_bytes(), size as u64);
        let (e, s) = q.pop().expect("queued");
        assert_eq!((s, q.pending_bytes()), (size, 0));
        q.push_front(e, s);
        assert!(q.push(event("r2", 1)));
        assert_eq!(q.pop().map(|(e, _)| e.resolve_id), Some("r1".to_string()));
        assert_eq!(q.pop().map(|(e, _)| e.resolve_id), Some("r2".to_string()));
        assert_eq!(q.pending_bytes(), 0);
    }

    #[test]
    fn oversized_events_split_by_flag_keeping_the_resolve_id() {
        let e = event("big", 1000);
        let total = e.flags.len();
        let (pieces, dropped) = split_by(e, 10_000, |m: &mut FlagAssigned| &mut m.flags);
        assert_eq!(dropped, 0);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| entry_size(p.encoded_len()) <= 10_000 && p.resolve_id == "big"));
        assert_eq!(pieces.iter().map(|p| p.flags.len()).sum::<usize>(), total);
        let (one, _) = split_by(event("small", 2), 10_000, |m: &mut FlagAssigned| &mut m.flags);
        assert_eq!(one.len(), 1);
        let (none, dropped) = split_by(event("x", 2), 50, |m: &mut FlagAssigned| &mut m.flags);
        assert!(none.is_empty());
        assert_eq!(dropped, 2);
    }
}
