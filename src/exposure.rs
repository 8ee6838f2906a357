//! Exposure records: which assignments a client saw, as the resolve token
//! carries them and as `FlagAssigned` events report them. Pure: the clock,
//! the token keys and the queue belong to the caller.

use crate::api::ApiError;
use crate::proto::events::flag_assigned::{
    self, default_assignment::DefaultAssignmentReason, AssignmentInfo, DefaultAssignment,
};
use crate::proto::events::{ClientInfo, FallthroughAssignment, FlagAssigned};
use crate::proto::resolver::resolve_token_v1::AssignedFlag;
use crate::proto::resolver::{ApplyFlagsRequest, ResolveReason, ResolveTokenV1, Sdk};
use crate::proto::wkt::Timestamp;
use crate::resolve::{FlagResult, Resolution};
use crate::state::snapshot::Credential;
use std::collections::HashSet;

pub use flag_assigned::AppliedFlag;

/// google.protobuf.Timestamp's range (0001-01-01 to 9999-12-31): beyond
/// it the event could not be written as JSON.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

fn assigned_flag(f: &FlagResult<'_, '_>) -> AssignedFlag {
    let fallthrough_assignments = f
        .fallthroughs
        .iter()
        .map(|ft| FallthroughAssignment {
            rule: ft.rule.name.clone(),
            assignment_id: ft.assignment_id.to_string(),
            targeting_key: ft.unit.as_deref().unwrap_or("").to_string(),
            targeting_key_selector: ft.rule.targeting_key_selector.clone(),
        })
        .collect();
    let mut out = AssignedFlag {
        flag: f.flag.name().to_string(),
        reason: f.reason as i32,
        fallthrough_assignments,
        ..Default::default()
    };
    if let Some(a) = &f.assigned {
        out.targeting_key = a.unit.as_deref().unwrap_or("").to_string();
        // Raw, as Confidence reports it: blank stays blank.
        out.targeting_key_selector = a.rule.targeting_key_selector.clone();
        out.segment = a.rule.segment.clone();
        out.variant = a.variant.map(|v| v.name.clone()).unwrap_or_default();
        out.rule = a.rule.name.clone();
        out.assignment_id = a.assignment_id.to_string();
    }
    out
}

/// The token's assignments: one per flag the client should apply.
pub fn token_assignments(res: &Resolution<'_, '_>) -> std::collections::BTreeMap<String, AssignedFlag> {
    res.flags.iter().filter(|f| f.should_apply()).map(|f| (f.flag.name().to_string(), assigned_flag(f))).collect()
}

// NO_TREATMENT_MATCH is deprecated, but old tokens may still carry it.
#[allow(deprecated)]
fn default_reason(reason: i32) -> DefaultAssignmentReason {
    match ResolveReason::try_from(reason) {
        Ok(ResolveReason::NoSegmentMatch) => DefaultAssignmentReason::NoSegmentMatch,
        Ok(ResolveReason::NoTreatmentMatch) => DefaultAssignmentReason::NoTreatmentMatch,
        Ok(ResolveReason::FlagArchived) => DefaultAssignmentReason::FlagArchived,
        // A client-default MATCH included: the event has no "client default".
        _ => DefaultAssignmentReason::Unspecified,
    }
}

fn applied_flag(a: AssignedFlag, apply_time: Timestamp) -> AppliedFlag {
    let assignment = if a.variant.is_empty() {
        flag_assigned::applied_flag::Assignment::DefaultAssignment(DefaultAssignment {
            reason: default_reason(a.reason) as i32,
        })
    } else {
        flag_assigned::applied_flag::Assignment::AssignmentInfo(AssignmentInfo {
            segment: a.segment,
            variant: a.variant,
        })
    };
    AppliedFlag {
        flag: a.flag,
        targeting_key: a.targeting_key,
        targeting_key_selector: a.targeting_key_selector,
        assignment: Some(assignment),
        assignment_id: a.assignment_id,
        rule: a.rule,
        fallthrough_assignments: a.fallthrough_assignments,
        apply_time: Some(apply_time),
    }
}

