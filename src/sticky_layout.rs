//! How sticky assignments are laid out in KV, shared with the reference
//! Confidence worker so a switch in either direction keeps every
//! assignment. Pure: `worker::sticky_kv` does the I/O.
//!
//! One key per (unit, materialization, rule):
//! `mat:{enc(unit)}:{enc(materialization)}:{enc(rule)}`. The value is the
//! variant as plain text (all the reference worker writes and reads);
//! edgeflag also puts `{"v": variant}` in the key's metadata, which a
//! prefix `list` returns, so a read of its own keys needs no `get`. A
//! listed key without that metadata (written by the reference worker) has
//! its value fetched.

use serde::Deserialize;
use std::collections::BTreeSet;

/// `%` and `:` escaped so the parts of a key cannot run into each other.
pub fn enc(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

pub fn dec(s: &str) -> String {
    s.replace("%3A", ":").replace("%25", "%")
}

/// The prefix every rule key of (unit, materialization) shares; one `list`
/// of it answers membership and, from metadata, the rules' variants.
pub fn prefix(unit: &str, materialization: &str) -> String {
    format!("mat:{}:{}:", enc(unit), enc(materialization))
}

pub fn key(unit: &str, materialization: &str, rule: &str) -> String {
    format!("{}{}", prefix(unit, materialization), enc(rule))
}

/// The metadata edgeflag writes next to the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub v: String,
}

/// One key of a prefix listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub rule: String,
    /// The full key, for a value read.
    pub key: String,
    /// From the metadata; `None` when the key carries none of ours (the
    /// reference worker's layout), so only its value says the variant.
    pub variant: Option<String>,
}

/// Interprets one listed key under `prefix`; `None` for a key that is not
/// under it (a listing never returns one, but nothing is assumed).
pub fn listed(prefix: &str, name: &str, metadata: Option<&serde_json::Value>) -> Option<Listed> {
    let rule = dec(name.strip_prefix(prefix)?);
    let variant = metadata.and_then(|m| Meta::deserialize(m).ok()).map(|m| m.v);
    Some(Listed { rule, key: name.to_string(), variant })
}

/// Keys whose value must be read: rules the resolve asked about (`wanted`)
/// whose key carries no variant metadata. Rules nobody asked about are not
/// read (they only show membership, which the listing already did).
pub fn value_reads<'a>(keys: &'a [Listed], wanted: &BTreeSet<&str>) -> Vec<&'a str> {
    keys.iter().filter(|k| k.variant.is_none() && wanted.contains(k.rule.as_str())).map(|k| k.key.as_str()).collect()
}

/// The rule → variant answers of one (unit, materialization) pair, from its
/// listing plus the values read for keys without metadata. A key whose
/// value read found nothing (it expired in between) has no variant: it
/// still shows membership, and its rule reads as "no stored variant".
pub fn variants<'a>(
    keys: &'a [Listed],
    mut value_of: impl FnMut(&str) -> Option<&'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        match &k.variant {
            Some(v) => out.push((k.rule.as_str(), v.as_str())),
            None => {
                if let Some(v) = value_of(&k.key) {
                    out.push((k.rule.as_str(), v));
                }
            }
        }
    }
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_escape_percent_then_colon_like_the_reference_worker() {
        assert_eq!(key("user:123", "exp_abc", "rule_1"), "mat:user%3A123:exp_abc:rule_1");
        assert_eq!(key("user%3A", "m", "r"), "mat:user%253A:m:r");
        assert_eq!(key("u", "", "flags/x/rules/r"), "mat:u::flags/x/rules/r");
        for s in ["a:b%c", "%3A", "::", "%%"] {
            assert_eq!(dec(&enc(s)), s);
        }
    }

    #[test]
    fn a_listed_key_takes_its_variant_from_metadata_when_it_has_ours() {
        let p = prefix("u:1", "m");
        let ours = listed(&p, &key("u:1", "m", "flags/f/rules/a:b"), Some(&json!({"v": "treatment"}))).unwrap();
        assert_eq!(ours.rule, "flags/f/rules/a:b");
        assert_eq!(ours.variant.as_deref(), Some("treatment"));
        // An empty stored variant is a stored answer, not a missing one.
        let empty = listed(&p, &key("u:1", "m", "r"), Some(&json!({"v": ""}))).unwrap();
        assert_eq!(empty.variant.as_deref(), Some(""));
        // The reference worker's keys: no metadata, or someone else's.
        for meta in [None, Some(json!({"other": 1})), Some(json!("treatment")), Some(json!({"v": 3}))] {
            let l = listed(&p, &key("u:1", "m", "r"), meta.as_ref()).unwrap();
            assert_eq!(l.variant, None, "{meta:?}");
        }
        assert_eq!(listed(&p, "mat:other:m:r", None), None);
    }

    #[test]
    fn only_wanted_keys_without_metadata_need_a_value_read() {
        let p = prefix("u", "m");
        let keys = vec![
            listed(&p, &key("u", "m", "ours"), Some(&json!({"v": "a"}))).unwrap(),
            listed(&p, &key("u", "m", "theirs"), None).unwrap(),
            listed(&p, &key("u", "m", "unasked"), None).unwrap(),
        ];
        let wanted: BTreeSet<&str> = ["ours", "theirs"].into();
        assert_eq!(value_reads(&keys, &wanted), vec!["mat:u:m:theirs"]);
        // An inclusion read asks about no rule: the listing is the answer.
        assert!(value_reads(&keys, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn variants_come_from_metadata_or_the_value_read() {
        let p = prefix("u", "m");
        let keys = vec![
            listed(&p, &key("u", "m", "ours"), Some(&json!({"v": "a"}))).unwrap(),
            listed(&p, &key("u", "m", "theirs"), None).unwrap(),
            listed(&p, &key("u", "m", "expired"), None).unwrap(),
        ];
        let got: Vec<_> = variants(&keys, |k| (k == "mat:u:m:theirs").then_some("treatment")).collect();
        assert_eq!(got, vec![("ours", "a"), ("theirs", "treatment")]);
    }
}
