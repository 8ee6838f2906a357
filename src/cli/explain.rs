//! `edgeflag explain`: why one request gets what it gets for one flag.
//!
//! The rule-by-rule story comes from the resolver's own trace, so it cannot
//! drift from what a resolve does. This module only groups the trace by rule
//! and adds what the trace cannot know: why a flag is missing altogether,
//! the context values a rule looked at, and whether a segment miss was the
//! bitset's doing.

use super::{load_materializations, load_state, read_request, CliError, ExplainArgs, Io};
use crate::hash;
use crate::proto::admin::flag;
use crate::proto::admin::flag::rule::assignment::Assignment;
use crate::proto::resolver::ResolveReason;
use crate::proto::types::targeting::criterion::Criterion as Crit;
use crate::proto::wkt::{value::Kind, Struct, Value};
use crate::resolve::{self, sticky::Sticky, sticky::StickySet, FlagResult, Request, DEFAULT_SELECTOR};
use crate::state::snapshot::{FlagEntry, Snapshot};
use crate::targeting;

pub(super) fn run(args: &ExplainArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let snap = load_state(&args.state)?;
    let sticky = load_materializations(args.materializations.as_deref())?;
    let req = read_request(io)?;
    let ctx = req.evaluation_context.clone().unwrap_or_default();
    let input = Input {
        flag: &args.flag,
        client_secret: &req.client_secret,
        context: &ctx,
        sticky: &sticky,
        sticky_given: args.materializations.is_some(),
    };
    let text = explain(&snap, &input)?;
    io.stdout.write_all(text.as_bytes())?;
    Ok(0)
}

struct Input<'a> {
    flag: &'a str,
    client_secret: &'a str,
    context: &'a Struct,
    sticky: &'a StickySet,
    sticky_given: bool,
}

/// Lines of output; `push` keeps the call sites short.
#[derive(Default)]
struct Out(Vec<String>);

impl Out {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn kv(&mut self, key: &str, value: impl std::fmt::Display) {
        self.0.push(format!("{key:<14}{value}"));
    }
    fn finish(self) -> String {
        let mut s = self.0.join("\n");
        s.push('\n');
        s
    }
}