/// The exposure of a resolve with `apply=true`: every flag that should be
/// applied, all at `apply_time`.
pub fn applied_flags_from_resolution(res: &Resolution<'_, '_>, apply_time: Timestamp) -> Vec<AppliedFlag> {
    res.flags.iter().filter(|f| f.should_apply()).map(|f| applied_flag(assigned_flag(f), apply_time)).collect()
}

/// One flag of an apply, from what the token recorded.
pub fn applied_flag_from_token(a: &AssignedFlag, apply_time: Timestamp) -> AppliedFlag {
    applied_flag(a.clone(), apply_time)
}

/// The event for one resolve or apply. Unlike Confidence, which leaves
/// `sdk` empty, the caller's SDK is reported.
pub fn flag_assigned(
    resolve_id: &str,
    credential: &Credential,
    sdk: Option<Sdk>,
    flags: Vec<AppliedFlag>,
) -> FlagAssigned {
    FlagAssigned {
        client_info: Some(ClientInfo {
            client: credential.client.clone(),
            client_credential: credential.credential.clone(),
            sdk,
        }),
        resolve_id: resolve_id.to_string(),
        flags,
    }
}

fn total_nanos(t: &Timestamp) -> Option<i128> {
    i128::from(t.seconds).checked_mul(NANOS_PER_SECOND)?.checked_add(i128::from(t.nanos))
}

/// `receive − (send − apply)`: the apply time on the server's clock. `None`
/// when it falls outside the Timestamp range.
fn skew_adjusted(receive: &Timestamp, send: &Timestamp, apply: &Timestamp) -> Option<Timestamp> {
    let skew = total_nanos(send)?.checked_sub(total_nanos(apply)?)?;
    let t = total_nanos(receive)?.checked_sub(skew)?;
    let seconds = i64::try_from(t.div_euclid(NANOS_PER_SECOND)).ok()?;
    let nanos = i32::try_from(t.rem_euclid(NANOS_PER_SECOND)).ok()?;
    (MIN_SECONDS..=MAX_SECONDS).contains(&seconds).then_some(Timestamp { seconds, nanos })
}

