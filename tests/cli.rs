//! The `edgeflag` command line, end to end: the real binary for exit codes
//! and streams, and `edgeflag::cli::run` in-process where a terminal must be
//! faked or many cases must run quickly.

use edgeflag::proto::admin::flag::rule::assignment::Assignment;
use edgeflag::proto::admin::resolver_state::packed_bitset;
use edgeflag::state::formats::{self, StateFormat};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared");

fn suite_state() -> String {
    format!("{SHARED}/conformance/resolver-spec/state.json")
}

fn shared(rel: &str) -> String {
    format!("{SHARED}/{rel}")
}

/// A scratch directory per test, so tests can run in parallel.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeflag-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn edgeflag(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeflag"))
        .args(args)
        .env_remove("EDGEFLAG_ACCOUNT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The command may exit before reading (e.g. usage errors): ignore EPIPE.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// Runs the CLI in-process with a fake terminal flag.
fn run_in_process(args: &[&str], stdin: &[u8], stdout_is_terminal: bool) -> (u8, String, String) {
    let mut input = stdin;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut io = edgeflag::cli::Io {
        stdin: &mut input,
        stdin_is_terminal: false,
        stdout: &mut out,
        stdout_is_terminal,
        stderr: &mut err,
    };
    let mut argv = vec!["edgeflag"];
    argv.extend_from_slice(args);
    let code = edgeflag::cli::run(argv, &mut io);
    (code, text(&out), text(&err))
}

fn suite_cases() -> Vec<Value> {
    let bytes = std::fs::read(shared("conformance/resolver-spec/tests.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn suite_case(name: &str) -> Value {
    suite_cases().into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no suite case {name}"))
}

fn request_of(case: &Value) -> Vec<u8> {
    serde_json::to_vec(&case["resolveRequest"]).unwrap()
}

/// The summary row `key` of `edgeflag validate`.
fn row<'a>(summary: &'a str, key: &str) -> &'a str {
    summary
        .lines()
        // Keys are padded to a column at least two spaces past the longest.
        .find_map(|l| l.trim_start().strip_prefix(key).filter(|rest| rest.starts_with("  ")).map(str::trim))
        .unwrap_or_else(|| panic!("no {key} row in:\n{summary}"))
}

// ---- validate ----

#[test]
fn validate_suite_state_summary() {
    let o = edgeflag(&["validate", "--state", &suite_state()], b"");
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.starts_with("OK: "), "{out}");
    assert!(row(&out, "format").starts_with("suite"), "{out}");
    assert_eq!(row(&out, "account"), "test-account");
    assert_eq!(row(&out, "flags"), "93 active / 95 total");
    assert_eq!(row(&out, "segments"), "54");
    assert_eq!(row(&out, "bitsets"), "1 gzipped / 53 full");
    assert_eq!(row(&out, "bloom filters"), "1");
    assert_eq!(row(&out, "clients"), "2");
    assert_eq!(row(&out, "credentials"), "2");
    let bytes = std::fs::metadata(suite_state()).unwrap().len();
    assert_eq!(row(&out, "bytes"), bytes.to_string());
    assert_eq!(row(&out, "etag").len(), 32);
    // The suite has two rules pointing at missing segments: warnings, not problems.
    assert!(out.contains("segments/does-not-exist") && out.contains("segments/nonexistent"), "{out}");
}

#[test]
fn validate_shared_states() {
    for (file, format, flags, segments) in [
        ("states/resolver_state.pb", "pb", "3 active / 3 total", "4"),
        ("states/resolver_state.json", "json", "3 active / 3 total", "4"),
        ("states/resolver_state_with_custom_targeting_flag.pb", "pb", "1 active / 1 total", "2"),
        ("states/resolver_state_with_multiple_sticky_flags.pb", "pb", "3 active / 3 total", "1"),
    ] {
        let o = edgeflag(&["validate", "--state", &shared(file), "--account", "accounts/acme"], b"");
        let out = text(&o.stdout);
        assert_eq!(code(&o), 0, "{file}: {out}{}", text(&o.stderr));
        assert!(row(&out, "format").starts_with(format), "{file}: {out}");
        assert_eq!(row(&out, "account"), "acme", "{file}");
        assert_eq!(row(&out, "flags"), flags, "{file}");
        assert_eq!(row(&out, "segments"), segments, "{file}");
        assert_eq!(row(&out, "warnings"), "none", "{file}");
    }
}

