//! What the API does, without HTTP: reads from the telemetry store and the queue, each etcd call
//! bounded by the etcd timeout, shaped into the response DTOs. Work per request is bounded: the
//! GPU list is written page by page as the registry is read ([`GpuListing`]), and aggregations
//! are folded as chunks are decoded, after a check that their buckets stay within the points per
//! series.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::Client;
use promql_engine::Engine;
use telemetry_model::{GpuUuid, MetricName, TimestampMicros};
use telemetry_store::{Aggregator, GpuPages, GpuRecord, SampleQuery, SeriesPage, TelemetryStore};

use crate::config::Config;
use crate::dcgm_fields::dcgm_field;
use crate::dto::{
    GpuDetail, GpuSummary, LatestValues, MetricInfo, MetricList, PartitionInfo, QueueInfo,
};
use crate::error::ApiError;
use crate::fleet_latest::GpuLatest;
use crate::params::{GpuListRequest, TelemetryFormat, TelemetryRequest, MAX_SERIES_PAGE_POINTS};
use crate::queue_view::QueueView;
use crate::telemetry_body::{TelemetryAnswer, TelemetryRows};

/// The store and queue readers of one deployment (one key prefix).
#[derive(Clone)]
pub struct Backend {
    store: TelemetryStore,
    queue: QueueView,
    etcd_timeout: Duration,
    request_timeout: Duration,
    max_points_per_series: usize,
    engine: Engine,
}

impl Backend {
    /// Readers of the deployment under `config`'s prefix; every etcd call is cut off after the
    /// gateway's etcd read timeout.
    pub fn new(client: Client, config: &Config) -> Self {
        let prefix = &config.etcd.prefix;
        let etcd_timeout = config.etcd_read_timeout;
        let store = TelemetryStore::new(client.clone(), config.store.store_config(prefix));
        let queue_config = etcd_queue::QueueConfig {
            // A read that etcd cannot serve must fail within the timeout, not retry past it.
            retry_budget: etcd_timeout,
            ..config.queue.queue_config(prefix)
        };
        Backend {
            store,
            queue: QueueView::new(client, queue_config),
            etcd_timeout,
            request_timeout: config.http.request_timeout,
            max_points_per_series: config.max_points_per_series,
            engine: Engine::new(config.promql.clone()),
        }
    }

    pub fn store(&self) -> &TelemetryStore {
        &self.store
    }

