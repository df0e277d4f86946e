//! The second phase: evaluating the plan in memory over the fetched series, one evaluation time
//! at a time (an instant query is one time; a range query is start, start + step, ..., end).

mod aggregate;
mod binary;
mod functions;
pub(crate) mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::control::Control;
use crate::error::QueryError;
use crate::labels::Labels;
use crate::plan::{Node, Plan, Selector};
use crate::source::Point;
use crate::value::{InstantSample, RangeSeries, Value};

/// A fetched series, with its labels without `__name__` computed once (most functions drop it).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) labels: Arc<Labels>,
    pub(crate) unnamed: Arc<Labels>,
    pub(crate) samples: Vec<Point>,
}

impl Loaded {
    pub(crate) fn new(labels: Labels, samples: Vec<Point>) -> Self {
        let unnamed = if labels.metric_name().is_some() {
            Arc::new(labels.without_metric_name())
        } else {
            Arc::new(labels.clone())
        };
        Loaded {
            labels: Arc::new(labels),
            unnamed,
            samples,
        }
    }

    /// The samples in `(from, to]`.
    fn window(&self, from: i64, to: i64) -> &[Point] {
        let lo = self.samples.partition_point(|p| p.t_ms <= from);
        let hi = self.samples.partition_point(|p| p.t_ms <= to);
        &self.samples[lo..hi.max(lo)]
    }
}

/// One element of an instant vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) labels: Arc<Labels>,
    /// `labels` without `__name__`, when already known (a selected series' precomputed set), so
    /// dropping the name or matching on all other labels builds no new set at every step.
    pub(crate) unnamed: Option<Arc<Labels>>,
    pub(crate) value: f64,
}

impl Sample {
    pub(crate) fn new(labels: Arc<Labels>, value: f64) -> Self {
        Sample {
            labels,
            unnamed: None,
            value,
        }
    }

    /// A sample of a selected series, as is.
    pub(crate) fn of(series: &Loaded, value: f64) -> Self {
        Sample {
            labels: series.labels.clone(),
            unnamed: Some(series.unnamed.clone()),
            value,
        }
    }

    /// The same sample with another value and its labels without `__name__`.
    pub(crate) fn unnamed_with(&self, value: f64) -> Self {
        let unnamed = drop_metric_name(self);
        Sample {
            labels: unnamed.clone(),
            unnamed: Some(unnamed),
            value,
        }
    }
}

/// A node's value at one evaluation time.
#[derive(Debug)]
pub(crate) enum StepValue {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<(Arc<Labels>, Vec<Point>)>),
}

/// Evaluates a plan over fetched data.
pub(crate) struct Evaluator<'a> {
    pub(crate) plan: &'a Plan,
    /// The series of each selector, by selector index.
    pub(crate) data: &'a [Vec<Loaded>],
    pub(crate) lookback_ms: i64,
    pub(crate) control: &'a Control,
}

