use super::*;
use crate::resolve::{self, sticky::Sticky, sticky::StickySet};
use serde_json::json;

fn demo() -> Snapshot {
    let bytes = include_bytes!("../demo_state.json");
    Snapshot::load(bytes, None, None).expect("demo state loads")
}

fn ctx(v: Json) -> Struct {
    parse_context(&serde_json::to_vec(&json!({ "context": v })).expect("json")).expect("context")
}

/// A single evaluation of `key` as (status, body).
fn single_eval(snap: &Snapshot, key: &str, context: Json) -> (u16, Json) {
    let key = parse_key(key).expect("key");
    let c = ctx(context);
    let flags = vec![key.flag.clone()];
    let set = StickySet::new();
    let req = resolve::Request { flags: &flags, context: &c, client_secret: "demo-secret" };
    let res = resolve::resolve(snap, &req, Sticky::Known(&set), None).expect("resolves");
    let (status, body) = single(snap, &res.credential.client, &key, res.flags.first());
    (status, serde_json::from_slice(&body).expect("body is JSON"))
}

#[test]
fn context_parsing() {
    assert!(parse_context(b"").expect("empty").fields.is_empty());
    assert!(parse_context(b"  {} ").expect("{}").fields.is_empty());
    assert!(parse_context(br#"{"context": null}"#).expect("null").fields.is_empty());
    let c = parse_context(br#"{"context": {"targetingKey": "u1", "country": "SE", "n": 2}}"#).expect("ctx");
    assert!(matches!(c.fields["targeting_key"].kind, Some(Kind::StringValue(ref s)) if s == "u1"));
    assert!(!c.fields.contains_key("targetingKey"));
    assert!(matches!(c.fields["n"].kind, Some(Kind::NumberValue(n)) if n == 2.0));
    assert_eq!(parse_context(b"{nope").unwrap_err().code, ErrorCode::ParseError);
    assert_eq!(parse_context(b"[1]").unwrap_err().code, ErrorCode::ParseError);
    assert_eq!(parse_context(br#"{"context": 3}"#).unwrap_err().code, ErrorCode::InvalidContext);
    assert_eq!(parse_context(br#"{"context": {"targetingKey": 3}}"#).unwrap_err().code, ErrorCode::InvalidContext);
}

/// `{"context": {...}}` whose context is exactly `depth` levels deep.
fn nested_body(depth: usize, open: &str, close: &str, empty: &str) -> String {
    let inner = depth.saturating_sub(2);
    format!(r#"{{"context":{{"targetingKey":"u1","n":{}{empty}{}}}}}"#, open.repeat(inner), close.repeat(inner))
}

#[test]
fn contexts_are_depth_bounded_with_a_clear_error() {
    let max = resolve::MAX_CONTEXT_DEPTH;
    for (open, close, empty) in [(r#"{"n":"#, "}", "{}"), ("[", "]", "[]")] {
        let at_bound = nested_body(max, open, close, empty);
        assert!(parse_context(at_bound.as_bytes()).is_ok(), "{open}");
        // One deeper is past the parser's limit too: still a clear 400.
        let err = parse_context(nested_body(max + 1, open, close, empty).as_bytes()).unwrap_err();
        assert_eq!((err.status, err.code), (400, ErrorCode::ParseError), "{open}");
        assert!(err.details.contains("recursion limit exceeded"), "{}", err.details);
        // The bound itself, as it guards the recursive conversion whatever
        // the parser's limit is.
        let Ok(Json::Object(mut top)) = serde_json::from_str::<Json>(&at_bound) else { panic!("object") };
        let Some(Json::Object(mut ctx)) = top.remove("context") else { panic!("context") };
        assert!(!json_too_deep(&ctx));
        let inner = ctx.remove("n").expect("n");
        ctx.insert("n".into(), if open == "[" { json!([inner]) } else { json!({ "n": inner }) });
        assert!(json_too_deep(&ctx), "{open}: one level deeper");
    }
    // Far past serde_json's own limit: a parse error, not a stack overflow.
    let err = parse_context(nested_body(100_000, "[", "]", "[]").as_bytes()).unwrap_err();
    assert_eq!(err.code, ErrorCode::ParseError);
    assert!(err.details.contains("recursion limit exceeded"), "{}", err.details);
}

#[test]
fn secrets_from_either_header() {
    assert_eq!(client_secret(Some("Bearer abc"), None), Some("abc"));
    assert_eq!(client_secret(Some("bearer  abc "), Some("x")), Some("abc"));
    assert_eq!(client_secret(None, Some("k")), Some("k"));
    assert_eq!(client_secret(Some("Basic zzz"), None), None);
    assert_eq!(client_secret(None, Some(" ")), None);
}

#[test]
fn keys_are_url_decoded_and_split() {
    let k = parse_key("dark-mode.palette.background").expect("key");
    assert_eq!((k.flag.as_str(), k.path.len()), ("flags/dark-mode", 2));
    let k = parse_key("flags%2Fwelcome-banner.message").expect("encoded");
    assert_eq!((k.key.as_str(), k.flag.as_str()), ("flags/welcome-banner.message", "flags/welcome-banner"));
    assert_eq!(parse_key("a..b").unwrap_err().code, ErrorCode::ParseError);
    assert_eq!(parse_key("%FF").unwrap_err().code, ErrorCode::ParseError);
    assert_eq!(parse_key("").unwrap_err().status, 404);
}

#[test]
fn reasons_values_and_variants() {
    let snap = demo();
    // Targeted full rollout.
    let (s, b) = single_eval(&snap, "welcome-banner", json!({"targetingKey": "u1", "country": "SE"}));
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"key": "welcome-banner", "value": {"enabled": true, "message": "Hej och välkommen!"},
        "reason": "TARGETING_MATCH", "variant": "nordic", "metadata": {}})
    );
    // Full rollout to everyone.
    let (_, b) = single_eval(&snap, "welcome-banner.message", json!({"targetingKey": "u1"}));
    assert_eq!((b["reason"].as_str(), b["value"].as_str()), (Some("STATIC"), Some("Welcome!")));
    // Bucketed.
    let (_, b) = single_eval(&snap, "new-checkout.enabled", json!({"targetingKey": "u1"}));
    assert_eq!(b["reason"], "SPLIT");
    // No segment match: value omitted, variant an empty string.
    let (s, b) = single_eval(&snap, "dark-mode", json!({"targetingKey": "u1"}));
    assert_eq!(
        (s, b["reason"].as_str(), b.get("value"), b["variant"].as_str()),
        (200, Some("DEFAULT"), None, Some(""))
    );
    // Archived.
    let (s, b) = single_eval(&snap, "legacy-search", json!({}));
    assert_eq!((s, b["reason"].as_str()), (200, Some("DISABLED")));
}

#[test]
fn errors_carry_key_code_details_metadata() {
    let snap = demo();
    let (s, b) = single_eval(&snap, "no-such-flag", json!({}));
    assert_eq!(s, 404);
    assert_eq!(b["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(b["key"], "no-such-flag");
    assert!(b["errorDetails"].is_string() && b["metadata"] == json!({}));
    let (s, b) = single_eval(&snap, "welcome-banner.nope", json!({"targetingKey": "u1"}));
    assert_eq!((s, b["errorCode"].as_str()), (400, Some("TYPE_MISMATCH")));
    let (s, b) = single_eval(&snap, "welcome-banner.message.deeper", json!({"targetingKey": "u1"}));
    assert_eq!((s, b["errorCode"].as_str()), (400, Some("TYPE_MISMATCH")));
    let (s, b) =
        single_eval(&snap, "welcome-banner", json!({"targetingKey": "u1", "country": "SE", "targeting_key": true}));
    // targetingKey wins over a raw targeting_key.
    assert_eq!(s, 200, "{b}");
}

#[test]
fn numbers_keep_their_schema_type() {
    let snap = demo();
    // Find a unit in each new-checkout variant.
    let mut seen_on = false;
    for i in 0..200 {
        let (_, b) = single_eval(&snap, "new-checkout", json!({"targetingKey": format!("user-{i}")}));
        let text = b.to_string();
        if b["variant"] == "on" {
            assert!(text.contains("\"steps\":2") && !text.contains("2.0"), "{text}");
            seen_on = true;
            let (_, s) = single_eval(&snap, "new-checkout.steps", json!({"targetingKey": format!("user-{i}")}));
            assert!(s["value"].is_u64(), "{s}");
        } else {
            // A null field is no value: the client's default.
            let (_, s) = single_eval(&snap, "new-checkout.steps", json!({"targetingKey": format!("user-{i}")}));
            assert_eq!(
                (s["reason"].as_str(), s.get("value"), s["variant"].as_str()),
                (Some("DEFAULT"), None, Some("off"))
            );
        }
    }
    assert!(seen_on);
    let f64_ty = FlagSchema { schema_type: Some(SchemaType::DoubleSchema(Default::default())) };
    let int_ty = FlagSchema { schema_type: Some(SchemaType::IntSchema(Default::default())) };
    let w = |v: Json, t: Ty<'_>| {
        let mut out = Vec::new();
        write_typed(&mut out, &v, t);
        String::from_utf8(out).expect("utf8")
    };
    assert_eq!(w(json!(1), Ty::Field(&f64_ty)), "1.0");
    assert_eq!(w(json!(9.99), Ty::Field(&f64_ty)), "9.99");
    assert!(w(json!(1e300), Ty::Field(&f64_ty)).parse::<f64>().is_ok_and(|n| n == 1e300));
    assert_eq!(w(json!(3.0), Ty::Field(&int_ty)), "3");
    assert_eq!(w(json!(3.0), Ty::Unknown), "3");
    assert_eq!(w(json!(2.5), Ty::Unknown), "2.5");
    assert_eq!(w(json!({"a": [1, "x", null, true]}), Ty::Unknown), r#"{"a":[1,"x",null,true]}"#);
}

#[test]
fn bulk_lists_every_flag_with_the_state_etag() {
    let snap = demo();
    let c = ctx(json!({"targetingKey": "u1", "country": "SE", "plan": "premium", "app": {"version": "3.0.0"}}));
    let set = StickySet::new();
    let req = resolve::Request { flags: &[], context: &c, client_secret: "demo-secret" };
    let res = resolve::resolve(&snap, &req, Sticky::Known(&set), None).expect("resolves");
    let body = bulk(&snap, "clients/demo", &res.flags);
    let b: Json = serde_json::from_slice(&body).expect("json");
    let keys: Vec<&str> = b["flags"].as_array().expect("flags").iter().filter_map(|f| f["key"].as_str()).collect();
    assert_eq!(keys.len(), 6, "{b}");
    assert!(keys.contains(&"legacy-search") && keys.contains(&"pricing-experiment"));
    assert_eq!(b["metadata"]["stateEtag"], snap.etag.as_str());
    let price = b["flags"].as_array().and_then(|a| a.iter().find(|f| f["key"] == "pricing-experiment")).expect("price");
    assert!(price["value"]["price"].is_f64(), "{price}");
    for f in b["flags"].as_array().expect("flags") {
        assert!(f["reason"].is_string() && f["variant"].is_string() && f["metadata"].is_object(), "{f}");
    }
}

#[test]
fn etags_follow_the_body() {
    let a = etag(b"{\"flags\":[]}");
    assert_eq!(a, etag(b"{\"flags\":[]}"));
    assert_ne!(a, etag(b"{\"flags\":[1]}"));
    assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 34);
    assert!(not_modified(Some(&a), &a));
    assert!(not_modified(Some(&format!("\"x\", W/{a}")), &a));
    assert!(not_modified(Some("*"), &a));
    assert!(!not_modified(Some("\"other\""), &a));
    assert!(!not_modified(None, &a));
    assert!(may_answer_304(Some(&a), None, &a, "s1"));
    assert!(may_answer_304(Some(&a), Some("s1"), &a, "s1"));
    assert!(!may_answer_304(Some(&a), Some("s0"), &a, "s1"), "another config is never 304");
    assert_eq!(query_param("flagConfigEtag=a%20b&x=1", "flagConfigEtag").as_deref(), Some("a b"));
    assert_eq!(query_param("?x=1", "flagConfigEtag"), None);
}

#[test]
fn whole_number_doubles_keep_a_decimal_point() {
    let snap = demo();
    let (_, b) = single_eval(&snap, "search-tuning", json!({}));
    assert_eq!(b["reason"], "STATIC");
    let mut out = Vec::new();
    let key = parse_key("search-tuning.boost").expect("key");
    let flags = vec![key.flag.clone()];
    let c = Struct::default();
    let set = StickySet::new();
    let req = resolve::Request { flags: &flags, context: &c, client_secret: "demo-secret" };
    let res = resolve::resolve(&snap, &req, Sticky::Known(&set), None).expect("resolves");
    out.extend_from_slice(&single(&snap, "clients/demo", &key, res.flags.first()).1);
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("\"value\":2.0,"), "{text}");
    let whole = bulk(&snap, "clients/demo", &res.flags);
    let text = String::from_utf8(whole).expect("utf8");
    assert!(text.contains("\"boost\":2.0,") && text.contains("\"maxResults\":20}") && !text.contains("20.0"), "{text}");
}

#[test]
fn a_flag_that_cannot_resolve_is_general_500() {
    // Sticky flags with no sticky store: the resolver cannot decide.
    let snap = demo();
    let key = parse_key("pricing-experiment.price").expect("key");
    let flags = vec![key.flag.clone()];
    let c = ctx(json!({"targetingKey": "u1", "plan": "premium"}));
    let req = resolve::Request { flags: &flags, context: &c, client_secret: "demo-secret" };
    let res = resolve::resolve(&snap, &req, Sticky::Unsupported, None).expect("resolves");
    let (status, body) = single(&snap, "clients/demo", &key, res.flags.first());
    let b: Json = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, b["errorCode"].as_str(), b["key"].as_str()),
        (500, Some("GENERAL"), Some("pricing-experiment.price"))
    );
    // In bulk, the same failure is inline and the rest still evaluate.
    let req = resolve::Request { flags: &[], context: &c, client_secret: "demo-secret" };
    let res = resolve::resolve(&snap, &req, Sticky::Unsupported, None).expect("resolves");
    let b: Json = serde_json::from_slice(&bulk(&snap, "clients/demo", &res.flags)).expect("json");
    let items = b["flags"].as_array().expect("flags");
    let price = items.iter().find(|f| f["key"] == "pricing-experiment").expect("price");
    assert_eq!(price["errorCode"], "GENERAL");
    assert!(items.iter().any(|f| f["key"] == "welcome-banner" && f["reason"] == "STATIC"));
}