    /// The PromQL engine of the Prometheus API.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs one etcd-backed call, answering 503 if etcd does not answer in time.
    pub(crate) async fn bounded<T, E: Into<ApiError>>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.etcd_timeout, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(ApiError::EtcdTimeout {
                operation,
                waited: self.etcd_timeout,
            }),
        }
    }

    async fn record(&self, id: &GpuUuid) -> Result<GpuRecord, ApiError> {
        self.bounded("read GPU", self.store.gpu(id))
            .await?
            .ok_or_else(|| ApiError::GpuNotFound(id.to_string()))
    }

    /// The GPUs with telemetry matching the filters, in UUID order, as a JSON body written page
    /// by page as the registry is read, `entry` for each GPU: memory stays one registry page
    /// whatever the fleet. The first page is read here, so that a failure to read it is an error
    /// answer; a failure later ends the body early (the client sees a broken response, never a
    /// short list).
    pub async fn list_gpus(
        &self,
        request: &GpuListRequest,
        entry: ListingEntry,
    ) -> Result<GpuListing, ApiError> {
        let mut listing = GpuListing {
            entry,
            // Once the answer has started it cannot become an error answer any more, so pages
            // after the first retry etcd's transient failures (each bounded by the client's
            // request timeout) until the request's own deadline.
            pages: self
                .store
                .gpu_pages(request.after.as_ref())
                .retrying_for(self.request_timeout),
            request: request.clone(),
            etcd_timeout: self.etcd_timeout,
            request_timeout: self.request_timeout,
            deadline: Instant::now() + self.request_timeout,
            buffered: Vec::new(),
            written: 0,
            last: None,
            state: ListingState::Opening,
            started: false,
        };
        listing.fill().await?;
        Ok(listing)
    }

    pub async fn gpu(&self, id: &GpuUuid) -> Result<GpuDetail, ApiError> {
        Ok(GpuDetail::from(&self.record(id).await?))
    }

    pub async fn latest(&self, id: &GpuUuid) -> Result<LatestValues, ApiError> {
        Ok(LatestValues::from(&self.record(id).await?))
    }

    /// One page of a GPU's samples (or of its aggregated buckets). In the series form `limit`
    /// counts points per metric: the page is the entry page of `limit` points per selected
    /// metric (at most [`MAX_SERIES_PAGE_POINTS`] in all), cut short before any metric's
    /// `limit + 1`-th point, so its cursor continues exactly where it stops; raw samples are
    /// read per metric for it ([`TelemetryStore::query_series`]).
    pub async fn telemetry(
        &self,
        id: &GpuUuid,
        request: &TelemetryRequest,
    ) -> Result<TelemetryAnswer, ApiError> {
        let record = self.record(id).await?;
        let series = match &request.query.metrics {
            Some(names) => names
                .iter()
                .filter(|m| record.latest.contains_key(*m))
                .count(),
            None => record.latest.len(),
        };
        let series_query;
        let query = match request.format {
            TelemetryFormat::Entries => &request.query,
            TelemetryFormat::Series => {
                series_query = SampleQuery {
                    limit: request
                        .query
                        .limit
                        .saturating_mul(series.max(1))
                        .min(MAX_SERIES_PAGE_POINTS),
                    ..request.query.clone()
                };
                &series_query
            }
        };
        let (samples, next_cursor) = match request.aggregation {
            None if request.format == TelemetryFormat::Series => {
                let page = self
                    .bounded(
                        "read telemetry",
                        self.store.query_series(id, query, request.query.limit),
                    )
                    .await?;
                return Ok(TelemetryAnswer {
                    gpu: GpuSummary::from(&record),
                    rows: TelemetryRows::Series(page),
                });
            }
            None => {
                let page = self
                    .bounded("read telemetry", self.store.query(id, query))
                    .await?;
                (page.samples, page.next_cursor)
            }
            Some((step, aggregation)) => {
                // Every stored sample of the GPU lies between its first and last sighting.
                let lo = query
                    .start
                    .unwrap_or(record.first_seen)
                    .max(record.first_seen);
                let hi = query.end.unwrap_or(record.last_seen).min(record.last_seen);
                let buckets = buckets_per_series(lo, hi, step);
                let refused = || too_many_points(lo, hi, step, buckets, self.max_points_per_series);
                if buckets > self.max_points_per_series {
                    return Err(refused());
                }
                let mut aggregator =
                    Aggregator::new(step, aggregation, buckets.saturating_mul(series.max(1)));
                if lo <= hi {
                    self.store
                        .for_each_sample(id, lo, hi, query.metrics.as_deref(), |sample| {
                            aggregator.add(&sample)
                        })
                        .await?;
                }
                if aggregator.overflowed() {
                    return Err(refused());
                }
                query.page(aggregator.finish(query.start))
            }
        };
        let rows = match request.format {
            TelemetryFormat::Entries => TelemetryRows::Entries {
                samples,
                next_cursor,
            },
            TelemetryFormat::Series => TelemetryRows::Series(SeriesPage::from_entries(
                samples,
                next_cursor,
                request.query.limit,
            )),
        };
        Ok(TelemetryAnswer {
            gpu: GpuSummary::from(&record),
            rows,
        })
    }

    /// Metric names seen on any GPU, with the DCGM description and unit where known (the
    /// registry is read page by page; only the counts per name are kept).
    pub async fn metrics(&self) -> Result<MetricList, ApiError> {
        let mut gpu_counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut pages = self.store.gpu_pages(None);
        while let Some(records) = self.bounded("list GPUs", pages.next_page()).await? {
            for record in &records {
                for metric in record.metrics() {
                    *gpu_counts.entry(metric.to_string()).or_default() += 1;
                }
            }
        }
        let metrics: Vec<MetricInfo> = gpu_counts
            .into_iter()
            .map(|(name, gpu_count)| {
                let field = dcgm_field(&name);
                MetricInfo {
                    description: field.map(|f| f.help.to_string()),
                    unit: field.and_then(|f| f.unit).map(str::to_string),
                    kind: field.map(|f| f.kind.as_str().to_string()),
                    name,
                    gpu_count,
                }
            })
            .collect();
        Ok(MetricList {
            count: metrics.len(),
            metrics,
        })
    }

    pub async fn queue_status(&self) -> Result<QueueInfo, ApiError> {
        let config = self.queue.config();
        let status = self
            .bounded("read queue status", self.queue.status())
            .await?;
        Ok(match status {
            None => QueueInfo {
                topic: config.topic.clone(),
                group: config.group.clone(),
                exists: false,
                depth: 0,
                dead_letters: 0,
                partitions: Vec::new(),
                members: Vec::new(),
            },
            Some(status) => QueueInfo {
                topic: status.topic,
                group: status.group,
                exists: true,
                depth: status.depth,
                dead_letters: status.dead_letters,
                partitions: status
                    .partitions
                    .into_iter()
                    .map(|p| PartitionInfo {
                        partition: p.partition,
                        owner: p.owner,
                        head: p.head,
                        committed_offset: p.committed,
                        lag: p.lag,
                    })
                    .collect(),
                members: status.members,
            },
        })
    }
}