/// Checks an apply request against its (already opened) token and builds
/// the event. Any error means nothing is to be logged. A flag named twice
/// is reported once, at its first apply time.
pub fn apply(
    token: &ResolveTokenV1,
    req: &ApplyFlagsRequest,
    credential: &Credential,
    receive_time: Timestamp,
) -> Result<FlagAssigned, ApiError> {
    let send = req.send_time.as_ref().ok_or_else(|| ApiError::bad_request("sendTime is required"))?;
    let mut seen = HashSet::with_capacity(req.flags.len());
    let mut flags = Vec::with_capacity(req.flags.len());
    for (i, f) in req.flags.iter().enumerate() {
        let assigned = token.assignments.get(&f.flag).ok_or_else(|| {
            ApiError::bad_request(format!("flags[{i}]: flag {:?} is not in the resolve token", f.flag))
        })?;
        let apply_time = f
            .apply_time
            .as_ref()
            .ok_or_else(|| ApiError::bad_request(format!("flags[{i}].applyTime is required (flag {:?})", f.flag)))?;
        let adjusted = skew_adjusted(&receive_time, send, apply_time).ok_or_else(|| {
            ApiError::bad_request(format!(
                "flags[{i}].applyTime (flag {:?}): corrected for clock skew (sendTime − applyTime) it falls outside the timestamp range",
                f.flag
            ))
        })?;
        // Every entry is validated, but one flag is one exposure.
        if seen.insert(f.flag.as_str()) {
            flags.push(applied_flag_from_token(assigned, adjusted));
        }
    }
    Ok(flag_assigned(&token.resolve_id, credential, req.sdk.clone(), flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use crate::proto::resolver::{self, sdk, ResolveToken, SdkId};
    use crate::resolve::{self, sticky::Sticky, sticky::StickySet};
    use crate::state::snapshot::Snapshot;
    use flag_assigned::applied_flag::Assignment;
    use prost::Message;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/resolver-spec/state.json");

    fn snapshot() -> Result<Snapshot, Box<dyn std::error::Error>> {
        Ok(Snapshot::load(&std::fs::read(STATE)?, None, None)?)
    }

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    /// Resolves `flags` for `test-secret` with `context` (JSON), then hands
    /// the resolution to `check`.
    fn with_resolution(
        flags: &[&str],
        context: &str,
        check: impl FnOnce(&Resolution<'_, '_>) -> TestResult,
    ) -> TestResult {
        let snap = snapshot()?;
        let body = format!(
            r#"{{"flags":{},"evaluationContext":{context},"clientSecret":"test-secret"}}"#,
            serde_json::to_string(flags)?
        );
        let req = api::parse_resolve_request(body.as_bytes()).map_err(|e| e.to_string())?;
        let ctx = req.evaluation_context.clone().unwrap_or_default();
        let sticky = StickySet::new();
        let r = resolve::Request { flags: &req.flags, context: &ctx, client_secret: &req.client_secret };
        let res = resolve::resolve(&snap, &r, Sticky::Known(&sticky), None)?;
        check(&res)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
    }

    #[test]
    fn token_assignments_match_confidence_for_simple_flag() -> TestResult {
        // Plaintext of the reference worker's token for this resolve
        // (confidence-semantics §6 test vector).
        let reference = hex("0aa2010a00127c0a11666c6167732f73696d706c652d666c616712670a11666c6167732f73696d706c652d666c6167120575736572311a137365676d656e74732f636f756e7472792d736522026f6e2a1d666c6167732f73696d706c652d666c61672f72756c65732f72756c6531300142026131520d746172676574696e675f6b65791a20524a72495731524a6a69325476444f56376e733654585044555a384b77725148");
        let Some(resolver::resolve_token::ResolveToken::TokenV1(expected)) =
            ResolveToken::decode(reference.as_slice())?.resolve_token
        else {
            return Err("reference vector is not a v1 token".into());
        };
        with_resolution(&["flags/simple-flag"], r#"{"targeting_key":"user1","country":"SE"}"#, |res| {
            assert_eq!(token_assignments(res), expected.assignments);
            Ok(())
        })
    }

    #[test]
    fn variant_match_reports_assignment_info() -> TestResult {
        with_resolution(&["flags/simple-flag"], r#"{"targeting_key":"user1","country":"SE"}"#, |res| {
            let flags = applied_flags_from_resolution(res, ts(100, 5));
            assert_eq!(flags.len(), 1);
            let f = &flags[0];
            assert_eq!(f.flag, "flags/simple-flag");
            assert_eq!(f.targeting_key, "user1");
            assert_eq!(f.targeting_key_selector, "targeting_key");
            assert_eq!(f.rule, "flags/simple-flag/rules/rule1");
            assert_eq!(f.assignment_id, "a1");
            assert_eq!(f.apply_time, Some(ts(100, 5)));
            assert_eq!(
                f.assignment,
                Some(Assignment::AssignmentInfo(AssignmentInfo {
                    segment: "segments/country-se".into(),
                    variant: "on".into()
                }))
            );
            Ok(())
        })
    }

    #[test]
    fn unmatched_flags_are_not_applied() -> TestResult {
        with_resolution(&["flags/simple-flag"], r#"{"targeting_key":"user1","country":"US"}"#, |res| {
            assert_eq!(res.flags.len(), 1);
            assert!(token_assignments(res).is_empty());
            assert!(applied_flags_from_resolution(res, ts(0, 0)).is_empty());
            Ok(())
        })
    }

    #[test]
    fn client_default_is_an_unspecified_default_assignment() -> TestResult {
        with_resolution(&["flags/client-default-flag"], r#"{"targeting_key":"user1","country":"SE"}"#, |res| {
            let token = token_assignments(res);
            let a = token.get("flags/client-default-flag").ok_or("flag missing from token")?;
            assert_eq!((a.variant.as_str(), a.assignment_id.as_str()), ("", "a-cd"));
            assert_eq!(a.segment, "segments/country-se");
            let flags = applied_flags_from_resolution(res, ts(0, 0));
            let expected = Assignment::DefaultAssignment(DefaultAssignment {
                reason: DefaultAssignmentReason::Unspecified as i32,
            });
            assert_eq!(flags.first().and_then(|f| f.assignment.clone()), Some(expected));
            Ok(())
        })
    }

    #[test]
    fn fallthrough_then_no_match_is_applied_with_its_fallthrough() -> TestResult {
        // tests.json: fallthrough_then_no_match_should_apply
        with_resolution(&["flags/fallthrough-no-match"], r#"{"targeting_key":"user1","country":"SE"}"#, |res| {
            let fallthrough = FallthroughAssignment {
                rule: "flags/fallthrough-no-match/rules/rule1".into(),
                assignment_id: "a-ft".into(),
                targeting_key: "user1".into(),
                targeting_key_selector: "targeting_key".into(),
            };
            let token = token_assignments(res);
            let a = token.get("flags/fallthrough-no-match").ok_or("flag missing from token")?;
            assert_eq!(a.reason, ResolveReason::NoSegmentMatch as i32);
            assert_eq!((a.rule.as_str(), a.variant.as_str(), a.targeting_key.as_str()), ("", "", ""));
            assert_eq!(a.fallthrough_assignments, vec![fallthrough.clone()]);

            let from_res = applied_flags_from_resolution(res, ts(7, 0));
            assert_eq!(from_res, vec![applied_flag_from_token(a, ts(7, 0))]);
            let f = from_res.first().ok_or("no applied flag")?;
            let expected = Assignment::DefaultAssignment(DefaultAssignment {
                reason: DefaultAssignmentReason::NoSegmentMatch as i32,
            });
            assert_eq!(f.assignment, Some(expected));
            assert_eq!(f.fallthrough_assignments, vec![fallthrough]);
            Ok(())
        })
    }

    #[test]
    fn fallthrough_then_match_keeps_both() -> TestResult {
        // tests.json: fallthrough_then_match
        with_resolution(&["flags/fallthrough-flag"], r#"{"targeting_key":"user1","country":"SE"}"#, |res| {
            let token = token_assignments(res);
            let a = token.get("flags/fallthrough-flag").ok_or("flag missing from token")?;
            assert_eq!((a.variant.as_str(), a.assignment_id.as_str()), ("treatment", "a-match"));
            assert_eq!(a.rule, "flags/fallthrough-flag/rules/rule2");
            let ids: Vec<&str> = a.fallthrough_assignments.iter().map(|f| f.assignment_id.as_str()).collect();
            assert_eq!(ids, ["a-ft"]);
            Ok(())
        })
    }

    #[test]
    #[allow(deprecated)]
    fn default_assignment_reasons_map_as_confidence_does() {
        let cases = [
            (ResolveReason::NoSegmentMatch, DefaultAssignmentReason::NoSegmentMatch),
            (ResolveReason::NoTreatmentMatch, DefaultAssignmentReason::NoTreatmentMatch),
            (ResolveReason::FlagArchived, DefaultAssignmentReason::FlagArchived),
            (ResolveReason::Match, DefaultAssignmentReason::Unspecified),
            (ResolveReason::TargetingKeyError, DefaultAssignmentReason::Unspecified),
            (ResolveReason::Unspecified, DefaultAssignmentReason::Unspecified),
        ];
        for (reason, expected) in cases {
            let a = AssignedFlag { flag: "flags/x".into(), reason: reason as i32, ..Default::default() };
            let f = applied_flag_from_token(&a, ts(1, 0));
            let want = Assignment::DefaultAssignment(DefaultAssignment { reason: expected as i32 });
            assert_eq!(f.assignment, Some(want), "{reason:?}");
        }
        // An unknown reason number from a newer token is not an error.
        let a = AssignedFlag { reason: 99, ..Default::default() };
        let f = applied_flag_from_token(&a, ts(1, 0));
        let want = Assignment::DefaultAssignment(DefaultAssignment { reason: 0 });
        assert_eq!(f.assignment, Some(want));
    }

    fn credential() -> Credential {
        Credential {
            client: "clients/other".into(),
            credential: "clients/other/credentials/c".into(),
            environments: vec![],
        }
    }

    fn token() -> ResolveTokenV1 {
        let a = AssignedFlag {
            flag: "flags/a".into(),
            targeting_key: "u".into(),
            variant: "on".into(),
            segment: "segments/s".into(),
            reason: ResolveReason::Match as i32,
            ..Default::default()
        };
        let b =
            AssignedFlag { flag: "flags/b".into(), reason: ResolveReason::NoSegmentMatch as i32, ..Default::default() };
        ResolveTokenV1 {
            assignments: [("flags/a".to_string(), a), ("flags/b".to_string(), b)].into_iter().collect(),
            resolve_id: "rid".into(),
            ..Default::default()
        }
    }

    fn request(flags: &[(&str, Option<Timestamp>)], send: Option<Timestamp>) -> ApplyFlagsRequest {
        ApplyFlagsRequest {
            flags: flags.iter().map(|(f, t)| resolver::AppliedFlag { flag: f.to_string(), apply_time: *t }).collect(),
            send_time: send,
            sdk: Some(resolver::Sdk { sdk: Some(sdk::Sdk::Id(SdkId::default() as i32)), version: "1.2.3".into() }),
            ..Default::default()
        }
    }

    // 10:00:00 and 12:00:00 on some day, in epoch seconds.
    const TEN: i64 = 1_700_000_000 - 1_700_000_000 % 86_400 + 10 * 3600;
    const NOON: i64 = TEN + 2 * 3600;

    #[test]
    fn apply_corrects_for_clock_skew() -> TestResult {
        let req = request(&[("flags/a", Some(ts(TEN + 5, 0)))], Some(ts(TEN + 10, 0)));
        let ev = apply(&token(), &req, &credential(), ts(NOON, 0)).map_err(|e| e.to_string())?;
        assert_eq!(ev.resolve_id, "rid");
        let info = ev.client_info.as_ref().ok_or("no client info")?;
        assert_eq!(
            (info.client.as_str(), info.client_credential.as_str()),
            ("clients/other", "clients/other/credentials/c")
        );
        assert_eq!(info.sdk, req.sdk);
        assert_eq!(ev.flags.len(), 1);
        // 12:00:00 − (10:00:10 − 10:00:05) = 11:59:55
        assert_eq!(ev.flags[0].apply_time, Some(ts(NOON - 5, 0)));

        // Nanoseconds borrow across the second boundary.
        let req = request(&[("flags/a", Some(ts(TEN, 900_000_000)))], Some(ts(TEN + 1, 100_000_000)));
        let ev = apply(&token(), &req, &credential(), ts(NOON, 0)).map_err(|e| e.to_string())?;
        assert_eq!(ev.flags[0].apply_time, Some(ts(NOON - 1, 800_000_000)));
        Ok(())
    }

    #[test]
    fn apply_requires_send_time() {
        let req = request(&[("flags/a", Some(ts(TEN, 0)))], None);
        let err = apply(&token(), &req, &credential(), ts(NOON, 0)).expect_err("no sendTime");
        assert_eq!((err.status, err.code), (400, "INVALID_ARGUMENT"));
        assert!(err.message.contains("sendTime"), "{}", err.message);
    }

    #[test]
    fn apply_refuses_flags_not_in_the_token() {
        let req = request(&[("flags/a", Some(ts(TEN, 0))), ("flags/zzz", Some(ts(TEN, 0)))], Some(ts(TEN, 0)));
        let err = apply(&token(), &req, &credential(), ts(NOON, 0)).expect_err("unknown flag");
        assert_eq!(err.status, 400);
        assert!(err.message.contains("flags/zzz") && err.message.contains("flags[1]"), "{}", err.message);
    }

    #[test]
    fn apply_requires_apply_time() {
        let req = request(&[("flags/b", None)], Some(ts(TEN, 0)));
        let err = apply(&token(), &req, &credential(), ts(NOON, 0)).expect_err("no applyTime");
        assert_eq!(err.status, 400);
        assert!(err.message.contains("applyTime") && err.message.contains("flags/b"), "{}", err.message);
    }

    #[test]
    fn apply_time_overflow_is_a_bad_request() {
        let cases = [
            (ts(i64::MIN, 0), ts(i64::MAX, 999_999_999), ts(i64::MAX, 999_999_999)),
            (ts(i64::MAX, 999_999_999), ts(i64::MIN, 0), ts(i64::MIN, 0)),
            (ts(MAX_SECONDS, 0), ts(0, 0), ts(NOON, 0)),
            (ts(0, 0), ts(MAX_SECONDS, 0), ts(NOON, 0)),
            (ts(TEN, 0), ts(TEN - 1, 999_999_999), ts(MIN_SECONDS, 0)),
        ];
        for (send, applied, receive) in cases {
            let req = request(&[("flags/a", Some(applied))], Some(send));
            let err = apply(&token(), &req, &credential(), receive).expect_err("out of range");
            assert_eq!(err.status, 400);
            assert!(err.message.contains("applyTime"), "{}", err.message);
        }
        // Unnormalized nanos (possible in protobuf, not in JSON) normalize.
        let req = request(&[("flags/a", Some(ts(TEN, i32::MIN)))], Some(ts(TEN, i32::MAX)));
        let ev = apply(&token(), &req, &credential(), ts(NOON, 0)).map_err(|e| e.to_string());
        let got = ev.ok().and_then(|ev| ev.flags.first().and_then(|f| f.apply_time));
        assert_eq!(got, Some(ts(NOON - 5, 705_032_705)));
    }

    #[test]
    fn apply_reports_a_repeated_flag_once() -> TestResult {
        let req = request(
            &[("flags/a", Some(ts(TEN, 0))), ("flags/b", Some(ts(TEN, 0))), ("flags/a", Some(ts(TEN + 3, 0)))],
            Some(ts(TEN, 0)),
        );
        let ev = apply(&token(), &req, &credential(), ts(NOON, 0)).map_err(|e| e.to_string())?;
        let names: Vec<&str> = ev.flags.iter().map(|f| f.flag.as_str()).collect();
        assert_eq!(names, ["flags/a", "flags/b"]);
        assert_eq!(ev.flags[0].apply_time, Some(ts(NOON, 0)));
        let b =
            Assignment::DefaultAssignment(DefaultAssignment { reason: DefaultAssignmentReason::NoSegmentMatch as i32 });
        assert_eq!(ev.flags[1].assignment, Some(b));
        // A bad duplicate still fails the request.
        let req = request(&[("flags/a", Some(ts(TEN, 0))), ("flags/a", None)], Some(ts(TEN, 0)));
        assert!(apply(&token(), &req, &credential(), ts(NOON, 0)).is_err());
        Ok(())
    }

    #[test]
    fn apply_with_no_flags_still_logs_an_event() -> TestResult {
        let ev =
            apply(&token(), &request(&[], Some(ts(TEN, 0))), &credential(), ts(NOON, 0)).map_err(|e| e.to_string())?;
        assert!(ev.flags.is_empty());
        assert_eq!(ev.resolve_id, "rid");
        Ok(())
    }
}
