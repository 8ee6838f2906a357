//! Segment targeting: boolean expressions over named criteria, and the
//! attribute rules that test the evaluation context.
//!
//! Semantics follow the conformance suite's `general` expectations, which
//! differ from the reference Rust resolver on purpose: an unparsable context
//! value fails only its own comparison (never the request), a null or
//! missing attribute is an empty list to `any`/`all`, and an `eq` against an
//! empty value tests for null.

mod attribute;
pub mod values;

pub use attribute::{attribute_matches, lookup};

use crate::proto::types::{expression, targeting::Criterion, Expression};
use std::collections::BTreeMap as HashMap;

/// Three-valued truth: `Unknown` appears only while discovering which
/// sticky assignments a resolve needs to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    False,
    True,
    Unknown,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }
}

/// Why a criterion could not be evaluated. Either way the rule that needed
/// it is skipped or the flag reports it; the request never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalError {
    /// A rule shape this resolver does not understand (unset oneofs, an
    /// `eq` without a value).
    Unrecognized,
    /// A sticky-assignment lookup while the caller has no store.
    MaterializationUnsupported,
    /// A sticky-assignment lookup whose store read failed.
    StickyUnavailable,
}

/// Nesting deeper than this is treated as a non-match rather than risking
/// the stack on adversarial states.
pub const MAX_DEPTH: usize = 64;

/// Evaluates `expr` over `criteria`, asking `criterion` for each leaf.
/// AND and OR short-circuit left to right; errors surface in operand order.
pub fn eval_expression<'a, F>(
    expr: &'a Expression,
    criteria: &'a HashMap<String, Criterion>,
    criterion: &mut F,
    depth: usize,
) -> Result<Tri, EvalError>
where
    F: FnMut(&'a Criterion) -> Result<Tri, EvalError>,
{
    if depth > MAX_DEPTH {
        return Ok(Tri::False);
    }
    let Some(kind) = &expr.expression else {
        return Ok(Tri::False);
    };
    Ok(match kind {
        expression::Expression::Ref(name) => match criteria.get(name) {
            Some(c) => criterion(c)?,
            None => Tri::False,
        },
        expression::Expression::Not(inner) => eval_expression(inner, criteria, criterion, depth + 1)?.not(),
        expression::Expression::And(ops) => {
            let mut acc = Tri::True;
            for op in &ops.operands {
                match eval_expression(op, criteria, criterion, depth + 1)? {
                    Tri::False => return Ok(Tri::False),
                    Tri::Unknown => acc = Tri::Unknown,
                    Tri::True => {}
                }
            }
            acc
        }
        expression::Expression::Or(ops) => {
            let mut acc = Tri::False;
            for op in &ops.operands {
                match eval_expression(op, criteria, criterion, depth + 1)? {
                    Tri::True => return Ok(Tri::True),
                    Tri::Unknown => acc = Tri::Unknown,
                    Tri::False => {}
                }
            }
            acc
        }
    })
}
