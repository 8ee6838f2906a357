//! Generated wire types (prost) and their proto3 JSON mapping (pbjson).
#![allow(clippy::all, missing_docs, dead_code)]

pub mod google {
    pub mod r#type {
        include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
        include!(concat!(env!("OUT_DIR"), "/google.r#type.serde.rs"));
    }
}

pub mod confidence {
    pub mod iam {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/confidence.iam.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/confidence.iam.v1.serde.rs"));
        }
    }
    pub mod flags {
        pub mod types {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.types.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.types.v1.serde.rs"));
            }
        }
        pub mod admin {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.admin.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.admin.v1.serde.rs"));
            }
        }
        pub mod resolver {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.resolver.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/confidence.flags.resolver.v1.serde.rs"));
                pub mod events {
                    include!(concat!(env!("OUT_DIR"), "/confidence.flags.resolver.v1.events.rs"));
                    include!(concat!(env!("OUT_DIR"), "/confidence.flags.resolver.v1.events.serde.rs"));
                }
            }
        }
    }
}

/// edgeflag's own queue envelope (proto/edgeflag/v1/telemetry.proto).
pub mod edgeflag {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/edgeflag.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/edgeflag.v1.serde.rs"));
    }
}

pub use confidence::flags::admin::v1 as admin;
pub use confidence::flags::resolver::v1 as resolver;
pub use confidence::flags::resolver::v1::events;
pub use confidence::flags::types::v1 as types;
pub use confidence::iam::v1 as iam;
pub use pbjson_types as wkt;

/// Whether `s` nests deeper than `limit` levels of structs and lists, `s`
/// itself being level 1. Iterative, so it is safe on any input; callers
/// check it before recursing over a value that came from outside.
pub fn struct_nests_deeper_than(s: &wkt::Struct, limit: usize) -> bool {
    use wkt::value::Kind;
    if limit == 0 {
        return true;
    }
    let mut stack: Vec<(&wkt::Value, usize)> = s.fields.values().map(|v| (v, 2)).collect();
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &wkt::Value>> = match v.kind.as_ref() {
            Some(Kind::StructValue(s)) => Box::new(s.fields.values()),
            Some(Kind::ListValue(l)) => Box::new(l.values.iter()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        stack.extend(children.map(|c| (c, depth.saturating_add(1))));
    }
    false
}
