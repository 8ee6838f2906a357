//! Attribute criteria: read a dotted path from the evaluation context and
//! test it with one rule, element by element when the value is a list.

use super::values::{compare_versions, number_to_string, number_to_timestamp, parse_number, parse_timestamp, Instant};
use super::EvalError;
use crate::proto::types::targeting::{
    self, criterion::attribute_criterion::Rule as AttrRule, criterion::AttributeCriterion,
    inner_rule::Rule as InnerKind, range_rule, value::Value as TKind,
};
use crate::proto::wkt::{value::Kind, Struct, Value};
use std::cmp::Ordering;

/// Reads `a.b.c` through nested structs. A missing step, or a non-struct in
/// the middle of the path, reads as absent.
pub fn lookup<'a>(ctx: &'a Struct, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = ctx.fields.get(first)?;
    for part in parts {
        match &cur.kind {
            Some(Kind::StructValue(s)) => cur = s.fields.get(part)?,
            _ => return None,
        }
    }
    Some(cur)
}

fn is_null(v: Option<&Value>) -> bool {
    matches!(v.map(|v| &v.kind), None | Some(None) | Some(Some(Kind::NullValue(_))))
}

/// The elements a rule tests: a list's items, nothing for null or missing,
/// otherwise the value itself.
fn elements(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value { kind: Some(Kind::ListValue(l)) }) => &l.values,
        Some(v) if !is_null(Some(v)) => std::slice::from_ref(v),
        _ => &[],
    }
}

/// Does `criterion` hold for `ctx`?
pub fn attribute_matches(criterion: &AttributeCriterion, ctx: &Struct) -> Result<bool, EvalError> {
    let value = lookup(ctx, &criterion.attribute_name);
    let Some(rule) = &criterion.rule else {
        return Err(EvalError::Unrecognized);
    };
    let op = match rule {
        AttrRule::AnyRule(any) => {
            let inner = inner_op(any.rule.as_ref())?;
            let elems = elements(value);
            if elems.is_empty() {
                return Ok(false);
            }
            let op = inner.ok_or(EvalError::Unrecognized)?;
            return Ok(elems.iter().any(|e| op.matches(e)));
        }
        AttrRule::AllRule(all) => {
            let inner = inner_op(all.rule.as_ref())?;
            let elems = elements(value);
            if elems.is_empty() {
                return Ok(true);
            }
            let op = inner.ok_or(EvalError::Unrecognized)?;
            return Ok(elems.iter().all(|e| op.matches(e)));
        }
        AttrRule::EqRule(r) => Op::Eq(r.value.as_ref().ok_or(EvalError::Unrecognized)?),
        AttrRule::SetRule(r) => Op::Set(&r.values),
        AttrRule::RangeRule(r) => Op::Range(r),
        AttrRule::StartsWithRule(r) => Op::StartsWith(&r.value),
        AttrRule::EndsWithRule(r) => Op::EndsWith(&r.value),
        AttrRule::ContainsRule(r) => Op::Contains(&r.value),
    };
    if is_null(value) {
        return Ok(op.accepts_null());
    }
    Ok(elements(value).iter().any(|e| op.matches(e)))
}

/// `Ok(None)` for an inner rule with no rule set: an error only if there
/// is an element to test it on.
fn inner_op(inner: Option<&targeting::InnerRule>) -> Result<Option<Op<'_>>, EvalError> {
    let inner = inner.ok_or(EvalError::Unrecognized)?;
    Ok(match &inner.rule {
        None => None,
        Some(InnerKind::EqRule(r)) => Some(Op::Eq(r.value.as_ref().ok_or(EvalError::Unrecognized)?)),
        Some(InnerKind::SetRule(r)) => Some(Op::Set(&r.values)),
        Some(InnerKind::RangeRule(r)) => Some(Op::Range(r)),
        Some(InnerKind::StartsWithRule(r)) => Some(Op::StartsWith(&r.value)),
        Some(InnerKind::EndsWithRule(r)) => Some(Op::EndsWith(&r.value)),
        Some(InnerKind::ContainsRule(r)) => Some(Op::Contains(&r.value)),
    })
}