#[test]
fn validate_takes_the_account_from_the_environment() {
    let state = shared("states/resolver_state.pb");
    let o = edgeflag(&["validate", "--state", &state], b"");
    assert_eq!(code(&o), 1);
    assert!(text(&o.stdout).contains("no account") && text(&o.stdout).contains("--account"), "{}", text(&o.stdout));

    let o = Command::new(env!("CARGO_BIN_EXE_edgeflag"))
        .args(["validate", "--state", &state])
        .env("EDGEFLAG_ACCOUNT", "from-env")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(row(&text(&o.stdout), "account"), "from-env");
}

#[test]
fn validate_lists_every_problem_of_a_suite_state() {
    let mut state: Value = serde_json::from_slice(&std::fs::read(suite_state()).unwrap()).unwrap();
    // 1: an assignment names a variant the flag does not have.
    state["flags"]["flags/bucket-gap-flag"]["rules"][0]["assignmentSpec"]["assignments"][0]["variant"]["variant"] =
        json!("no-such-variant");
    // 2: a rule with assignments but a negative bucket count.
    state["flags"]["flags/disabled-then-match"]["rules"][1]["assignmentSpec"]["bucketCount"] = json!(-5);
    // 3: a credential with an empty secret.
    state["clients"]["minimal-secret"]["clientCredential"]["clientSecret"]["secret"] = json!("");
    let dir = scratch("suite-problems");
    let path = dir.join("bad.json");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let o = edgeflag(&["validate", "--state", path.to_str().unwrap()], b"");
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.starts_with("INVALID: ") && out.contains("3 problems"), "{out}");
    let problem = |needles: &[&str]| {
        assert!(
            out.lines().any(|l| l.starts_with("  - ") && needles.iter().all(|n| l.contains(n))),
            "no problem line with {needles:?} in:\n{out}"
        )
    };
    problem(&["flags/bucket-gap-flag/rules/rule1", "no-such-variant", "a1"]);
    problem(&["flags/disabled-then-match/rules/rule2", "bucket count -5"]);
    problem(&["clients/minimal-client/credentials/cred1", "empty client secret"]);
}

