//! Binary operators: arithmetic and comparison between scalars and vectors, vector matching
//! (one-to-one, `on`/`ignoring`, `group_left`/`group_right`) and the set operators.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::stats::go_pow;
use super::{drop_metric_name, ensure_unique_labelsets, Evaluator, Sample, StepValue};
use crate::error::QueryError;
use crate::labels::{Labels, METRIC_NAME};
use crate::plan::{BinOp, Cardinality, Node, VectorMatching};

pub(super) fn eval(
    ev: &Evaluator<'_>,
    op: BinOp,
    lhs: &Node,
    rhs: &Node,
    return_bool: bool,
    matching: &VectorMatching,
    t: i64,
) -> Result<StepValue, QueryError> {
    let l = ev.eval(lhs, t)?;
    let r = ev.eval(rhs, t)?;
    let out = match (l, r) {
        (StepValue::Scalar(a), StepValue::Scalar(b)) => {
            let (value, keep) = apply(op, a, b);
            return Ok(StepValue::Scalar(if op.is_comparison() {
                bool_value(keep)
            } else {
                value
            }));
        }
        (StepValue::Vector(v), StepValue::Scalar(s)) => vector_scalar(op, v, s, false, return_bool),
        (StepValue::Scalar(s), StepValue::Vector(v)) => vector_scalar(op, v, s, true, return_bool),
        (StepValue::Vector(a), StepValue::Vector(b)) => match op {
            BinOp::And => and(a, b, matching),
            BinOp::Or => or(a, b, matching),
            BinOp::Unless => unless(a, b, matching),
            _ => vector_vector(op, a, b, return_bool, matching)?,
        },
        _ => {
            return Err(QueryError::Evaluate(
                "binary operators take scalars and instant vectors".to_string(),
            ))
        }
    };
    ensure_unique_labelsets(&out)?;
    Ok(StepValue::Vector(out))
}