/// Step-aligned buckets (one without a step) that the inclusive window `[lo, hi]` touches.
fn buckets_per_series(lo: TimestampMicros, hi: TimestampMicros, step: Option<i64>) -> usize {
    if lo > hi {
        return 0;
    }
    match step {
        None => 1,
        Some(step) => {
            let buckets = hi.0.div_euclid(step) as i128 - lo.0.div_euclid(step) as i128 + 1;
            usize::try_from(buckets).unwrap_or(usize::MAX)
        }
    }
}

/// The 400 for a step too fine for the window, saying what would fit.
fn too_many_points(
    lo: TimestampMicros,
    hi: TimestampMicros,
    step: Option<i64>,
    buckets: usize,
    max: usize,
) -> ApiError {
    let span = (hi.0 as i128 - lo.0 as i128 + 1).max(1);
    // With this step the window touches at most span / step + 2 buckets.
    let fitting = div_ceil(span, max.saturating_sub(2).max(1) as i128).max(1);
    ApiError::TooManyPoints(format!(
        "step={} over the {} of data in the window ({} to {}) makes {buckets} buckets per metric, more than the {max} points per series a query may have: use step={} or more, or a shorter window",
        step.map_or_else(|| "none".into(), format_step),
        format_step(span.min(i64::MAX as i128) as i64),
        lo.to_rfc3339(),
        hi.to_rfc3339(),
        format_step(fitting.min(i64::MAX as i128) as i64),
    ))
}

/// `a / b` rounded up, for positive `a` and `b`.
fn div_ceil(a: i128, b: i128) -> i128 {
    (a + b - 1) / b
}

/// `us` microseconds as a step the API accepts, rounded up to a whole unit.
fn format_step(us: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (86_400_000_000, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ];
    for (unit_us, unit) in UNITS {
        if us >= unit_us {
            return format!("{}{unit}", div_ceil(us as i128, unit_us as i128));
        }
    }
    format!("{}us", us.max(1))
}

/// Where a streamed GPU list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListingState {
    /// `{"gpus":[` not written yet.
    Opening,
    /// Writing GPUs.
    Listing,
    /// The limit is reached; looking for one more matching GPU to know whether to give a cursor.
    Full,
    /// Everything written.
    Done,
}

/// What a GPU listing writes for each GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingEntry {
    /// Its summary (`GET /api/v1/gpus`).
    Summary,
    /// Its newest values, of these metrics (`None`: every metric; `GET /api/v1/latest`).
    Latest(Option<Vec<MetricName>>),
}

impl ListingEntry {
    fn write(&self, record: &GpuRecord, out: &mut Vec<u8>) {
        match self {
            ListingEntry::Summary => serde_json::to_writer(out, &GpuSummary::from(record)),
            ListingEntry::Latest(metrics) => {
                serde_json::to_writer(out, &GpuLatest::new(record, metrics.as_deref()))
            }
        }
        .expect("an entry serializes");
    }
}

/// A GPU listing's body in the making: `{"gpus":[...],"count":n,"next_cursor":...}`, written
/// from the registry's pages as they are read. Each piece is one page's GPUs.
pub struct GpuListing {
    entry: ListingEntry,
    pages: GpuPages,
    request: GpuListRequest,
    etcd_timeout: Duration,
    request_timeout: Duration,
    /// The body ends with an error once this passes: the work of a request never outlives its
    /// timeout, even after the answer has started.
    deadline: Instant,
    buffered: Vec<GpuRecord>,
    written: usize,
    last: Option<GpuUuid>,
    state: ListingState,
    /// Whether a page has been read: the first is bounded by the etcd timeout.
    started: bool,
}