fn explain(snap: &Snapshot, input: &Input<'_>) -> Result<String, CliError> {
    let mut out = Out::default();
    let secret_known = snap.credential(input.client_secret).is_some();

    let Some(flag) = find_flag(snap, input.flag, &mut out) else {
        out.push(format!(
            "{} is not in this state ({} flags), so a resolve skips it: it is absent from the response.",
            input.flag,
            snap.flags.len()
        ));
        let similar = similar_flags(snap, input.flag);
        if !similar.is_empty() {
            out.push(format!("did you mean: {}", similar.join(", ")));
        }
        if !secret_known {
            out.push(format!("(also: {})", unknown_secret(input.client_secret)));
        }
        return Ok(out.finish());
    };
    let name = flag.name();
    out.kv(
        "flag",
        format!(
            "{name} ({}; variants: {}; {} rule{})",
            flag_state(flag),
            list_or(flag.variants.iter().map(|v| v.name.as_str()), "none"),
            flag.proto.rules.len(),
            plural(flag.proto.rules.len())
        ),
    );

    let Some(cred) = snap.credential(input.client_secret) else {
        out.push("");
        out.push(format!(
            "{}: a resolve fails with UNAUTHENTICATED and resolves nothing.",
            unknown_secret(input.client_secret)
        ));
        out.push(format!(
            "{name} is enabled for: {}",
            list_or(flag.proto.clients.iter().map(String::as_str), "no client")
        ));
        return Ok(out.finish());
    };
    out.kv(
        "client",
        format!(
            "{} (credential {}; environments: {})",
            cred.client,
            cred.credential,
            list_or(cred.environments.iter().map(String::as_str), "none")
        ),
    );
    out.kv(
        "sticky",
        if input.sticky_given {
            "from --materializations; what it lacks is read as \"not stored\""
        } else {
            "none given (--materializations): every sticky read is answered \"not stored\""
        },
    );

    if !flag.active {
        out.push("");
        out.push(format!(
            "{name} is {}: resolves only serve ACTIVE flags, so it is absent from the response and the client uses its default.",
            flag_state(flag)
        ));
        return Ok(out.finish());
    }
    if !flag.proto.clients.contains(&cred.client) {
        out.push("");
        out.push(format!(
            "{name} is not enabled for {}, so it is absent from the response. It is enabled for: {}",
            cred.client,
            list_or(flag.proto.clients.iter().map(String::as_str), "no client")
        ));
        return Ok(out.finish());
    }

    let flags = [name.to_string()];
    let req = Request { flags: &flags, context: input.context, client_secret: input.client_secret };
    let mut trace = Vec::new();
    let res = resolve::resolve(snap, &req, Sticky::Known(input.sticky), Some(&mut trace))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let Some(result) = res.flags.iter().find(|f| f.flag.name() == name) else {
        out.push(format!("the resolver returned nothing for {name}"));
        return Ok(out.finish());
    };

    let (by_rule, notes) = group_trace(flag, &trace);
    let decided = match (&result.assigned, result.reason) {
        (Some(a), _) => Some(a.rule_index),
        (None, ResolveReason::NoSegmentMatch) => None,
        (None, _) => by_rule.iter().rposition(|lines| !lines.is_empty()),
    };
    let total = flag.proto.rules.len();
    if total == 0 {
        out.push("");
        out.push("the flag has no rules");
    }
    for (i, rule) in flag.proto.rules.iter().enumerate() {
        out.push("");
        out.push(format!("rule {}/{total}: {}", i + 1, display_rule(&rule.name)));
        if let Some(d) = decided.filter(|d| i > *d) {
            out.push(format!("  - not evaluated: rule {} decided the flag", d + 1));
            continue;
        }
        out.push(format!("  segment {}; {}", display_or(&rule.segment, "(none)"), key_note(rule, input.context)));
        let lines = by_rule.get(i).map(Vec::as_slice).unwrap_or(&[]);
        if lines.is_empty() {
            if rule.assignment_spec.is_none() {
                out.push("  - has no assignment spec, so it assigns nothing; next rule");
            } else {
                out.push("  - skipped (the trace gives no detail)");
            }
        }
        for line in lines {
            out.push(format!("  - {line}"));
            let mut hints = Vec::new();
            if line.starts_with("unit not in segment") {
                hints = targeting_hints(snap, &rule.segment, input.context);
                hints.extend(bitset_hint(snap, rule, input.context));
            } else if line.ends_with("fails the segment targeting") {
                hints = targeting_hints(snap, &rule.segment, input.context);
            }
            for hint in hints {
                out.push(format!("      {hint}"));
            }
        }
        if lines.iter().any(|l| l.starts_with("bucket ")) {
            assignment_table(&mut out, flag, rule);
        }
    }
    for note in notes.iter().filter(|n| !n.starts_with("=>")) {
        out.push(format!("note: {note}"));
    }

    out.push("");
    outcome(&mut out, result, &res.writes);
    Ok(out.finish())
}

/// The flag by exact name, or `flags/<name>` for a bare name.
fn find_flag<'s>(snap: &'s Snapshot, name: &str, out: &mut Out) -> Option<&'s FlagEntry> {
    if let Some(f) = snap.flag(name) {
        return Some(f);
    }
    if name.starts_with("flags/") {
        return None;
    }
    let full = format!("flags/{name}");
    let f = snap.flag(&full)?;
    out.push(format!("(reading --flag {name} as {full})"));
    Some(f)
}

fn flag_state(f: &FlagEntry) -> &'static str {
    flag::State::try_from(f.proto.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN STATE")
}

/// Enough of a secret to recognise a typo without printing it whole.
fn unknown_secret(secret: &str) -> String {
    if secret.is_empty() {
        return "the request has no clientSecret".to_string();
    }
    let shown: String = secret.chars().take(4).collect();
    format!("client secret \"{shown}…\" ({} characters) is not recognized by this state", secret.chars().count())
}

