//! Sticky assignments in Workers KV, in the layout of `crate::sticky_layout`.
//! One key per (unit, materialization, rule), written once and never
//! read-modify-written, so concurrent requests cannot lose each other's
//! writes. Reads: one prefix `list` per (unit, materialization); keys that
//! carry edgeflag's metadata answer from it, keys without (the reference
//! worker's) get one bulk value read per pair. A pair whose reads fail is
//! unavailable, never absent. Every KV call is bounded in time, and so is
//! each pair's read as a whole (retries included).

use super::{faults, runtime, telemetry};
use crate::faults::Site;
use crate::resolve::sticky::{ReadKey, Record, StickySet};
use crate::sticky_layout::{self, Listed, Meta};
use crate::telemetry::StickyWrite;
use ::worker::kv::KvStore;
use ::worker::Delay;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

/// Per KV call attempt; two attempts at most. KV answers in milliseconds
/// when healthy, so a call this slow is failing, and the resolve must not
/// wait on it.
const ATTEMPT_TIMEOUT_MS: f64 = 1000.0;
const ATTEMPTS: usize = 2;
/// All of one pair's calls (list, then value reads) end by this much after
/// its read started, retries included.
const PAIR_BUDGET_MS: f64 = 2000.0;
/// Keys one bulk read may ask for (the binding's limit).
const BULK_MAX: usize = 100;

/// Runs `call` up to [`ATTEMPTS`] times, each cut off at
/// [`ATTEMPT_TIMEOUT_MS`] or at `deadline_ms` (epoch ms), whichever is
/// first; no retry without time left, so a failing KV never holds the
/// request up for long.
pub(super) async fn bounded<T, F, Fut>(what: &str, deadline_ms: f64, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ::worker::kv::KvError>>,
{
    let mut last = format!("{what}: no time left");
    for _ in 0..ATTEMPTS {
        let left = (deadline_ms - runtime::now_ms()).min(ATTEMPT_TIMEOUT_MS);
        if left < 1.0 {
            break;
        }
        let attempt = Box::pin(call());
        let timeout = Delay::from(Duration::from_millis(left as u64));
        match futures_util::future::select(attempt, timeout).await {
            futures_util::future::Either::Left((Ok(v), _)) => return Ok(v),
            futures_util::future::Either::Left((Err(e), _)) => last = format!("{what}: {e}"),
            futures_util::future::Either::Right(_) => last = format!("{what}: no answer within {left:.0} ms"),
        }
    }
    Err(last)
}

/// What KV holds for one (unit, materialization): whether any key exists
/// (membership) and rule → variant, or an error when it could not be read.
type PairResult = Result<(bool, Vec<(String, String)>), String>;

/// Answers `reads` from KV, all pairs in parallel. Returns the set and how
/// many pairs could not be read (marked unavailable in the set: flags that
/// need them resolve as MATERIALIZATION_NOT_SUPPORTED and write nothing).
pub async fn read(kv: &KvStore, reads: &BTreeSet<ReadKey>) -> (StickySet, usize) {
    let mut wanted: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for r in reads {
        let rules = wanted.entry((r.unit.as_str(), r.materialization.as_str())).or_default();
        if !r.rule.is_empty() {
            rules.insert(r.rule.as_str());
        }
    }
    let lookups = wanted.iter().map(|((u, m), rules)| async move { (*u, *m, read_pair(kv, u, m, rules).await) });
    let results = futures_util::future::join_all(lookups).await;
    let mut set = StickySet::new();
    let mut failed = 0;
    for (unit, mat, result) in results {
        match result {
            Ok((false, _)) => {}
            Ok((true, rules)) => {
                set.insert(unit, mat, "", "");
                for (rule, variant) in rules {
                    set.insert(unit, mat, &rule, &variant);
                }
            }
            Err(e) => {
                failed += 1;
                set.mark_unavailable(unit, mat);
                ::worker::console_error!("edgeflag: sticky read of {mat} for a unit failed: {e}");
            }
        }
    }
    (set, failed)
}

/// One pair: the listing (membership, and variants from metadata), then,
/// only for `rules` asked about whose keys lack metadata, their values.
async fn read_pair(kv: &KvStore, unit: &str, mat: &str, rules: &BTreeSet<&str>) -> PairResult {
    let deadline = runtime::now_ms() + PAIR_BUDGET_MS;
    let p = sticky_layout::prefix(unit, mat);
    let listing = bounded("list", deadline, || {
        let p = p.clone();
        async move {
            faults::before_kv(Site::StickyRead).await?;
            kv.list().prefix(p).limit(1000).execute().await
        }
    })
    .await?;
    let keys: Vec<Listed> =
        listing.keys.iter().filter_map(|k| sticky_layout::listed(&p, &k.name, k.metadata.as_ref())).collect();
    let need = sticky_layout::value_reads(&keys, rules);
    let mut values: HashMap<String, Option<String>> = HashMap::new();
    for chunk in need.chunks(BULK_MAX) {
        values.extend(
            bounded("value read", deadline, || async {
                faults::before_kv(Site::StickyRead).await?;
                kv.get_bulk(chunk).text().await
            })
            .await?,
        );
    }
    let variants = sticky_layout::variants(&keys, |k| values.get(k).and_then(|v| v.as_deref()))
        .map(|(r, v)| (r.to_string(), v.to_string()))
        .collect();
    Ok((!keys.is_empty(), variants))
}

/// Stores `writes`; runs after the response (`wait_until`). The variant is
/// the value (what the reference worker reads) and also the metadata (so
/// edgeflag's reads need only the listing). Each write is retried once;
/// failures are logged and counted (`edgeflag_sticky_writes_total`), never
/// surfaced to the caller.
pub async fn write(kv: KvStore, writes: Vec<Record>, ttl_seconds: Option<u64>) {
    let puts = writes.iter().map(|r| {
        let kv = &kv;
        async move {
            let outcome = write_one(kv, r, ttl_seconds).await;
            telemetry::sticky_write(outcome);
        }
    });
    futures_util::future::join_all(puts).await;
}

async fn write_one(kv: &KvStore, r: &Record, ttl_seconds: Option<u64>) -> StickyWrite {
    let key = sticky_layout::key(&r.unit, &r.materialization, &r.rule);
    for attempt in 0..2 {
        let builder = match kv.put(&key, r.variant.as_str()) {
            Ok(b) => b,
            Err(e) => {
                ::worker::console_error!("sticky write failed: {e}");
                return StickyWrite::Failed;
            }
        };
        let builder = match builder.metadata(Meta { v: r.variant.clone() }) {
            Ok(b) => b,
            Err(e) => {
                ::worker::console_error!("sticky write failed: {e}");
                return StickyWrite::Failed;
            }
        };
        let builder = match ttl_seconds {
            Some(ttl) => builder.expiration_ttl(ttl.max(60)),
            None => builder,
        };
        let result = match faults::before_kv(Site::StickyWrite).await {
            Ok(()) => builder.execute().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) if attempt == 0 => return StickyWrite::Ok,
            Ok(()) => return StickyWrite::Retried,
            Err(e) if attempt == 1 => ::worker::console_error!("sticky write failed twice: {e}"),
            Err(e) => ::worker::console_warn!("sticky write failed, retrying once: {e}"),
        }
    }
    StickyWrite::Failed
}