/// `lhs op rhs`: the arithmetic result, or for a comparison the left value and whether it holds.
fn apply(op: BinOp, l: f64, r: f64) -> (f64, bool) {
    match op {
        BinOp::Add => (l + r, true),
        BinOp::Sub => (l - r, true),
        BinOp::Mul => (l * r, true),
        BinOp::Div => (l / r, true),
        // Rust's `%` on floats is C's fmod, as Go's math.Mod.
        BinOp::Mod => (l % r, true),
        BinOp::Pow => (go_pow(l, r), true),
        BinOp::Atan2 => (l.atan2(r), true),
        BinOp::Eq => (l, l == r),
        BinOp::Ne => (l, l != r),
        BinOp::Gt => (l, l > r),
        BinOp::Lt => (l, l < r),
        BinOp::Ge => (l, l >= r),
        BinOp::Le => (l, l <= r),
        BinOp::And | BinOp::Or | BinOp::Unless => (l, true),
    }
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Arithmetic drops the metric name; so does a comparison with `bool`. A filtering comparison
/// keeps the series as it is.
fn drops_name(op: BinOp, return_bool: bool) -> bool {
    !op.is_comparison() || return_bool
}

fn vector_scalar(
    op: BinOp,
    vector: Vec<Sample>,
    scalar: f64,
    scalar_on_left: bool,
    return_bool: bool,
) -> Vec<Sample> {
    vector
        .into_iter()
        .filter_map(|s| {
            let (l, r) = if scalar_on_left {
                (scalar, s.value)
            } else {
                (s.value, scalar)
            };
            let (mut value, mut keep) = apply(op, l, r);
            // A filter keeps the vector's value even when the scalar is on the left.
            if op.is_comparison() && scalar_on_left {
                value = r;
            }
            if return_bool {
                value = bool_value(keep);
                keep = true;
            }
            keep.then(|| {
                if drops_name(op, return_bool) {
                    s.unnamed_with(value)
                } else {
                    Sample { value, ..s }
                }
            })
        })
        .collect()
}

/// The labels two samples are matched on: `on(...)` keeps the listed ones, otherwise all but the
/// listed ones (`ignoring(...)`) and the metric name.
fn signature(sample: &Sample, matching: &VectorMatching) -> Arc<Labels> {
    if matching.on {
        Arc::new(sample.labels.keep(&matching.labels))
    } else if matching.labels.is_empty() {
        drop_metric_name(sample)
    } else {
        let mut ignored: Vec<&str> = matching.labels.iter().map(String::as_str).collect();
        ignored.push(METRIC_NAME);
        Arc::new(sample.labels.without(&ignored))
    }
}

fn vector_vector(
    op: BinOp,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    return_bool: bool,
    matching: &VectorMatching,
) -> Result<Vec<Sample>, QueryError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    // The right side is the "one" side; group_right swaps the roles.
    let one_to_many = matching.card == Cardinality::OneToMany;
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };

    let mut one_by_signature: HashMap<Arc<Labels>, &Sample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = signature(s, matching);
        if let Some(previous) = one_by_signature.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Evaluate(format!(
                "found duplicate series for the match group {sig} on the {side} hand-side of the \
                 operation: [{}, {}];many-to-many matching not allowed: matching labels must be \
                 unique on one side",
                s.labels, previous.labels
            )));
        }
        one_by_signature.insert(sig, s);
    }

    // For one-to-one, the signatures already matched; for many-to-one, the result label sets
    // of each signature (the grouping labels must keep them apart).
    let mut matched: HashMap<Arc<Labels>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for s in &many {
        let sig = signature(s, matching);
        let Some(other) = one_by_signature.get(&sig) else {
            continue;
        };
        let (l, r) = if one_to_many {
            (other.value, s.value)
        } else {
            (s.value, other.value)
        };
        let (mut value, keep) = apply(op, l, r);
        if return_bool {
            value = bool_value(keep);
        } else if !keep {
            continue;
        }
        let labels = result_labels(s, &other.labels, op, return_bool, matching);
        if matching.card == Cardinality::OneToOne {
            if matched.contains_key(&sig) {
                return Err(QueryError::Evaluate(
                    "multiple matches for labels: many-to-one matching must be explicit \
                     (group_left/group_right)"
                        .to_string(),
                ));
            }
            matched.insert(sig, HashSet::new());
        } else if !matched.entry(sig).or_default().insert((*labels).clone()) {
            return Err(QueryError::Evaluate(
                "multiple matches for labels: grouping labels must ensure unique matches"
                    .to_string(),
            ));
        }
        out.push(Sample::new(labels, value));
    }
    Ok(out)
}

/// The labels of a vector-vector result: the "many" side's, without the metric name where the
/// operator drops it; for one-to-one only the `on` labels, or all but the `ignoring` ones; plus
/// the `group_x(...)` labels taken from the "one" side.
fn result_labels(
    many: &Sample,
    one: &Labels,
    op: BinOp,
    return_bool: bool,
    matching: &VectorMatching,
) -> Arc<Labels> {
    let mut labels = if drops_name(op, return_bool) {
        drop_metric_name(many)
    } else {
        many.labels.clone()
    };
    if matching.card == Cardinality::OneToOne {
        if matching.on {
            labels = Arc::new(labels.keep(&matching.labels));
        } else if !matching.labels.is_empty() {
            labels = Arc::new(labels.without(&matching.labels));
        }
    }
    for name in &matching.include {
        labels = Arc::new(labels.with(name, one.value_or_empty(name)));
    }
    labels
}

fn and(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &VectorMatching) -> Vec<Sample> {
    let right: HashSet<Arc<Labels>> = rhs.iter().map(|s| signature(s, matching)).collect();
    lhs.into_iter()
        .filter(|s| right.contains(&signature(s, matching)))
        .collect()
}

fn or(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &VectorMatching) -> Vec<Sample> {
    let left: HashSet<Arc<Labels>> = lhs.iter().map(|s| signature(s, matching)).collect();
    let mut out = lhs;
    out.extend(
        rhs.into_iter()
            .filter(|s| !left.contains(&signature(s, matching))),
    );
    out
}

fn unless(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &VectorMatching) -> Vec<Sample> {
    let right: HashSet<Arc<Labels>> = rhs.iter().map(|s| signature(s, matching)).collect();
    lhs.into_iter()
        .filter(|s| !right.contains(&signature(s, matching)))
        .collect()
}
