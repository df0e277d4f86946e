//! Aggregation operators (`sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`,
//! `topk`, `bottomk`, `quantile`, `count_values`) with `by` and `without`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{stats, Evaluator, Sample, StepValue};
use crate::error::QueryError;
use crate::labels::{Labels, METRIC_NAME};
use crate::plan::{AggOp, Grouping, Node};
use crate::value::format_value;

pub(super) fn eval(
    ev: &Evaluator<'_>,
    op: AggOp,
    param: Option<&Node>,
    grouping: &Grouping,
    expr: &Node,
    t: i64,
) -> Result<StepValue, QueryError> {
    // The parameter is evaluated first, as Prometheus does.
    let param = match (op, param) {
        (AggOp::CountValues, Some(Node::String(label))) => Param::Label(label),
        (AggOp::Topk | AggOp::Bottomk | AggOp::Quantile, Some(node)) => {
            Param::Number(ev.eval_scalar(node, t)?)
        }
        _ => Param::None,
    };
    let input = ev.eval_vector(expr, t)?;

    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<usize>)> = Vec::new();
    for (i, s) in input.iter().enumerate() {
        let key = group_key(&s.labels, grouping);
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }

    let mut out = Vec::with_capacity(groups.len());
    for (key, members) in groups {
        let values = || members.iter().map(|&i| input[i].value);
        let value = match op {
            AggOp::Sum => stats::sum(values()),
            AggOp::Avg => stats::mean(&values().collect::<Vec<_>>()),
            AggOp::Min => stats::min(values()),
            AggOp::Max => stats::max(values()),
            AggOp::Count => members.len() as f64,
            AggOp::Group => 1.0,
            AggOp::Stddev => stats::variance(values()).sqrt(),
            AggOp::Stdvar => stats::variance(values()),
            AggOp::Quantile => stats::quantile(param.number(), values().collect()),
            AggOp::Topk | AggOp::Bottomk => {
                let k = k_of(param.number())?;
                let mut chosen: Vec<&Sample> = members.iter().map(|&i| &input[i]).collect();
                // Largest first for topk, smallest first for bottomk.
                let top = op == AggOp::Topk;
                chosen.sort_by(|a, b| stats::by_value_nan_last(a.value, b.value, top));
                out.extend(chosen.into_iter().take(k).cloned());
                continue;
            }
            AggOp::CountValues => {
                let label = param.label();
                let mut counts: Vec<(String, usize)> = Vec::new();
                for v in values() {
                    let text = format_value(v);
                    match counts.iter_mut().find(|(t, _)| *t == text) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((text, 1)),
                    }
                }
                for (text, n) in counts {
                    out.push(Sample::new(Arc::new(key.with(label, &text)), n as f64));
                }
                continue;
            }
        };
        out.push(Sample::new(Arc::new(key), value));
    }
    Ok(StepValue::Vector(out))
}

enum Param<'a> {
    None,
    Number(f64),
    Label(&'a str),
}

impl Param<'_> {
    fn number(&self) -> f64 {
        match self {
            Param::Number(v) => *v,
            _ => f64::NAN,
        }
    }

    fn label(&self) -> &str {
        match self {
            Param::Label(l) => l,
            _ => "",
        }
    }
}

/// The labels a sample is grouped by: `by (...)` keeps only the listed ones (the metric name
/// only if listed), `without (...)` drops the listed ones and the metric name.
fn group_key(labels: &Labels, grouping: &Grouping) -> Labels {
    if grouping.without {
        let mut dropped: Vec<&str> = grouping.labels.iter().map(String::as_str).collect();
        dropped.push(METRIC_NAME);
        labels.without(&dropped)
    } else {
        labels.keep(&grouping.labels)
    }
}

/// `topk`'s and `bottomk`'s k: truncated toward zero; below 1 selects nothing.
fn k_of(param: f64) -> Result<usize, QueryError> {
    if param.is_nan() || param > i64::MAX as f64 || param < i64::MIN as f64 {
        return Err(QueryError::Evaluate(format!(
            "Scalar value {} overflows int64",
            format_value(param)
        )));
    }
    Ok(param.trunc().max(0.0) as usize)
}