enum Op<'r> {
    Eq(&'r targeting::Value),
    Set(&'r [targeting::Value]),
    Range(&'r targeting::RangeRule),
    StartsWith(&'r str),
    EndsWith(&'r str),
    Contains(&'r str),
}

impl Op<'_> {
    /// An `eq` (or set member) with no value is the is-null test.
    fn accepts_null(&self) -> bool {
        match self {
            Op::Eq(v) => v.value.is_none(),
            Op::Set(vs) => vs.iter().any(|v| v.value.is_none()),
            _ => false,
        }
    }

    fn matches(&self, elem: &Value) -> bool {
        if is_null(Some(elem)) {
            return self.accepts_null();
        }
        match self {
            Op::Eq(v) => equals(v, elem),
            Op::Set(vs) => vs.iter().any(|v| equals(v, elem)),
            Op::Range(r) => in_range(r, elem),
            Op::StartsWith(p) => as_str(elem).is_some_and(|s| s.starts_with(p)),
            Op::EndsWith(p) => as_str(elem).is_some_and(|s| s.ends_with(p)),
            Op::Contains(p) => as_str(elem).is_some_and(|s| s.contains(p)),
        }
    }
}

fn as_str(v: &Value) -> Option<&str> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Some(*b),
        Some(Kind::StringValue(s)) => Some(s == "true" || s == "TRUE"),
        _ => None,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match &v.kind {
        Some(Kind::NumberValue(n)) => Some(*n),
        Some(Kind::StringValue(s)) => parse_number(s),
        _ => None,
    }
}

fn as_timestamp(v: &Value) -> Option<Instant> {
    match &v.kind {
        Some(Kind::NumberValue(n)) => number_to_timestamp(*n),
        Some(Kind::StringValue(s)) => parse_timestamp(s),
        _ => None,
    }
}

fn rule_instant(ts: &crate::proto::wkt::Timestamp) -> Instant {
    (ts.seconds, ts.nanos.max(0) as u32)
}

/// Compares a context element with a rule value of the rule value's type.
/// `None` when the element cannot be read as that type.
fn compare(rule: &TKind, elem: &Value) -> Option<Ordering> {
    match rule {
        TKind::BoolValue(b) => as_bool(elem).map(|x| x.cmp(b)),
        TKind::NumberValue(n) => as_number(elem).and_then(|x| x.partial_cmp(n)),
        TKind::StringValue(s) => match &elem.kind {
            Some(Kind::StringValue(x)) => Some(x.as_str().cmp(s.as_str())),
            Some(Kind::NumberValue(x)) => Some(number_to_string(*x).as_str().cmp(s.as_str())),
            _ => None,
        },
        TKind::TimestampValue(ts) => as_timestamp(elem).map(|x| x.cmp(&rule_instant(ts))),
        TKind::VersionValue(v) => as_str(elem).map(|x| compare_versions(x, &v.version)),
        TKind::ListValue(_) => None,
    }
}

fn equals(rule: &targeting::Value, elem: &Value) -> bool {
    match &rule.value {
        None => false,
        // Versions are equal only as written: "1.0" is not "1.0.0".
        Some(TKind::VersionValue(v)) => as_str(elem) == Some(v.version.as_str()),
        Some(kind) => compare(kind, elem) == Some(Ordering::Equal),
    }
}

fn in_range(r: &targeting::RangeRule, elem: &Value) -> bool {
    if r.start.is_none() && r.end.is_none() {
        return false;
    }
    let start_ok = match &r.start {
        None => true,
        Some(range_rule::Start::StartInclusive(v)) => bound(v, elem, |o| o != Ordering::Less),
        Some(range_rule::Start::StartExclusive(v)) => bound(v, elem, |o| o == Ordering::Greater),
    };
    let end_ok = match &r.end {
        None => true,
        Some(range_rule::End::EndInclusive(v)) => bound(v, elem, |o| o != Ordering::Greater),
        Some(range_rule::End::EndExclusive(v)) => bound(v, elem, |o| o == Ordering::Less),
    };
    start_ok && end_ok
}

/// `ok` receives the ordering of the element relative to the bound.
fn bound(v: &targeting::Value, elem: &Value, ok: impl Fn(Ordering) -> bool) -> bool {
    match &v.value {
        Some(kind) => compare(kind, elem).is_some_and(ok),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::types::targeting::{criterion::attribute_criterion::Rule, EqRule, RangeRule, SetRule};

    fn ctx(json: &str) -> Struct {
        serde_json::from_str(json).expect("context json")
    }

    fn tv(kind: TKind) -> targeting::Value {
        targeting::Value { value: Some(kind) }
    }

    fn crit(attr: &str, rule: Rule) -> AttributeCriterion {
        AttributeCriterion { attribute_name: attr.to_string(), rule: Some(rule) }
    }

    fn eq(attr: &str, kind: TKind) -> AttributeCriterion {
        crit(attr, Rule::EqRule(EqRule { value: Some(tv(kind)) }))
    }

    #[test]
    fn coercion_to_the_rule_type() {
        // Numbers compare with numeric strings, strings with numbers' shortest form.
        assert_eq!(attribute_matches(&eq("n", TKind::NumberValue(5.0)), &ctx(r#"{"n": "5"}"#)), Ok(true));
        assert_eq!(attribute_matches(&eq("n", TKind::NumberValue(5.0)), &ctx(r#"{"n": " 5"}"#)), Ok(false));
        assert_eq!(attribute_matches(&eq("s", TKind::StringValue("123".into())), &ctx(r#"{"s": 123}"#)), Ok(true));
        // Booleans accept "true"/"TRUE" only.
        assert_eq!(attribute_matches(&eq("b", TKind::BoolValue(true)), &ctx(r#"{"b": "TRUE"}"#)), Ok(true));
        assert_eq!(attribute_matches(&eq("b", TKind::BoolValue(true)), &ctx(r#"{"b": "True"}"#)), Ok(false));
        // Timestamps from epoch seconds or milliseconds, and from strings.
        let ts = TKind::TimestampValue(crate::proto::wkt::Timestamp { seconds: 1704164645, nanos: 0 });
        assert_eq!(attribute_matches(&eq("t", ts.clone()), &ctx(r#"{"t": 1704164645}"#)), Ok(true));
        assert_eq!(attribute_matches(&eq("t", ts.clone()), &ctx(r#"{"t": 1704164645000}"#)), Ok(true));
        assert_eq!(attribute_matches(&eq("t", ts), &ctx(r#"{"t": "2024-01-02T03:04:05Z"}"#)), Ok(true));
        // Versions: equality as written, ranges by parsed value.
        let v = |s: &str| TKind::VersionValue(targeting::SemanticVersion { version: s.into() });
        assert_eq!(attribute_matches(&eq("v", v("1.0")), &ctx(r#"{"v": "1.0.0"}"#)), Ok(false));
        let range = crit(
            "v",
            Rule::RangeRule(RangeRule { start: Some(range_rule::Start::StartInclusive(tv(v("1.0")))), end: None }),
        );
        assert_eq!(attribute_matches(&range, &ctx(r#"{"v": "1.0.0"}"#)), Ok(true));
    }

    #[test]
    fn unparsable_values_fail_only_their_comparison() {
        let range = crit(
            "xs",
            Rule::RangeRule(RangeRule {
                start: Some(range_rule::Start::StartInclusive(tv(TKind::NumberValue(0.0)))),
                end: Some(range_rule::End::EndInclusive(tv(TKind::NumberValue(100.0)))),
            }),
        );
        assert_eq!(attribute_matches(&range, &ctx(r#"{"xs": ["abc", 50]}"#)), Ok(true));
        assert_eq!(attribute_matches(&range, &ctx(r#"{"xs": "abc"}"#)), Ok(false));
    }

    #[test]
    fn dotted_paths_and_null() {
        let c = ctx(r#"{"user": {"id": "u1", "tags": null}, "user.id": "flat"}"#);
        assert_eq!(attribute_matches(&eq("user.id", TKind::StringValue("u1".into())), &c), Ok(true));
        let is_null = crit("user.tags", Rule::EqRule(EqRule { value: Some(targeting::Value { value: None }) }));
        assert_eq!(attribute_matches(&is_null, &c), Ok(true));
        let empty_set = crit("user.id", Rule::SetRule(SetRule { values: vec![] }));
        assert_eq!(attribute_matches(&empty_set, &c), Ok(false));
        let no_value = crit("user.id", Rule::EqRule(EqRule { value: None }));
        assert_eq!(attribute_matches(&no_value, &c), Err(EvalError::Unrecognized));
    }
}