impl Evaluator<'_> {
    /// The query's value at `t` (an instant query).
    pub(crate) fn instant(&self, t: i64) -> Result<Value, QueryError> {
        self.control.check("expression evaluation")?;
        Ok(match self.eval(&self.plan.root, t)? {
            StepValue::Scalar(value) => Value::Scalar { t_ms: t, value },
            StepValue::String(value) => Value::String { t_ms: t, value },
            StepValue::Vector(samples) => Value::Vector(
                samples
                    .into_iter()
                    .map(|s| InstantSample {
                        labels: Arc::unwrap_or_clone(s.labels),
                        t_ms: t,
                        value: s.value,
                    })
                    .collect(),
            ),
            StepValue::Matrix(series) => matrix(series),
        })
    }

    /// The query evaluated at `start, start + step, ..., <= end`, collected per series and sorted
    /// by labels. The plan's root is a scalar or an instant vector.
    pub(crate) fn range(&self, start: i64, end: i64, step: i64) -> Result<Value, QueryError> {
        let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
        let mut series: Vec<(Arc<Labels>, Vec<Point>)> = Vec::new();
        let mut t = start;
        while t <= end {
            self.control.check("expression evaluation")?;
            let samples = match self.eval(&self.plan.root, t)? {
                StepValue::Scalar(value) => vec![Sample::new(Arc::default(), value)],
                StepValue::Vector(samples) => samples,
                StepValue::String(_) | StepValue::Matrix(_) => {
                    return Err(QueryError::Evaluate(
                        "a range query evaluates to a scalar or an instant vector".to_string(),
                    ))
                }
            };
            for s in samples {
                let i = *index.entry(s.labels.clone()).or_insert_with(|| {
                    series.push((s.labels.clone(), Vec::new()));
                    series.len() - 1
                });
                series[i].1.push(Point::new(t, s.value));
            }
            t += step;
        }
        Ok(matrix(series))
    }

    pub(crate) fn eval(&self, node: &Node, t: i64) -> Result<StepValue, QueryError> {
        Ok(match node {
            Node::Number(v) => StepValue::Scalar(*v),
            Node::String(s) => StepValue::String(s.clone()),
            Node::VectorSelector(id) => StepValue::Vector(
                self.instant_points(*id, t)
                    .map(|(series, p)| Sample::of(series, p.value))
                    .collect(),
            ),
            Node::MatrixSelector(id) => StepValue::Matrix(
                self.range_windows(*id, t)
                    .map(|(series, window)| (series.labels.clone(), window.to_vec()))
                    .collect(),
            ),
            Node::Negate(inner) => match self.eval(inner, t)? {
                StepValue::Scalar(v) => StepValue::Scalar(-v),
                StepValue::Vector(samples) => {
                    let out: Vec<Sample> =
                        samples.iter().map(|s| s.unnamed_with(-s.value)).collect();
                    ensure_unique_labelsets(&out)?;
                    StepValue::Vector(out)
                }
                other => other,
            },
            Node::Binary {
                op,
                lhs,
                rhs,
                return_bool,
                matching,
            } => binary::eval(self, *op, lhs, rhs, *return_bool, matching, t)?,
            Node::Aggregate {
                op,
                param,
                grouping,
                expr,
            } => aggregate::eval(self, *op, param.as_deref(), grouping, expr, t)?,
            Node::Call { func, args } => functions::eval(self, func, args, t)?,
        })
    }

    pub(crate) fn eval_vector(&self, node: &Node, t: i64) -> Result<Vec<Sample>, QueryError> {
        match self.eval(node, t)? {
            StepValue::Vector(v) => Ok(v),
            other => Err(unexpected("instant vector", &other)),
        }
    }

    pub(crate) fn eval_scalar(&self, node: &Node, t: i64) -> Result<f64, QueryError> {
        match self.eval(node, t)? {
            StepValue::Scalar(v) => Ok(v),
            other => Err(unexpected("scalar", &other)),
        }
    }

    fn selector(&self, id: usize) -> &Selector {
        &self.plan.selectors[id]
    }

    /// Each series' latest sample in `(ref - lookback, ref]`, `ref` being `t` moved by the
    /// selector's `@` and offset; series without one are absent (that is staleness here: a
    /// series ends `lookback` after its last sample).
    pub(crate) fn instant_points(
        &self,
        id: usize,
        t: i64,
    ) -> impl Iterator<Item = (&Loaded, Point)> + '_ {
        let reference = self.selector(id).reference_time(t);
        let from = reference - self.lookback_ms;
        self.data[id].iter().filter_map(move |series| {
            let i = series.samples.partition_point(|p| p.t_ms <= reference);
            let p = *series.samples.get(i.checked_sub(1)?)?;
            (p.t_ms > from).then_some((series, p))
        })
    }

    /// Each series' samples in `(ref - range, ref]`, series with none left out. Also gives the
    /// window's bounds.
    pub(crate) fn range_windows(
        &self,
        id: usize,
        t: i64,
    ) -> impl Iterator<Item = (&Loaded, &[Point])> + '_ {
        let (from, to) = self.window_bounds(id, t);
        self.data[id].iter().filter_map(move |series| {
            let window = series.window(from, to);
            (!window.is_empty()).then_some((series, window))
        })
    }

    /// `(ref - range, ref]` of a range selector at `t`.
    pub(crate) fn window_bounds(&self, id: usize, t: i64) -> (i64, i64) {
        let selector = self.selector(id);
        let to = selector.reference_time(t);
        (to - selector.range_ms.unwrap_or(self.lookback_ms), to)
    }
}

/// A matrix result, sorted by labels as Prometheus sorts one.
fn matrix(mut series: Vec<(Arc<Labels>, Vec<Point>)>) -> Value {
    series.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Matrix(
        series
            .into_iter()
            .map(|(labels, points)| RangeSeries {
                labels: Arc::unwrap_or_clone(labels),
                points,
            })
            .collect(),
    )
}

fn unexpected(wanted: &str, got: &StepValue) -> QueryError {
    let got = match got {
        StepValue::Scalar(_) => "scalar",
        StepValue::String(_) => "string",
        StepValue::Vector(_) => "instant vector",
        StepValue::Matrix(_) => "range vector",
    };
    QueryError::Evaluate(format!("expected {wanted}, got {got}"))
}

/// A sample's labels without `__name__`, sharing a set already built when there is one.
pub(crate) fn drop_metric_name(sample: &Sample) -> Arc<Labels> {
    if let Some(unnamed) = &sample.unnamed {
        unnamed.clone()
    } else if sample.labels.metric_name().is_some() {
        Arc::new(sample.labels.without_metric_name())
    } else {
        sample.labels.clone()
    }
}

/// Prometheus' check after an operation that changes labels: two results with one label set
/// would be indistinguishable.
pub(crate) fn ensure_unique_labelsets(samples: &[Sample]) -> Result<(), QueryError> {
    if samples.len() < 2 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(samples.len());
    for s in samples {
        if !seen.insert(&*s.labels) {
            return Err(QueryError::Evaluate(
                "vector cannot contain metrics with the same labelset".to_string(),
            ));
        }
    }
    Ok(())
}