#[test]
fn validate_names_an_out_of_range_bitset_index() {
    let mut state: Value = serde_json::from_slice(&std::fs::read(suite_state()).unwrap()).unwrap();
    state["bitsets"]["segments/bitset-specific"].as_array_mut().unwrap().push(json!(1_000_000));
    let dir = scratch("bitset-index");
    let path = dir.join("bad.json");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let o = edgeflag(&["validate", "--state", path.to_str().unwrap()], b"");
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    assert!(
        out.lines().any(|l| l.contains(r#"bitsets["segments/bitset-specific"]"#) && l.contains("1000000")),
        "{out}"
    );
}

#[test]
fn validate_lists_every_problem_of_a_protobuf_state() {
    let pb = std::fs::read(shared("states/resolver_state.pb")).unwrap();
    let mut state = formats::decode(&pb, Some(StateFormat::Protobuf)).unwrap().state;
    // 1: flip a byte of a gzipped bitset's CRC (the trailer's first 4 bytes).
    let packed = state
        .bitsets
        .iter_mut()
        .find(|b| matches!(b.bitset, Some(packed_bitset::Bitset::GzippedBitset(_))))
        .expect("the shared state has a gzipped bitset");
    let segment = packed.segment.clone();
    let Some(packed_bitset::Bitset::GzippedBitset(gz)) = packed.bitset.as_mut() else { unreachable!() };
    let mut bytes = gz.to_vec();
    let crc_at = bytes.len() - 8;
    bytes[crc_at] ^= 0xFF;
    *gz = bytes.into();
    // 2: an assignment naming a variant the flag lacks.
    let flag = state.flags.first_mut().unwrap();
    let flag_name = flag.name.clone();
    let (rule_name, assignment_id) = flag
        .rules
        .iter_mut()
        .find_map(|r| {
            let a = r
                .assignment_spec
                .as_mut()?
                .assignments
                .iter_mut()
                .find(|a| matches!(a.assignment, Some(Assignment::Variant(_))))?;
            if let Some(Assignment::Variant(v)) = a.assignment.as_mut() {
                v.variant = "ghost-variant".to_string();
            }
            Some((r.name.clone(), a.assignment_id.clone()))
        })
        .expect("a rule assigning a variant");
    let dir = scratch("pb-problems");
    let path = dir.join("bad.pb");
    std::fs::write(&path, formats::encode_pb(&state)).unwrap();

    let o = edgeflag(&["validate", "--state", path.to_str().unwrap(), "--account", "acme"], b"");
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.contains("2 problems"), "{out}");
    assert!(out.lines().any(|l| l.contains(&format!("bitset of {segment}")) && l.contains("CRC mismatch")), "{out}");
    assert!(
        out.lines().any(|l| l.contains(&rule_name)
            && l.contains(&flag_name)
            && l.contains("ghost-variant")
            && l.contains(&assignment_id)),
        "{out}"
    );
}

#[test]
fn missing_or_unreadable_state_file_names_the_path() {
    let missing = "/definitely/not/here/state.pb";
    for cmd in [
        vec!["validate", "--state", missing],
        vec!["resolve", "--state", missing],
        vec!["explain", "--state", missing, "--flag", "flags/x"],
        vec!["convert", "--state", missing, "--to", "json"],
    ] {
        let o = edgeflag(&cmd, b"{}");
        assert_eq!(code(&o), 1, "{cmd:?}");
        let err = text(&o.stderr);
        assert!(err.contains("state file") && err.contains(missing) && err.contains("No such file"), "{cmd:?}: {err}");
        assert!(o.stdout.is_empty(), "{cmd:?}");
    }
    // A directory is not a readable file either.
    let dir = scratch("dir-as-state");
    let o = edgeflag(&["validate", "--state", dir.to_str().unwrap()], b"");
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains(dir.to_str().unwrap()), "{}", text(&o.stderr));

    let o = edgeflag(&["resolve", "--state", &suite_state(), "--materializations", "/no/such/mats.json"], b"{}");
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    assert!(err.contains("materializations file /no/such/mats.json"), "{err}");
}

// ---- resolve ----

