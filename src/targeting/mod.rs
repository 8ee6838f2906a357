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
    /// `eq` without a value, nesting past [`MAX_DEPTH`]).
    Unrecognized,
    /// A sticky-assignment lookup while the caller has no store.
    MaterializationUnsupported,
    /// A sticky-assignment lookup whose store read failed.
    StickyUnavailable,
}

/// Deepest targeting nesting: expression levels, counted on through the
/// segments a criterion references. A state nesting deeper is refused at
/// load ([`nesting_depth`]); at evaluation, deeper (only reachable through a
/// reference cycle the load check cannot measure) fails the rule as
/// unrecognized rather than risking the stack.
pub const MAX_DEPTH: usize = 64;

/// Evaluates `expr` over `criteria`, asking `criterion` for each leaf with
/// the depth it sits at (a referenced segment's expression starts one
/// deeper). AND and OR short-circuit left to right; errors surface in
/// operand order.
pub fn eval_expression<'a, F>(
    expr: &'a Expression,
    criteria: &'a HashMap<String, Criterion>,
    criterion: &mut F,
    depth: usize,
) -> Result<Tri, EvalError>
where
    F: FnMut(&'a Criterion, usize) -> Result<Tri, EvalError>,
{
    if depth > MAX_DEPTH {
        // An error, not a non-match: under a NOT a non-match would match.
        return Err(EvalError::Unrecognized);
    }
    let Some(kind) = &expr.expression else {
        return Ok(Tri::False);
    };
    Ok(match kind {
        expression::Expression::Ref(name) => match criteria.get(name) {
            Some(c) => criterion(c, depth)?,
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

/// How deep evaluating `expr` can nest, as [`eval_expression`] counts it:
/// the deepest `Ref`, plus one and the referenced segment's own depth for a
/// segment criterion (`segment_depth`). Iterative over the expression.
pub fn nesting_depth(
    expr: &Expression,
    criteria: &HashMap<String, Criterion>,
    segment_depth: &mut impl FnMut(&str) -> usize,
) -> usize {
    let mut deepest = 0usize;
    let mut stack = vec![(expr, 0usize)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match &e.expression {
            None => {}
            Some(expression::Expression::Ref(name)) => {
                let below = match criteria.get(name).and_then(|c| c.criterion.as_ref()) {
                    Some(crate::proto::types::targeting::criterion::Criterion::Segment(s)) => {
                        segment_depth(&s.segment).saturating_add(1)
                    }
                    _ => 0,
                };
                deepest = deepest.max(depth.saturating_add(below));
            }
            Some(expression::Expression::Not(inner)) => stack.push((inner, depth.saturating_add(1))),
            Some(expression::Expression::And(ops) | expression::Expression::Or(ops)) => {
                stack.extend(ops.operands.iter().map(|op| (op, depth.saturating_add(1))));
            }
        }
    }
    deepest
}
