//! The JSON a state serves (variant values, flag schemas) with object keys in
//! sorted order.
//!
//! Protobuf maps are HashMaps that iterate in a per-map random order, so
//! serializing them directly would give each isolate its own byte-different
//! answer for the same flag. These views serialize exactly as the generated
//! pbjson code does, map entries sorted, without building a copy. They run
//! once per state load, not per request.

use crate::proto::types::{flag_schema, FlagSchema};
use crate::proto::wkt::{value::Kind, Struct, Value};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::collections::BTreeMap as HashMap;

/// A variant value (`google.protobuf.Struct`), keys sorted at every depth.
pub struct SortedStruct<'a>(pub &'a Struct);

/// A flag's schema, keys sorted at every depth.
pub struct SortedStructSchema<'a>(pub &'a flag_schema::StructFlagSchema);

struct SortedValue<'a>(&'a Value);
struct SortedSchema<'a>(&'a FlagSchema);
struct SortedListSchema<'a>(&'a flag_schema::ListFlagSchema);
struct SortedSchemaFields<'a>(&'a HashMap<String, FlagSchema>);

fn sorted_map<'a, S: Serializer, V: 'a, W: Serialize>(
    ser: S,
    map: impl IntoIterator<Item = (&'a String, &'a V)>,
    view: impl Fn(&'a V) -> W,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&String, &V)> = map.into_iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = ser.serialize_map(Some(entries.len()))?;
    for (k, v) in entries {
        out.serialize_entry(k, &view(v))?;
    }
    out.end()
}

/// `{"<field>": view}`, or `{}` when there is nothing to write (pbjson
/// omits unset and empty fields).
fn one_field<S: Serializer, W: Serialize>(ser: S, field: &str, view: Option<W>) -> Result<S::Ok, S::Error> {
    let mut out = ser.serialize_map(Some(usize::from(view.is_some())))?;
    if let Some(v) = view {
        out.serialize_entry(field, &v)?;
    }
    out.end()
}

impl Serialize for SortedStruct<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        sorted_map(ser, &self.0.fields, SortedValue)
    }
}

impl Serialize for SortedValue<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match &self.0.kind {
            Some(Kind::StructValue(s)) => SortedStruct(s).serialize(ser),
            Some(Kind::ListValue(l)) => ser.collect_seq(l.values.iter().map(SortedValue)),
            _ => self.0.serialize(ser),
        }
    }
}

impl Serialize for SortedStructSchema<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let fields = &self.0.schema;
        one_field(ser, "schema", (!fields.is_empty()).then_some(SortedSchemaFields(fields)))
    }
}

impl Serialize for SortedSchemaFields<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        sorted_map(ser, self.0, SortedSchema)
    }
}

impl Serialize for SortedSchema<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use flag_schema::SchemaType;
        match &self.0.schema_type {
            Some(SchemaType::StructSchema(s)) => one_field(ser, "structSchema", Some(SortedStructSchema(s))),
            Some(SchemaType::ListSchema(l)) => one_field(ser, "listSchema", Some(SortedListSchema(l))),
            // Leaf schemas hold no maps.
            _ => self.0.serialize(ser),
        }
    }
}

impl Serialize for SortedListSchema<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        one_field(ser, "elementSchema", self.0.element_schema.as_deref().map(SortedSchema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flag_schema::{ListFlagSchema, SchemaType, StructFlagSchema};

    fn keys(prefix: &str, step: usize) -> Vec<String> {
        (0..24).map(|i| format!("{prefix}{:02}", (i * step) % 24)).collect()
    }

    /// The keys' order of appearance in `json`.
    fn order(json: &str, keys: &[String]) -> Vec<String> {
        let mut found: Vec<(usize, String)> =
            keys.iter().map(|k| (json.find(&format!("\"{k}\"")).expect("key written"), k.clone())).collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    }

    fn sorted(keys: &[String]) -> Vec<String> {
        let mut v = keys.to_vec();
        v.sort();
        v
    }

    fn leaf(t: SchemaType) -> FlagSchema {
        FlagSchema { schema_type: Some(t) }
    }

    #[test]
    fn a_struct_is_written_as_pbjson_writes_it_with_sorted_keys_at_every_depth() {
        let (outer, inner) = (keys("k", 7), keys("i", 5));
        let mut nested = Struct::default();
        for k in &inner {
            nested.fields.insert(k.clone(), Value { kind: Some(Kind::BoolValue(true)) });
        }
        let mut s = Struct::default();
        for (n, k) in outer.iter().enumerate() {
            s.fields.insert(k.clone(), Value { kind: Some(Kind::NumberValue(n as f64 + 0.5)) });
        }
        let list = vec![
            Value { kind: Some(Kind::StructValue(nested)) },
            Value { kind: Some(Kind::StringValue("s\"q".into())) },
            Value { kind: Some(Kind::NullValue(0)) },
            Value { kind: None },
        ];
        s.fields
            .insert("zz".into(), Value { kind: Some(Kind::ListValue(crate::proto::wkt::ListValue { values: list })) });

        let json = serde_json::to_string(&SortedStruct(&s)).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, serde_json::to_value(&s).unwrap(), "the same JSON as pbjson's, reordered");
        assert_eq!(order(&json, &outer), sorted(&outer));
        assert_eq!(order(&json, &inner), sorted(&inner));
    }

    #[test]
    fn a_schema_is_written_as_pbjson_writes_it_with_sorted_keys_at_every_depth() {
        let (outer, inner) = (keys("k", 7), keys("i", 5));
        let mut element = StructFlagSchema::default();
        for k in &inner {
            element.schema.insert(k.clone(), leaf(SchemaType::StringSchema(flag_schema::StringFlagSchema {})));
        }
        let mut schema = StructFlagSchema::default();
        for k in &outer {
            schema.schema.insert(k.clone(), leaf(SchemaType::BoolSchema(flag_schema::BoolFlagSchema {})));
        }
        let list = ListFlagSchema { element_schema: Some(Box::new(leaf(SchemaType::StructSchema(element)))) };
        schema.schema.insert("zl".into(), leaf(SchemaType::ListSchema(Box::new(list))));
        schema
            .schema
            .insert("zm".into(), leaf(SchemaType::ListSchema(Box::new(ListFlagSchema { element_schema: None }))));
        schema.schema.insert("zs".into(), leaf(SchemaType::StructSchema(StructFlagSchema::default())));
        schema.schema.insert("zu".into(), FlagSchema { schema_type: None });
        schema.schema.insert("zi".into(), leaf(SchemaType::IntSchema(flag_schema::IntFlagSchema {})));
        schema.schema.insert("zd".into(), leaf(SchemaType::DoubleSchema(flag_schema::DoubleFlagSchema {})));

        let json = serde_json::to_string(&SortedStructSchema(&schema)).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, serde_json::to_value(&schema).unwrap(), "the same JSON as pbjson's, reordered");
        assert_eq!(order(&json, &outer), sorted(&outer));
        assert_eq!(order(&json, &inner), sorted(&inner));
        let empty = serde_json::to_string(&SortedStructSchema(&StructFlagSchema::default())).unwrap();
        assert_eq!(empty, serde_json::to_string(&StructFlagSchema::default()).unwrap());
    }
}
