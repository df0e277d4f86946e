//! The entry points: configuration and limits, instant and range queries, and the three phases
//! they run (prepare: parse and plan; fetch: read every selector through the source; evaluate:
//! compute in memory, synchronously).

use std::time::{Duration, Instant};

use crate::control::{CancelToken, Control};
use crate::error::QueryError;
use crate::eval::{Evaluator, Loaded};
use crate::matcher::Matchers;
use crate::plan::{plan, Kind, Plan};
use crate::source::SeriesSource;
use crate::value::Value;

/// Bounds on the work of one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// A range query may have at most this many steps after its start, as Prometheus' fixed
    /// 11,000: `(end - start) / step` above it is an error.
    pub max_points_per_series: u64,
    /// Series all selectors of a query may select together.
    pub max_series: usize,
    /// Samples all selectors of a query may load together.
    pub max_samples: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_points_per_series: 11_000,
            max_series: 10_000,
            max_samples: 5_000_000,
        }
    }
}

/// The engine's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// How far back an instant selector looks for a series' latest sample (Prometheus: 5 m).
    pub lookback_delta: Duration,
    /// The longest a query may take, fetching included (Prometheus: 2 m).
    pub timeout: Duration,
    pub limits: QueryLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lookback_delta: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            limits: QueryLimits::default(),
        }
    }
}

/// Per-query options.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    /// A shorter timeout than the engine's (Prometheus' `timeout` parameter); a longer one is
    /// capped at the engine's.
    pub timeout: Option<Duration>,
    /// Trips the query (e.g. when the client disconnects).
    pub cancel: CancelToken,
}

/// Evaluates PromQL with Prometheus semantics over a [`SeriesSource`].
#[derive(Clone, Debug, Default)]
pub struct Engine {
    config: EngineConfig,
}

#[derive(Clone, Copy, Debug)]
enum Range {
    Instant(i64),
    Steps { start: i64, end: i64, step: i64 },
}

/// A parsed and planned query, ready to fetch.
#[derive(Debug)]
pub struct PreparedQuery {
    plan: Plan,
    range: Range,
    lookback_ms: i64,
    limits: QueryLimits,
    control: Control,
}

/// A query with every selector's series loaded, ready to evaluate.
#[derive(Debug)]
pub struct FetchedQuery {
    prepared: PreparedQuery,
    data: Vec<Vec<Loaded>>,
    series_loaded: usize,
    samples_loaded: usize,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Engine { config }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Parses and plans an instant query at `time_ms`.
    pub fn prepare_instant(
        &self,
        query: &str,
        time_ms: i64,
        options: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        self.prepare(query, Range::Instant(time_ms), options)
    }

    /// Parses and plans a range query evaluated at `start_ms`, `start_ms + step_ms`, ... up to
    /// `end_ms` (no alignment: the API aligns nothing, as Prometheus).
    pub fn prepare_range(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        options: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        if end_ms < start_ms {
            return Err(QueryError::InvalidParameter(
                "end timestamp must not be before start time".to_string(),
            ));
        }
        if step_ms <= 0 {
            return Err(QueryError::InvalidParameter(
                "zero or negative query resolution step widths are not accepted. Try a positive \
                 integer"
                    .to_string(),
            ));
        }
        let max_points = self.config.limits.max_points_per_series;
        if ((end_ms - start_ms) / step_ms) as u64 > max_points {
            return Err(QueryError::LimitExceeded(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the \
                 query resolution (?step=XX)",
                thousands(max_points)
            )));
        }
        self.prepare(
            query,
            Range::Steps {
                start: start_ms,
                end: end_ms,
                step: step_ms,
            },
            options,
        )
    }

    fn prepare(
        &self,
        query: &str,
        range: Range,
        options: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        let timeout = options
            .timeout
            .map_or(self.config.timeout, |t| t.min(self.config.timeout));
        let control = Control {
            deadline: Instant::now() + timeout,
            cancel: options.cancel.clone(),
        };
        let expr = promql_parser::parser::parse(query).map_err(QueryError::Parse)?;
        let lookback_ms =
            i64::try_from(self.config.lookback_delta.as_millis()).unwrap_or(i64::MAX / 4);
        let (start, end) = match range {
            Range::Instant(t) => (t, t),
            Range::Steps { start, end, .. } => (start, end),
        };
        let plan = plan(&expr, start, end, lookback_ms)?;
        if let Range::Steps { .. } = range {
            let kind = plan.root.kind();
            if !matches!(kind, Kind::Scalar | Kind::Vector) {
                return Err(QueryError::InvalidParameter(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant \
                     Vector",
                    kind.name()
                )));
            }
        }
        Ok(PreparedQuery {
            plan,
            range,
            lookback_ms,
            limits: self.config.limits.clone(),
            control,
        })
    }

    /// Runs an instant query: prepare, fetch, evaluate.
    pub async fn instant_query<S: SeriesSource>(
        &self,
        source: &S,
        query: &str,
        time_ms: i64,
        options: &QueryOptions,
    ) -> Result<Value, QueryError> {
        self.prepare_instant(query, time_ms, options)?
            .fetch(source)
            .await?
            .evaluate()
    }

    /// Runs a range query: prepare, fetch, evaluate. The result is a matrix.
    pub async fn range_query<S: SeriesSource>(
        &self,
        source: &S,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        options: &QueryOptions,
    ) -> Result<Value, QueryError> {
        self.prepare_range(query, start_ms, end_ms, step_ms, options)?
            .fetch(source)
            .await?
            .evaluate()
    }
}