/// Up to five flag names close to `query`: sharing a substring of the last
/// path segment, or within a small edit distance of it.
fn similar_flags(snap: &Snapshot, query: &str) -> Vec<String> {
    let q = last_segment(query).to_ascii_lowercase();
    if q.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<(usize, &str)> = snap
        .flags
        .iter()
        .filter_map(|f| {
            let n = last_segment(f.name()).to_ascii_lowercase();
            let d = edit_distance(&q, &n);
            let close = d <= 2 || (q.len() >= 3 && (n.contains(&q) || q.contains(&n) && n.len() >= 3));
            close.then_some((d, f.name()))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n.to_string()).collect()
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Levenshtein distance over chars; names are short, so O(n·m) is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(usize::MAX).saturating_add(usize::from(ca != *cb));
            let del = prev.get(j + 1).copied().unwrap_or(usize::MAX).saturating_add(1);
            let ins = cur.get(j).copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// Splits the trace into per-rule lines (prefix removed) and the rest. The
/// resolver writes `  <rule name>: <what happened>`, rules in order, so a
/// line belongs to the first rule at or after the current one whose name
/// prefixes it; that keeps unnamed or same-named rules apart.
fn group_trace(flag: &FlagEntry, trace: &[String]) -> (Vec<Vec<String>>, Vec<String>) {
    let rules = &flag.proto.rules;
    let mut by_rule: Vec<Vec<String>> = vec![Vec::new(); rules.len()];
    let mut notes = Vec::new();
    let mut cur = 0;
    for line in trace {
        let Some(body) = line.strip_prefix("  ") else {
            // The unindented line names the flag.
            continue;
        };
        let found =
            rules.iter().enumerate().skip(cur).find_map(|(i, r)| {
                body.strip_prefix(r.name.as_str()).and_then(|b| b.strip_prefix(": ")).map(|b| (i, b))
            });
        match found {
            Some((i, rest)) => {
                cur = i;
                if let Some(lines) = by_rule.get_mut(i) {
                    lines.push(rest.to_string());
                }
            }
            None => notes.push(body.to_string()),
        }
    }
    (by_rule, notes)
}

fn display_rule(name: &str) -> &str {
    display_or(name, "(unnamed rule)")
}

fn display_or<'a>(s: &'a str, empty: &'a str) -> &'a str {
    if s.is_empty() {
        empty
    } else {
        s
    }
}

/// Which context value the rule buckets on, as the request has it.
fn key_note(rule: &flag::Rule, ctx: &Struct) -> String {
    let selector = display_or(&rule.targeting_key_selector, DEFAULT_SELECTOR);
    format!("unit from {selector} = {}", context_value(ctx, selector))
}

fn context_value(ctx: &Struct, path: &str) -> String {
    match targeting::lookup(ctx, path) {
        None => "(absent)".to_string(),
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "(unprintable)".to_string()),
    }
}

/// The unit string the resolver would bucket, for the common valid cases.
fn unit_of(ctx: &Struct, rule: &flag::Rule) -> Option<String> {
    let selector = display_or(&rule.targeting_key_selector, DEFAULT_SELECTOR);
    match targeting::lookup(ctx, selector).and_then(|v: &Value| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::NumberValue(n)) if n.is_finite() && n.fract() == 0.0 => Some(format!("{n:.0}")),
        _ => None,
    }
}

/// The context values a segment's targeting reads, and what else it needs.
fn targeting_hints(snap: &Snapshot, segment: &str, ctx: &Struct) -> Vec<String> {
    let mut hints = Vec::new();
    let Some(t) = snap.segments.get(segment).and_then(|s| s.proto.targeting.as_ref()) else {
        return hints;
    };
    let mut keys: Vec<&String> = t.criteria.keys().collect();
    keys.sort();
    for k in keys {
        let Some(c) = t.criteria.get(k).and_then(|c| c.criterion.as_ref()) else {
            continue;
        };
        hints.push(match c {
            Crit::Attribute(a) => {
                format!("targeting reads {} = {}", a.attribute_name, context_value(ctx, &a.attribute_name))
            }
            Crit::Segment(s) => format!("targeting needs membership of segment {}", s.segment),
            Crit::MaterializedSegment(m) => {
                let how = if snap.bloom_filters.contains_key(&m.materialized_segment) {
                    "bloom filter in the state"
                } else {
                    "sticky store"
                };
                format!("targeting needs membership of {} ({how})", m.materialized_segment)
            }
        });
    }
    hints
}

