//! PromQL evaluation with Prometheus semantics over any series source: instant and range
//! queries, the metadata helpers of `/api/v1/series`, `/labels` and `/label/{name}/values`, and
//! results serialized exactly as Prometheus' HTTP API writes them. Pure Rust: no storage, no HTTP.
//!
//! # Use
//!
//! The store implements [`SeriesSource`] (select series by [`Matchers`] in a time window, with or
//! without samples); an [`Engine`] runs queries over it.
//!
//! ```
//! use promql_engine::{Engine, InMemorySource, Labels, Point, QueryOptions, Series};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let source = InMemorySource::new(vec![Series::new(
//!     Labels::new([("__name__", "DCGM_FI_DEV_GPU_TEMP"), ("gpu", "0")]),
//!     vec![Point::new(0, 40.0), Point::new(15_000, 42.0)],
//! )]);
//! let engine = Engine::default();
//! let value = engine
//!     .instant_query(&source, "max(DCGM_FI_DEV_GPU_TEMP) by (gpu)", 20_000, &QueryOptions::default())
//!     .await
//!     .unwrap();
//! assert_eq!(
//!     value.to_json(),
//!     r#"{"resultType":"vector","result":[{"metric":{"gpu":"0"},"value":[20,"42"]}]}"#
//! );
//! # });
//! ```
//!
//! A query runs in three phases, which callers may also drive one by one
//! ([`Engine::prepare_instant`] / [`Engine::prepare_range`], [`PreparedQuery::fetch`],
//! [`FetchedQuery::evaluate`]): *prepare* parses the query (with the `promql-parser` crate) and
//! plans it, rejecting what is not supported and listing every selector with the window it
//! needs (offset, `@`, range, lookback and the query's start..end considered); *fetch* reads each
//! selector through the source (async, within the deadline and limits); *evaluate* computes the
//! result in memory (synchronous CPU work, which an async caller may move to a blocking thread).
//!
//! # Supported
//!
//! - Instant and range vector selectors with `=`, `!=`, `=~`, `!~` (regular expressions fully
//!   anchored, RE2 syntax via the `regex` crate, `.` matching newlines as in Prometheus 3),
//!   `__name__` matchers, `offset` (also negative) and `@` (a time, `start()`, `end()`).
//! - Arithmetic `+ - * / % ^` and `atan2`, comparisons `== != > < >= <=` with and without
//!   `bool`, between scalars, between a scalar and a vector, and between vectors: one-to-one
//!   matching (all labels but the name, `on(...)`, `ignoring(...)`), many-to-one and one-to-many
//!   (`group_left(...)`, `group_right(...)`); set operators `and`, `or`, `unless`; unary minus.
//! - Aggregations `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`, `topk`,
//!   `bottomk`, `quantile`, `count_values`, with `by (...)` and `without (...)`.
//! - Functions `rate`, `irate`, `increase`, `delta`, `idelta`, `avg_over_time`,
//!   `min_over_time`, `max_over_time`, `sum_over_time`, `count_over_time`, `last_over_time`,
//!   `quantile_over_time`, `stddev_over_time`, `stdvar_over_time`, `abs`, `ceil`, `floor`,
//!   `round` (with `to_nearest`), `clamp`, `clamp_min`, `clamp_max`, `timestamp`, `sort`,
//!   `sort_desc`, `label_replace`, `label_join`, `time`, `vector`, `scalar`.
//!
//! Anything else (subqueries, other functions such as `histogram_quantile` or `changes`,
//! `limitk`, the experimental `fill` modifiers) is a [`QueryError::Unsupported`] naming it.
//!
//! # Semantics
//!
//! As current Prometheus (3.x) documents and implements them; a differential test compares the
//! engine with a real Prometheus 2.42 on an hour of data made from the real DCGM export.
//! - An instant selector's value at `t` is each series' latest sample in `(t - lookback, t]`
//!   (lookback 5 minutes unless configured); a series with none is absent, so a series ends
//!   `lookback` after its last sample (there are no stale markers). Range selectors take
//!   `(t - range, t]`. Both windows are left-open as in Prometheus 3 (2.x closed them).
//! - A range query is evaluated at `start`, `start + step`, ... up to `end`, each step as an
//!   instant query, nothing aligned; the matrix is sorted by labels. Instant vectors keep the
//!   evaluation order (selectors in label order; `sort`, `sort_desc`, `topk`, `bottomk` sorted;
//!   aggregations in the order their groups first appear, as sets in Prometheus' terms).
//! - `rate`, `increase` and `delta` extrapolate as Prometheus: to a window edge when the first or
//!   last sample lies within 110% of the average spacing from it, otherwise by half the spacing;
//!   for counters (`rate`, `increase`) a drop is a reset (the value before it is added back) and
//!   the start is never extrapolated below zero, that limit applied after the 110% rule as in
//!   Prometheus 3 (2.x applied it before, which differs only for a counter that starts inside
//!   the window close to zero). `irate` takes a drop as a reset too.
//! - The metric name is dropped by arithmetic, comparisons with `bool`, unary minus and every
//!   function but `last_over_time`, `sort`, `sort_desc`, `label_replace` and `label_join`;
//!   filtering comparisons keep the series as they are. An operation that leaves two results
//!   with one label set fails as Prometheus does ("vector cannot contain metrics with the same
//!   labelset"), as do ambiguous vector matches.
//! - Sums, averages and variances are compensated (Kahan-Neumaier) as in Prometheus 3; floats
//!   follow Go's `math` edge cases where they differ from C's (`Pow`, `Max`, `Min`). Values are
//!   written as Go's `strconv.FormatFloat(v, 'f', -1, 64)`, with `NaN`, `+Inf`, `-Inf`.
//! - Regular expressions use the `regex` crate: RE2 syntax, but `\d`, `\w`, `\s` and `\b` are
//!   Unicode-aware where Go's are ASCII-only.
//!
//! # Limits and errors
//!
//! [`QueryLimits`]: points per series of a range query (`(end - start) / step` above
//! `max_points_per_series`, 11,000 by default, is Prometheus' "exceeded maximum resolution"
//! error), series selected per query (`max_series`) and samples loaded per query
//! (`max_samples`), all `bad_data` (400) saying what to change. [`EngineConfig::timeout`] bounds
//! each query, fetching included, and a [`CancelToken`] stops it; both are checked between
//! fetches and at every evaluation step. Every [`QueryError`] maps to Prometheus' `errorType`
//! and HTTP status ([`QueryError::error_type`], [`QueryError::http_status`]): `bad_data` 400,
//! `execution` 422, `timeout` 503, `canceled` 499, and for source failures `unavailable` 503 or
//! `internal` 500 ([`SourceError`]).

mod control;
mod engine;
mod error;
mod eval;
mod labels;
mod matcher;
mod plan;
mod source;
mod value;

pub use control::CancelToken;
pub use engine::{Engine, EngineConfig, FetchedQuery, PreparedQuery, QueryLimits, QueryOptions};
pub use error::{ErrorType, QueryError, SourceError};
pub use labels::{Labels, METRIC_NAME};
pub use matcher::{parse_series_selector, LabelMatcher, MatchOp, Matchers};
/// Parses a PromQL duration (`15s`, `1m30s`, `500ms`, `1d`), as the API's `step` and `timeout`
/// take them.
pub use promql_parser::util::parse_duration;
pub use source::{label_names, label_values, InMemorySource, Point, Series, SeriesSource};
pub use value::{
    format_sample_time, format_scalar_time, format_value, InstantSample, RangeSeries, Value,
};