impl PreparedQuery {
    /// What the fetch will ask the source for: each selector's matchers and the inclusive window.
    pub fn selections(&self) -> impl Iterator<Item = (&Matchers, i64, i64)> {
        self.plan
            .selectors
            .iter()
            .map(|s| (&s.matchers, s.fetch_start, s.fetch_end))
    }

    /// Reads every selector's series through `source`, one selector after the other, within the
    /// query's deadline and limits.
    pub async fn fetch<S: SeriesSource>(self, source: &S) -> Result<FetchedQuery, QueryError> {
        const PHASE: &str = "query preparation";
        let deadline = tokio::time::Instant::from_std(self.control.deadline);
        let mut data = Vec::with_capacity(self.plan.selectors.len());
        let (mut series_loaded, mut samples_loaded) = (0usize, 0usize);
        for selector in &self.plan.selectors {
            self.control.check(PHASE)?;
            let selected = tokio::time::timeout_at(
                deadline,
                source.select(&selector.matchers, selector.fetch_start, selector.fetch_end),
            )
            .await
            .map_err(|_| QueryError::Timeout(PHASE))?
            .map_err(QueryError::Select)?;
            series_loaded += selected.len();
            if series_loaded > self.limits.max_series {
                return Err(QueryError::LimitExceeded(format!(
                    "query selects more than {} series; add label matchers to select fewer",
                    self.limits.max_series
                )));
            }
            let mut loaded = Vec::with_capacity(selected.len());
            for mut series in selected {
                if !series.samples.is_sorted_by_key(|p| p.t_ms) {
                    series.samples.sort_by_key(|p| p.t_ms);
                }
                samples_loaded += series.samples.len();
                if samples_loaded > self.limits.max_samples {
                    return Err(QueryError::LimitExceeded(format!(
                        "query loads more than {} samples; shorten the time range or select \
                         fewer series",
                        self.limits.max_samples
                    )));
                }
                loaded.push(Loaded::new(series.labels, series.samples));
            }
            // Selectors yield series in label order, as Prometheus' storage does.
            loaded.sort_by(|a, b| a.labels.cmp(&b.labels));
            data.push(loaded);
        }
        Ok(FetchedQuery {
            prepared: self,
            data,
            series_loaded,
            samples_loaded,
        })
    }
}

impl FetchedQuery {
    /// Evaluates the query in memory (CPU only: callers on an async runtime may run it on a
    /// blocking thread). Checks the deadline and the cancel token at every step.
    pub fn evaluate(&self) -> Result<Value, QueryError> {
        let evaluator = Evaluator {
            plan: &self.prepared.plan,
            data: &self.data,
            lookback_ms: self.prepared.lookback_ms,
            control: &self.prepared.control,
        };
        match self.prepared.range {
            Range::Instant(t) => evaluator.instant(t),
            Range::Steps { start, end, step } => evaluator.range(start, end, step),
        }
    }

    /// Series the selectors loaded (counted against `max_series`).
    pub fn series_loaded(&self) -> usize {
        self.series_loaded
    }

    /// Samples the selectors loaded (counted against `max_samples`).
    pub fn samples_loaded(&self) -> usize {
        self.samples_loaded
    }
}

/// `11000` as `11,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(11_000), "11,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