/// Whether the segment's own bitset allocates the unit's bucket: the trace
/// says only "targeting or bitset".
fn bitset_hint(snap: &Snapshot, rule: &flag::Rule, ctx: &Struct) -> Option<String> {
    let seg = snap.segments.get(&rule.segment)?;
    Some(match (seg.bitset(), unit_of(ctx, rule)) {
        (None, _) => "its bitset allocates every bucket, so the targeting excluded the unit".to_string(),
        (Some(bits), Some(unit)) => {
            let b = hash::bucket(&snap.bitset_salt, &unit, hash::SEGMENT_BUCKETS);
            if usize::try_from(b).is_ok_and(|i| bits.get(i)) {
                format!("bitset allocates the unit's bucket {b}, so the targeting excluded the unit")
            } else {
                format!(
                    "bitset miss: the unit's bucket {b} is not allocated ({} of {} buckets are)",
                    bits.count_ones(),
                    bits.len_bits()
                )
            }
        }
        (Some(_), None) => "the segment has a bitset; without a unit no bucket can be checked".to_string(),
    })
}

fn assignment_table(out: &mut Out, flag: &FlagEntry, rule: &flag::Rule) {
    let Some(spec) = &rule.assignment_spec else {
        return;
    };
    out.push(format!("  assignments (of {} buckets):", spec.bucket_count));
    for a in &spec.assignments {
        let ranges: Vec<String> = a.bucket_ranges.iter().map(|r| format!("[{}, {})", r.lower, r.upper)).collect();
        let what = match &a.assignment {
            Some(Assignment::Variant(v)) => {
                let known = flag.variants.iter().any(|fv| fv.name == v.variant);
                format!("variant {}{}", v.variant, if known { "" } else { " (unknown)" })
            }
            Some(Assignment::Fallthrough(_)) => "fallthrough".to_string(),
            Some(Assignment::ClientDefault(_)) => "client default".to_string(),
            None => "nothing".to_string(),
        };
        out.push(format!(
            "    {:<12} {} -> {what}",
            display_or(&a.assignment_id, "(no id)"),
            list_or(ranges.iter().map(String::as_str), "no ranges")
        ));
    }
}

fn outcome(out: &mut Out, result: &FlagResult<'_, '_>, writes: &[resolve::sticky::Record]) {
    out.kv("result", result.reason.as_str_name());
    out.kv("meaning", meaning(result));
    if let Some(a) = &result.assigned {
        if let Some(v) = a.variant {
            out.kv("variant", &v.name);
            out.kv("value", &v.value_json);
        }
        out.kv("rule", format!("{} (rule {})", display_rule(&a.rule.name), a.rule_index + 1));
        out.kv("assignment", display_or(a.assignment_id, "(no id)"));
        if let Some(u) = &a.unit {
            out.kv("unit", u);
        }
    }
    for f in &result.fallthroughs {
        out.kv(
            "fallthrough",
            format!("{} (rule {}), assignment {}", display_rule(&f.rule.name), f.rule_index + 1, f.assignment_id),
        );
    }
    out.kv("shouldApply", result.should_apply());
    for w in writes {
        let variant = display_or(&w.variant, "(none)");
        out.kv("sticky write", format!("unit {} in {} for {}: variant {variant}", w.unit, w.materialization, w.rule));
    }
}

fn meaning(result: &FlagResult<'_, '_>) -> &'static str {
    match (result.reason, &result.assigned) {
        (ResolveReason::Match, Some(a)) if a.variant.is_none() => {
            "a rule matched with a client-default assignment: the client uses its own default value"
        }
        (ResolveReason::Match, _) => "a rule matched and assigned a variant",
        (ResolveReason::NoSegmentMatch, _) => "no rule matched: no variant; the client uses its default value",
        (ResolveReason::TargetingKeyError, _) => {
            "the targeting key is not usable (see the rule above): no variant; the client uses its default value"
        }
        (ResolveReason::MaterializationNotSupported, _) => {
            "the flag needs a sticky assignment this resolve could not get (no sticky store, or its read failed): no variant, nothing written; the client uses its default value"
        }
        _ => "no variant; the client uses its default value",
    }
}

fn list_or<'a>(items: impl Iterator<Item = &'a str>, empty: &str) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        empty.to_string()
    } else {
        v.join(", ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