#[test]
fn bad_request_json_names_the_field() {
    let state = suite_state();
    for (body, field) in [
        (&br#"{"clientSecret":"test-secret","flags":[3]}"#[..], "`flags[0]`"),
        (br#"{"clientSecret":"test-secret","evaluationContext":[]}"#, "`evaluationContext`"),
        (br#"{"clientSecret":7}"#, "`clientSecret`"),
    ] {
        for cmd in
            [vec!["resolve", "--state", &state], vec!["explain", "--state", &state, "--flag", "flags/bucket-gap-flag"]]
        {
            let o = edgeflag(&cmd, body);
            assert_eq!(code(&o), 1, "{cmd:?}");
            let err = text(&o.stderr);
            assert!(err.contains("request on stdin") && err.contains(field), "{cmd:?} {}: {err}", text(body));
        }
    }
    let o = edgeflag(&["resolve", "--state", &state], b"{not json");
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    assert!(err.contains("request on stdin") && err.contains("line 1 column 2"), "{err}");
    let o = edgeflag(&["resolve", "--state", &state], b"  \n");
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains("no request on stdin"), "{}", text(&o.stderr));
}

#[test]
fn resolve_prints_writes_and_a_random_resolve_id() {
    let case = suite_case("mat_write");
    let o = edgeflag(&["resolve", "--state", &suite_state()], &request_of(&case));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let res: Value = serde_json::from_slice(&o.stdout).unwrap();
    let flag = case["resolveRequest"]["flags"][0].as_str().unwrap();
    let writes = res["materializationsToWrite"].as_array().expect("materializationsToWrite");
    assert_eq!(writes.len(), 1, "{res}");
    let w = &writes[0];
    assert_eq!(w["unit"], "user1");
    assert_eq!(w["rule"], format!("{flag}/rules/rule1"));
    assert!(w["materialization"].as_str().unwrap().starts_with("materializations/"), "{w}");
    assert_eq!(w["variant"], res["resolvedFlags"][0]["variant"]);

    let id = res["resolveId"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    let again: Value =
        serde_json::from_slice(&edgeflag(&["resolve", "--state", &suite_state()], &request_of(&case)).stdout).unwrap();
    assert_ne!(again["resolveId"], res["resolveId"], "resolve ids must differ between runs");

    // No sticky writes: no key at all.
    let case = suite_case("disabled_rule_then_match");
    let o = edgeflag(&["resolve", "--state", &suite_state()], &request_of(&case));
    let res: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(res.get("materializationsToWrite").is_none(), "{res}");
    assert_eq!(res["resolvedFlags"][0]["variant"], "on");
}

#[test]
fn resolve_pretty_is_the_same_response() {
    let case = suite_case("mat_unit_in_mat_variant_found");
    let dir = scratch("pretty");
    let mats = dir.join("mats.json");
    std::fs::write(&mats, serde_json::to_vec(&case["materializations"]).unwrap()).unwrap();
    let args = ["resolve", "--state", &suite_state(), "--materializations", mats.to_str().unwrap()];
    let compact = edgeflag(&args, &request_of(&case));
    let mut pretty_args = args.to_vec();
    pretty_args.push("--pretty");
    let pretty = edgeflag(&pretty_args, &request_of(&case));
    assert_eq!((code(&compact), code(&pretty)), (0, 0), "{}", text(&pretty.stderr));
    assert_eq!(text(&compact.stdout).lines().count(), 1);
    let p = text(&pretty.stdout);
    assert!(p.lines().count() > 5 && p.starts_with("{\n  \"resolvedFlags\": ["), "{p}");
    let mut a: Value = serde_json::from_slice(&compact.stdout).unwrap();
    let mut b: Value = serde_json::from_slice(&pretty.stdout).unwrap();
    a["resolveId"] = Value::Null;
    b["resolveId"] = Value::Null;
    assert_eq!(a, b);
    assert_eq!(a["resolvedFlags"][0]["variant"], "treatment");
}

#[test]
fn resolve_unknown_secret_fails() {
    let o = edgeflag(&["resolve", "--state", &suite_state()], br#"{"clientSecret":"nope","flags":[]}"#);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stderr).contains("client secret not recognized"), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
}

// ---- convert ----

#[test]
fn convert_pb_json_pb_round_trip() {
    let dir = scratch("convert");
    let src = shared("states/resolver_state.pb");
    let json_path = dir.join("state.json");
    let pb_path = dir.join("state.pb");
    let o = edgeflag(&["convert", "--state", &src, "--to", "json", "--out", json_path.to_str().unwrap()], b"");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    let o = edgeflag(
        &["convert", "--state", json_path.to_str().unwrap(), "--to", "pb", "--out", pb_path.to_str().unwrap()],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    let original = formats::decode(&std::fs::read(&src).unwrap(), None).unwrap();
    let json = formats::decode(&std::fs::read(&json_path).unwrap(), None).unwrap();
    let back = formats::decode(&std::fs::read(&pb_path).unwrap(), None).unwrap();
    assert_eq!(json.format, StateFormat::ProtoJson);
    assert_eq!(back.format, StateFormat::Protobuf);
    // Compared as messages: map fields may re-encode in another order.
    assert_eq!(json.state, original.state);
    assert_eq!(back.state, original.state);

    // JSON to stdout is allowed.
    let o = edgeflag(&["convert", "--state", &src, "--to", "json"], b"");
    assert_eq!(code(&o), 0);
    assert_eq!(formats::decode(&o.stdout, None).unwrap().state, original.state);
}

#[test]
fn convert_to_envelope_carries_the_account() {
    let dir = scratch("envelope");
    let src = shared("states/resolver_state.pb");
    let o = edgeflag(&["convert", "--state", &src, "--to", "envelope"], b"");
    assert_eq!(code(&o), 2, "envelope without an account is a usage error");
    assert!(text(&o.stderr).contains("--account"), "{}", text(&o.stderr));

    let env_path = dir.join("state.env.pb");
    let o = edgeflag(
        &[
            "convert",
            "--state",
            &src,
            "--to",
            "envelope",
            "--account",
            "accounts/acme",
            "--out",
            env_path.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = edgeflag(&["validate", "--state", env_path.to_str().unwrap()], b"");
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}");
    assert!(row(&out, "format").starts_with("envelope"), "{out}");
    assert_eq!(row(&out, "account"), "acme");

    // The suite state carries its account, so no --account is needed.
    let o = edgeflag(&["convert", "--state", &suite_state(), "--to", "envelope"], b"");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let d = formats::decode(&o.stdout, None).unwrap();
    assert_eq!((d.format, d.account_id.as_deref()), (StateFormat::Envelope, Some("test-account")));
}

#[test]
fn convert_refuses_binary_to_a_terminal() {
    let src = shared("states/resolver_state.pb");
    for to in ["pb", "envelope"] {
        let (code, out, err) =
            run_in_process(&["convert", "--state", &src, "--to", to, "--account", "acme"], b"", true);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(out.is_empty() && err.contains("terminal") && err.contains("--out"), "{to}: {err}");
    }
    let (code, out, _) = run_in_process(&["convert", "--state", &src, "--to", "json"], b"", true);
    assert_eq!(code, 0);
    assert!(out.starts_with('{'));
    let (code, out, _) = run_in_process(&["convert", "--state", &src, "--to", "pb"], b"", false);
    assert_eq!(code, 0);
    assert!(!out.is_empty());
}

#[test]
fn convert_keeps_going_on_an_invalid_state_but_says_so() {
    let mut state: Value = serde_json::from_slice(&std::fs::read(suite_state()).unwrap()).unwrap();
    state["flags"]["flags/bucket-gap-flag"]["rules"][0]["assignmentSpec"]["assignments"][0]["variant"]["variant"] =
        json!("no-such-variant");
    let dir = scratch("convert-invalid");
    let path = dir.join("bad.json");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let o = edgeflag(&["convert", "--state", path.to_str().unwrap(), "--to", "json"], b"");
    assert_eq!(code(&o), 0);
    assert!(text(&o.stderr).contains("does not validate (1 problem)"), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("no-such-variant"));
}

// ---- explain ----

fn explain_case(case: &str, flag: &str, with_mats: bool) -> String {
    let case = suite_case(case);
    let state = suite_state();
    let mut args = vec!["explain", "--state", state.as_str(), "--flag", flag];
    let dir = scratch(&format!("explain-{}", case["name"].as_str().unwrap()));
    let mats = dir.join("mats.json");
    if with_mats {
        std::fs::write(&mats, serde_json::to_vec(&case["materializations"]).unwrap()).unwrap();
        args.extend(["--materializations", mats.to_str().unwrap()]);
    }
    let o = edgeflag(&args, &request_of(&case));
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    text(&o.stdout)
}

/// The block of output under `rule i/n: name`.
fn rule_block<'a>(out: &'a str, rule: &str) -> &'a str {
    let start = out.find(&format!(": {rule}\n")).unwrap_or_else(|| panic!("no block for {rule} in:\n{out}"));
    let rest = &out[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn explain_bucket_gap() {
    let out = explain_case("bucket_gap_no_match", "flags/bucket-gap-flag", false);
    let block = rule_block(&out, "flags/bucket-gap-flag/rules/rule1");
    assert!(block.contains("unit is in segment segments/country-se"), "{out}");
    assert!(block.contains("of 1000 falls in no assignment's range"), "{out}");
    assert!(block.contains("a1") && block.contains("[0, 1) -> variant on"), "{out}");
    assert!(block.contains(r#"unit from targeting_key = "user1""#), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_NO_SEGMENT_MATCH");
    assert_eq!(row(&out, "shouldApply"), "false");
}

#[test]
fn explain_disabled_rule_then_match() {
    let out = explain_case("disabled_rule_then_match", "flags/disabled-then-match", false);
    assert!(rule_block(&out, "flags/disabled-then-match/rules/rule1").contains("- disabled"), "{out}");
    assert!(rule_block(&out, "flags/disabled-then-match/rules/rule2").contains("=> MATCH"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_MATCH");
    assert_eq!(row(&out, "variant"), "on");
    assert_eq!(row(&out, "assignment"), "a2");
    assert_eq!(row(&out, "rule"), "flags/disabled-then-match/rules/rule2 (rule 2)");
}

#[test]
fn explain_environment_mismatch() {
    let out = explain_case("env_mismatch_then_match", "flags/env-then-match", false);
    let block = rule_block(&out, "flags/env-then-match/rules/rule1");
    assert!(block.contains("staging") && block.contains("production"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_MATCH");
    assert_eq!(row(&out, "rule"), "flags/env-then-match/rules/rule2 (rule 2)");
    assert_eq!(row(&out, "assignment"), "a2");
}

#[test]
fn explain_targeting_key_errors() {
    let out = explain_case("targeting_key_too_long", "flags/targeting-key-flag", false);
    assert!(rule_block(&out, "flags/targeting-key-flag/rules/rule1").contains("longer than 100 bytes"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_TARGETING_KEY_ERROR");

    let out = explain_case("targeting_key_non_string_number", "flags/targeting-key-flag", false);
    let block = rule_block(&out, "flags/targeting-key-flag/rules/rule1");
    assert!(block.contains("is a boolean") && block.contains("targeting_key = true"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_TARGETING_KEY_ERROR");
}

#[test]
fn explain_bitset_miss() {
    let case = suite_case("bitset_not_matched");
    let flag = case["resolveRequest"]["flags"][0].as_str().unwrap().to_string();
    let out = explain_case("bitset_not_matched", &flag, false);
    assert!(out.contains("unit not in segment segments/bitset-specific"), "{out}");
    assert!(out.contains("bitset miss: the unit's bucket"), "{out}");
    assert!(out.contains("(10 of 1000000 buckets are)"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_NO_SEGMENT_MATCH");
}

#[test]
fn explain_sticky_read_and_write() {
    let out = explain_case("mat_unit_in_mat_variant_found", "flags/mat-read-flag", true);
    assert!(row(&out, "sticky").starts_with("from --materializations"), "{out}");
    assert!(out.contains(r#"sticky: materializations/mat1 recorded variant "treatment""#), "{out}");
    assert_eq!(row(&out, "variant"), "treatment");
    // A hit does not rewrite the record the store already holds.
    assert!(!out.contains("sticky write"), "{out}");

    // Without the file, the read is "not stored" and the unit is bucketed.
    let out = explain_case("mat_unit_in_mat_variant_found", "flags/mat-read-flag", false);
    assert!(out.contains("unit not in materializations/mat1"), "{out}");
    assert!(out.contains("bucket "), "{out}");
}

#[test]
fn explain_what_the_trace_cannot() {
    let state = suite_state();
    let req = request_of(&suite_case("no_flags_for_client"));
    let explain = |flag: &str, body: &[u8]| {
        let o = edgeflag(&["explain", "--state", &state, "--flag", flag], body);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        text(&o.stdout)
    };

    let out = explain("flags/other-client-flag", &req);
    assert!(out.contains("is not enabled for clients/test-client"), "{out}");
    assert!(out.contains("It is enabled for: clients/other-client"), "{out}");

    let out = explain("flags/inactive-flag", &req);
    assert!(out.contains("flags/inactive-flag is ARCHIVED"), "{out}");

    let out = explain("flags/bucket-gap-flg", &req);
    assert!(out.contains("flags/bucket-gap-flg is not in this state (95 flags)"), "{out}");
    assert!(out.contains("did you mean: flags/bucket-gap-flag"), "{out}");

    // A bare name is read as flags/<name>.
    let out = explain("bucket-gap-flag", &req);
    assert!(out.contains("reading --flag bucket-gap-flag as flags/bucket-gap-flag"), "{out}");
    assert_eq!(row(&out, "result"), "RESOLVE_REASON_NO_SEGMENT_MATCH");

    let out = explain("flags/bucket-gap-flag", br#"{"clientSecret":"wrong-secret-123","flags":[]}"#);
    assert!(out.contains("is not recognized by this state"), "{out}");
    assert!(!out.contains("wrong-secret-123"), "the secret is not echoed whole: {out}");
    assert!(out.contains("enabled for: clients/test-client"), "{out}");
}

/// Explain's outcome agrees with the suite on every case and flag: it runs
/// the same resolver, and the grouping of its trace must not lose the result.
#[test]
fn explain_outcome_matches_every_suite_expectation() {
    let state = suite_state();
    let dir = scratch("explain-all");
    let mut checked = 0;
    for case in suite_cases() {
        let name = case["name"].as_str().unwrap();
        let mut args = vec!["explain".to_string(), "--state".to_string(), state.clone()];
        if case["materializations"].is_object() {
            let mats = dir.join(format!("{name}.json"));
            std::fs::write(&mats, serde_json::to_vec(&case["materializations"]).unwrap()).unwrap();
            args.extend(["--materializations".to_string(), mats.to_string_lossy().into_owned()]);
        }
        let body = request_of(&case);
        for e in case["expectedResult"]["general"]["resolvedFlags"].as_array().unwrap() {
            let flag = e["flag"].as_str().unwrap();
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--flag", flag]);
            let (code, out, err) = run_in_process(&a, &body, false);
            assert_eq!(code, 0, "{name} {flag}: {err}");
            assert_eq!(row(&out, "result"), e["reason"].as_str().unwrap(), "{name} {flag}:\n{out}");
            let variant = e["variant"].as_str().unwrap_or("");
            if !variant.is_empty() {
                assert_eq!(row(&out, "variant"), variant, "{name} {flag}:\n{out}");
            }
            if let Some(id) = e.get("assignmentId").and_then(Value::as_str) {
                assert_eq!(row(&out, "assignment"), id, "{name} {flag}:\n{out}");
            }
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} flags checked");
}

// ---- usage ----

#[test]
fn usage_errors_help_and_version() {
    let o = edgeflag(&[], b"");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("Usage: edgeflag"), "{}", text(&o.stderr));

    let o = edgeflag(&["frobnicate"], b"");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("frobnicate"));

    let o = edgeflag(&["resolve"], b"");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("--state"), "{}", text(&o.stderr));

    let o = edgeflag(&["convert", "--state", "x", "--to", "yaml"], b"");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("yaml"));

    let o = edgeflag(&["validate", "--state", "x", "--state-format", "xml"], b"");
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("unknown state format"), "{}", text(&o.stderr));

    let o = edgeflag(&["--help"], b"");
    assert_eq!(code(&o), 0);
    let help = text(&o.stdout);
    for cmd in ["resolve", "explain", "validate", "convert", "Exit codes", "EDGEFLAG_ACCOUNT"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    let o = edgeflag(&["resolve", "--help"], b"");
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("materializationsToWrite"), "{}", text(&o.stdout));

    let o = edgeflag(&["--version"], b"");
    assert_eq!(code(&o), 0);
    assert_eq!(text(&o.stdout).trim(), format!("edgeflag {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn state_format_override() {
    // An envelope without an account is only read as one when asked.
    let pb = std::fs::read(shared("states/resolver_state.pb")).unwrap();
    let state = formats::decode(&pb, None).unwrap().state;
    let dir = scratch("format-override");
    let path: &Path = &dir.join("anon.env");
    std::fs::write(path, formats::encode_envelope(&state, "", &[])).unwrap();
    let o = edgeflag(
        &["validate", "--state", path.to_str().unwrap(), "--state-format", "envelope", "--account", "acme"],
        b"",
    );
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}");
    assert!(row(&out, "format").starts_with("envelope"), "{out}");
    assert_eq!(row(&out, "flags"), "3 active / 3 total");
}
