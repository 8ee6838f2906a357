//! Sticky assignments in Workers KV. One key per (unit, materialization,
//! rule), written once and never read-modified-written, so concurrent
//! requests cannot lose each other's writes; the variant rides in the key's
//! metadata so a single `list` answers every read for a (unit,
//! materialization) pair.

use crate::resolve::sticky::{ReadKey, Record, StickySet};
use ::worker::kv::KvStore;
use std::collections::BTreeSet;

/// `%` and `:` escaped so the parts of a key cannot run into each other.
fn enc(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

fn dec(s: &str) -> String {
    s.replace("%3A", ":").replace("%25", "%")
}

fn prefix(unit: &str, materialization: &str) -> String {
    format!("mat:{}:{}:", enc(unit), enc(materialization))
}

pub fn key(r: &Record) -> String {
    format!("{}{}", prefix(&r.unit, &r.materialization), enc(&r.rule))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    v: String,
}

/// Answers `reads` from KV. A pair whose lookup fails after one quick retry
/// is treated as absent and reported in the returned count; the resolve
/// goes on rather than failing the request.
pub async fn read(kv: &KvStore, reads: &BTreeSet<ReadKey>) -> (StickySet, usize) {
    let pairs: BTreeSet<(&str, &str)> = reads.iter().map(|r| (r.unit.as_str(), r.materialization.as_str())).collect();
    let lookups = pairs.iter().map(|(u, m)| async move { (*u, *m, list_pair(kv, u, m).await) });
    let results = futures_util::future::join_all(lookups).await;
    let mut set = StickySet::new();
    let mut failed = 0;
    for (unit, mat, result) in results {
        match result {
            Ok(rules) if rules.is_empty() => {}
            Ok(rules) => {
                set.insert(unit, mat, "", "");
                for (rule, variant) in rules {
                    set.insert(unit, mat, &rule, &variant);
                }
            }
            Err(e) => {
                failed += 1;
                ::worker::console_error!("sticky read of {mat} for a unit failed: {e}");
            }
        }
    }
    (set, failed)
}

async fn list_pair(kv: &KvStore, unit: &str, mat: &str) -> Result<Vec<(String, String)>, String> {
    let p = prefix(unit, mat);
    let mut last = String::new();
    // One retry: a transient KV error should not cost a sticky assignment,
    // and a second failure must not hold the request up any longer.
    for _ in 0..2 {
        match kv.list().prefix(p.clone()).limit(1000).execute().await {
            Ok(resp) => {
                return Ok(resp
                    .keys
                    .into_iter()
                    .filter_map(|k| {
                        let rule = dec(k.name.strip_prefix(&p)?);
                        let variant = k
                            .metadata
                            .and_then(|m| serde_json::from_value::<Meta>(m).ok())
                            .map(|m| m.v)
                            .unwrap_or_default();
                        Some((rule, variant))
                    })
                    .collect())
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Stores `writes`; runs after the response (`wait_until`). Each write is
/// retried once; failures are logged, never surfaced to the caller.
pub async fn write(kv: KvStore, writes: Vec<Record>, ttl_seconds: Option<u64>) {
    let puts = writes.iter().map(|r| {
        let kv = &kv;
        async move {
            for attempt in 0..2 {
                let builder = match kv.put(&key(r), r.variant.as_str()) {
                    Ok(b) => b,
                    Err(e) => {
                        ::worker::console_error!("sticky write failed: {e}");
                        return;
                    }
                };
                let builder = match builder.metadata(Meta { v: r.variant.clone() }) {
                    Ok(b) => b,
                    Err(e) => {
                        ::worker::console_error!("sticky write failed: {e}");
                        return;
                    }
                };
                let builder = match ttl_seconds {
                    Some(ttl) => builder.expiration_ttl(ttl.max(60)),
                    None => builder,
                };
                match builder.execute().await {
                    Ok(()) => return,
                    Err(e) if attempt == 1 => ::worker::console_error!("sticky write failed twice: {e}"),
                    Err(_) => {}
                }
            }
        }
    });
    futures_util::future::join_all(puts).await;
}