impl GpuListing {
    /// Reads registry pages until one has a GPU or the registry ends.
    async fn fill(&mut self) -> Result<(), ApiError> {
        while self.buffered.is_empty() {
            if Instant::now() >= self.deadline {
                return Err(ApiError::RequestTimeout(self.request_timeout));
            }
            let page = if self.started {
                tokio::time::timeout_at(self.deadline.into(), self.pages.next_page())
                    .await
                    .map_err(|_| ApiError::RequestTimeout(self.request_timeout))??
            } else {
                // Dropping the read here drops the whole listing, so it is safe to cut short.
                self.started = true;
                tokio::time::timeout(self.etcd_timeout, self.pages.next_page())
                    .await
                    .map_err(|_| ApiError::EtcdTimeout {
                        operation: "list GPUs",
                        waited: self.etcd_timeout,
                    })??
            };
            let Some(records) = page else {
                return Ok(());
            };
            self.buffered = records
                .into_iter()
                .filter(|r| self.request.matches(&r.info))
                .collect();
        }
        Ok(())
    }

    /// The next piece of the body; `None` once it is complete.
    pub async fn next_piece(&mut self) -> Result<Option<Bytes>, ApiError> {
        let mut out = Vec::new();
        loop {
            match self.state {
                ListingState::Done => return Ok(None),
                ListingState::Opening => {
                    out.extend_from_slice(b"{\"gpus\":[");
                    self.state = ListingState::Listing;
                }
                ListingState::Listing => {
                    if self.buffered.is_empty() {
                        self.fill().await?;
                    }
                    if self.buffered.is_empty() {
                        self.close(&mut out, false);
                        return Ok(Some(Bytes::from(out)));
                    }
                    let room = self
                        .request
                        .limit
                        .map_or(usize::MAX, |limit| limit - self.written);
                    let take = room.min(self.buffered.len());
                    for record in self.buffered.drain(..take) {
                        if self.written > 0 {
                            out.push(b',');
                        }
                        self.entry.write(&record, &mut out);
                        self.written += 1;
                        self.last = Some(record.info.uuid);
                    }
                    if Some(self.written) == self.request.limit {
                        self.state = ListingState::Full;
                    }
                    if !out.is_empty() && self.state == ListingState::Listing {
                        return Ok(Some(Bytes::from(out)));
                    }
                }
                ListingState::Full => {
                    if self.buffered.is_empty() {
                        self.fill().await?;
                    }
                    let more = !self.buffered.is_empty();
                    self.close(&mut out, more);
                    return Ok(Some(Bytes::from(out)));
                }
            }
        }
    }

    /// Writes the end of the body: the count and the cursor (when more GPUs follow).
    fn close(&mut self, out: &mut Vec<u8>, more: bool) {
        let cursor = match (&self.last, more) {
            (Some(last), true) => serde_json::to_string(last.as_str()).expect("a string"),
            _ => "null".to_string(),
        };
        out.extend_from_slice(
            format!("],\"count\":{},\"next_cursor\":{cursor}}}", self.written).as_bytes(),
        );
        self.state = ListingState::Done;
    }

    /// The body as a stream of pieces. A failure ends the body early, and is logged: the client
    /// only sees a broken response.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, ApiError>> + Send {
        futures::stream::try_unfold(self, |mut listing| async move {
            match listing.next_piece().await {
                Ok(piece) => Ok(piece.map(|piece| (piece, listing))),
                Err(e) => {
                    tracing::warn!(error = %e, written = listing.written, "the GPU list stopped part-way");
                    Err(e)
                }
            }
        })
    }
}

/// The API's view of its backend: connected, or still connecting (then every API call is 503).
#[derive(Clone, Default)]
pub struct ApiState {
    backend: Arc<OnceLock<Backend>>,
}

impl ApiState {
    /// A state that answers 503 until [`ApiState::connect`] is called.
    pub fn connecting() -> Self {
        ApiState::default()
    }

    pub fn connected(backend: Backend) -> Self {
        let state = ApiState::default();
        state.connect(backend);
        state
    }

    pub fn connect(&self, backend: Backend) {
        let _ = self.backend.set(backend);
    }

    pub fn backend(&self) -> Result<&Backend, ApiError> {
        self.backend.get().ok_or(ApiError::NotConnected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unconnected_state_answers_not_connected() {
        assert!(matches!(
            ApiState::connecting().backend(),
            Err(ApiError::NotConnected)
        ));
    }
}
