//! Reading samples back: one GPU, an inclusive time window, optionally some metrics, in time order
//! (ties by metric name), in pages with a resumable cursor. Only chunks overlapping the window are
//! fetched: sealed-chunk keys carry their time range, so a keys-only scan picks the overlapping
//! ones before any value is read, and a page reads them in its direction only until it is full.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp, TxnOpResponse};
use etcd_queue::kv::first_kv;
use etcd_queue::{RangeRead, MAX_RESPONSE_BYTES, MAX_TXN_OPS};
use telemetry_model::{GpuUuid, MetricName, TimestampMicros};

use crate::chunk::{Chunk, ChunkError};
use crate::error::StoreError;
use crate::keys::parse_sealed;
use crate::open_chunk;
use crate::series_page::{SeriesPage, SeriesRows};

use crate::TelemetryStore;

/// Sort direction of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// Where the next page starts: just after (or before, descending) this sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp: TimestampMicros,
    pub metric: MetricName,
}

impl Cursor {
    /// The opaque text handed to API clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.timestamp.0, self.metric.as_str())
    }

    pub fn decode(text: &str) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidCursor(text.chars().take(80).collect());
        let (ts, metric) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Cursor {
            timestamp: TimestampMicros(ts.parse().map_err(|_| invalid())?),
            metric: MetricName::parse(metric).map_err(|_| invalid())?,
        })
    }

    /// Whether the sample `(timestamp, metric)` comes after this cursor in `order` (belongs to
    /// the next page).
    fn precedes(&self, timestamp: i64, metric: &str, order: Order) -> bool {
        let cursor = (self.timestamp.0, self.metric.as_str());
        let sample = (timestamp, metric);
        match order {
            Order::Asc => sample > cursor,
            Order::Desc => sample < cursor,
        }
    }
}

/// A query over one GPU's samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleQuery {
    /// Inclusive lower bound (none: from the beginning).
    pub start: Option<TimestampMicros>,
    /// Inclusive upper bound (none: up to now and beyond).
    pub end: Option<TimestampMicros>,
    /// Only these metrics (none: all).
    pub metrics: Option<Vec<MetricName>>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub order: Order,
}

impl Default for SampleQuery {
    fn default() -> Self {
        SampleQuery {
            start: None,
            end: None,
            metrics: None,
            limit: 1000,
            cursor: None,
            order: Order::Asc,
        }
    }
}

impl SampleQuery {
    /// The inclusive time window a page of this query reads: the query's, narrowed to the
    /// cursor's side.
    fn window(&self) -> (i64, i64) {
        let mut start = self.start.map(|t| t.0).unwrap_or(0);
        let mut end = self.end.map(|t| t.0).unwrap_or(i64::MAX);
        if let Some(cursor) = &self.cursor {
            match self.order {
                Order::Asc => start = start.max(cursor.timestamp.0),
                Order::Desc => end = end.min(cursor.timestamp.0),
            }
        }
        (start, end)
    }

    /// Applies this query's order, cursor and limit to samples sorted ascending by (timestamp,
    /// metric): the page and the cursor of the next one. Raw samples and aggregated buckets page
    /// alike through it.
    pub fn page(&self, mut sorted: Vec<StoredSample>) -> (Vec<StoredSample>, Option<Cursor>) {
        if self.order == Order::Desc {
            sorted.reverse();
        }
        if let Some(cursor) = &self.cursor {
            sorted.retain(|s| cursor.precedes(s.timestamp.0, &s.metric, self.order));
        }
        if sorted.len() <= self.limit {
            return (sorted, None);
        }
        sorted.truncate(self.limit);
        let next = sorted.last().map(|s| Cursor {
            timestamp: s.timestamp,
            metric: MetricName::parse(&s.metric).expect("chunk decoding validates metric names"),
        });
        (sorted, next)
    }
}

/// One stored sample as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub timestamp: TimestampMicros,
    pub metric: Arc<str>,
    pub value: f64,
}

/// A page of samples and the cursor of the next page, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePage {
    pub samples: Vec<StoredSample>,
    pub next_cursor: Option<Cursor>,
    /// Chunks read to answer (the open chunk counts as one).
    pub chunks_read: usize,
}

/// A sealed chunk found by a keys-only scan: its key and the time range the key carries.
#[derive(Debug, Clone)]
struct SealedRef {
    key: String,
    start: i64,
    end: i64,
}

/// Sealed chunks fetched in the first round trip of a page; later rounds are sized from the
/// samples per chunk seen so far, up to [`max_fetch`].
const FIRST_FETCH: usize = 2;

/// What a read allows for one chunk's value: a chunk the collector seals holds at most
/// `chunk_max_samples` (1,200 by default), about 1.5 KiB on the real feed and under 16 KiB with
/// incompressible values. Chunks written whole from one large message can be larger; reads shrink
/// their rounds and pages when they meet one.
pub(crate) const CHUNK_VALUE_BYTES: usize = 16 * 1024;

/// Most gets in one transaction when the largest chunk seen so far is `largest` bytes: half the
/// operation budget, and as many chunks as one response holds at that size.
fn max_fetch(largest: usize) -> usize {
    (MAX_RESPONSE_BYTES / CHUNK_VALUE_BYTES.max(largest)).clamp(1, MAX_TXN_OPS / 2)
}

/// What a whole-window read visited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Chunks decoded (the open chunk counts as one).
    pub chunks: usize,
    /// Samples handed to the visitor.
    pub samples: usize,
}

/// The chunks that may hold samples of a window: the open chunk's bytes and the overlapping
/// sealed chunks, in key (start time) order, read at `revision`.
struct Scan {
    revision: i64,
    open: Option<Vec<u8>>,
    sealed: Vec<SealedRef>,
}

impl TelemetryStore {
    /// The chunks that may hold samples of `uuid` in `[start, end]`, from one consistent read: the
    /// open chunk's bytes, and the sealed chunks whose key range overlaps the window, in key
    /// (start time) order. No sealed value is read.
    async fn scan(&self, uuid: &GpuUuid, start: i64, end: i64) -> Result<Scan, StoreError> {
        let keys = self.keys();
        // Sealed chunks never span more than one retention bucket, so any chunk overlapping the
        // window starts no earlier than one bucket before it.
        let scan_from = start.saturating_sub(self.leases().bucket_us());
        let sealed_range = RangeRead::between(
            keys.sealed_from(uuid, scan_from),
            keys.sealed_through(uuid, end),
            0,
        )
        .keys_only();
        let txn = Txn::new().and_then([
            TxnOp::get(keys.open_chunk(uuid), None),
            sealed_range.txn_op(2),
        ]);
        let response = self.txn("scan chunks", txn).await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        let mut responses = response.op_responses();
        let sealed_first = responses.pop();
        let open = first_kv(responses.first()).map(|kv| kv.value().to_vec());
        let sealed_keys = match sealed_first {
            Some(TxnOpResponse::Get(first)) => {
                sealed_range
                    .rest(
                        self.client(),
                        "scan chunks",
                        first,
                        revision,
                        Duration::ZERO,
                    )
                    .await?
            }
            _ => Vec::new(),
        };
        let sealed = sealed_keys
            .iter()
            .filter_map(|kv| {
                let (chunk_start, chunk_end) = parse_sealed(kv.key())?;
                (chunk_end >= start && chunk_start <= end).then(|| SealedRef {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    start: chunk_start,
                    end: chunk_end,
                })
            })
            .collect();
        Ok(Scan {
            revision,
            open,
            sealed,
        })
    }

    /// The values of `chunks` (one transaction of gets), in their order; `None` for a chunk whose
    /// retention lease expired since the scan.
    async fn fetch(&self, chunks: &[SealedRef]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let ops: Vec<TxnOp> = chunks
            .iter()
            .map(|chunk| TxnOp::get(chunk.key.clone(), None))
            .collect();
        let response = self.txn("read chunks", Txn::new().and_then(ops)).await?;
        Ok(response
            .op_responses()
            .iter()
            .map(|op| first_kv(Some(op)).map(|kv| kv.value().to_vec()))
            .collect())
    }

    /// Hands every sample of `uuid` in the inclusive window `[start, end]` (optionally only
    /// `metrics`) to `visit`, chunk by chunk: samples of one chunk in time order, chunks in no
    /// particular order. The sealed chunks are read in pages (at the revision of the scan that
    /// found them, so no sample is seen twice) and decoded one at a time, yielding to the runtime
    /// after each: memory is one page of chunks whatever the window, and dropping the future (a
    /// request's timeout) stops the work within one chunk's decoding.
    pub async fn for_each_sample(
        &self,
        uuid: &GpuUuid,
        start: TimestampMicros,
        end: TimestampMicros,
        metrics: Option<&[MetricName]>,
        mut visit: impl FnMut(StoredSample),
    ) -> Result<WindowStats, StoreError> {
        let (start, end) = (start.0, end.0);
        let mut stats = WindowStats::default();
        if start > end {
            return Ok(stats);
        }
        let scan = self.scan(uuid, start, end).await?;
        let mut selection = Selection::new(start, end, metrics);
        if let Some(bytes) = &scan.open {
            stats.samples +=
                selection.decode_each(self.keys().open_chunk(uuid), bytes, &mut visit)?;
            stats.chunks += 1;
            tokio::task::yield_now().await;
        }
        let Some(first) = scan.sealed.first() else {
            return Ok(stats);
        };
        // From the first overlapping chunk to the window's end; the few chunks in that range
        // that end before the window are skipped.
        let range = RangeRead::between(
            first.key.clone(),
            self.keys().sealed_through(uuid, end),
            CHUNK_VALUE_BYTES,
        );
        let mut pages = self.pages("read chunks", range).at_revision(scan.revision);
        while let Some(page) = pages.next_page().await? {
            for kv in page {
                let overlaps = parse_sealed(kv.key()).is_some_and(|(chunk_start, chunk_end)| {
                    chunk_end >= start && chunk_start <= end
                });
                if !overlaps {
                    continue;
                }
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                stats.samples += selection.decode_each(key, kv.value(), &mut visit)?;
                stats.chunks += 1;
                tokio::task::yield_now().await;
            }
        }
        Ok(stats)
    }

    /// One page of a query. Sealed chunks are read in the page's direction, in rounds sized from
    /// the samples per chunk seen so far, until `limit` samples are known to come before
    /// everything still unread: a page costs about the chunks it returns, whatever the window.
    pub async fn query(
        &self,
        uuid: &GpuUuid,
        query: &SampleQuery,
    ) -> Result<SamplePage, StoreError> {
        let mut rows = EntryRows::default();
        let read = self.read_page(uuid, query, &mut rows).await?;
        // Dropping samples keeps the order of the rest, so the runs can be ordered first.
        let mut samples = sort_by_time(rows.samples, &rows.runs);
        samples.retain(|s| settled(query.order, read.unread_bound, s.timestamp.0));
        let (samples, next_cursor) = query.page(samples);
        Ok(SamplePage {
            samples,
            next_cursor,
            chunks_read: read.chunks_read,
        })
    }

    /// One page of a query per metric: the page [`TelemetryStore::query`] returns, cut short
    /// before any metric's `per_series + 1`-th sample (the cursor then after the last one kept),
    /// grouped per metric ([`SeriesPage::from_entries`]). Made from each chunk's columns: no
    /// sample is put in (time, metric) order, and a metric's chunks are only merged sample by
    /// sample where they overlap in time.
    pub async fn query_series(
        &self,
        uuid: &GpuUuid,
        query: &SampleQuery,
        per_series: usize,
    ) -> Result<SeriesPage, StoreError> {
        if per_series == 0 {
            return Err(StoreError::InvalidQuery(
                "points per series must be at least 1".into(),
            ));
        }
        let mut rows = SeriesRows::default();
        let read = self.read_page(uuid, query, &mut rows).await?;
        Ok(rows.into_page(query, read.unread_bound, per_series))
    }

    /// Reads the chunks a page of `query` needs into `rows`: in the page's direction, in rounds,
    /// until more than `limit` samples after the cursor are known to come before everything
    /// still unread (or nothing is left).
    async fn read_page(
        &self,
        uuid: &GpuUuid,
        query: &SampleQuery,
        rows: &mut impl PageRows,
    ) -> Result<PageRead, StoreError> {
        if query.limit == 0 {
            return Err(StoreError::InvalidQuery("limit must be at least 1".into()));
        }
        let (start, end) = query.window();
        if start > end {
            return Ok(PageRead {
                unread_bound: None,
                chunks_read: 0,
            });
        }
        let order = query.order;
        let after_cursor = |timestamp: i64, metric: &str| {
            query
                .cursor
                .as_ref()
                .is_none_or(|cursor| cursor.precedes(timestamp, metric, order))
        };
        let Scan {
            open, mut sealed, ..
        } = self.scan(uuid, start, end).await?;
        // Ascending, no unread chunk holds a sample before the next one's start; descending, none
        // holds one after the next one's end.
        if order == Order::Desc {
            sealed.sort_by_key(|chunk| std::cmp::Reverse(chunk.end));
        }
        let bound = |chunk: &SealedRef| match order {
            Order::Asc => chunk.start,
            Order::Desc => chunk.end,
        };
        let mut selection = Selection::new(start, end, query.metrics.as_deref());
        let mut chunks_read = 0;
        if let Some(bytes) = open {
            rows.add(&mut selection, self.keys().open_chunk(uuid), &bytes)?;
            chunks_read += 1;
        }
        let mut next = 0;
        let mut round = FIRST_FETCH;
        let mut largest = 0;
        // The most samples a chunk lying wholly inside the window gave: how full the chunks
        // ahead probably are (chunks cut by the window's ends, or sparse ones written over HTTP,
        // would underestimate it).
        let mut per_chunk = 0;
        loop {
            let unread_bound = sealed.get(next).map(bound);
            if unread_bound.is_none() {
                break;
            }
            let ready = rows.count(|timestamp, metric| {
                settled(order, unread_bound, timestamp) && after_cursor(timestamp, metric)
            });
            if ready > query.limit {
                break;
            }
            if next > 0 {
                // As many chunks as the missing samples need at that fill, plus one; without an
                // estimate yet, twice the last round.
                round = match per_chunk {
                    0 => round * 2,
                    full => (query.limit.saturating_add(1) - ready).div_ceil(full) + 1,
                };
            }
            let batch = &sealed[next..(next + round.min(max_fetch(largest))).min(sealed.len())];
            for (bytes, chunk) in self.fetch(batch).await?.into_iter().zip(batch) {
                let Some(bytes) = bytes else { continue };
                largest = largest.max(bytes.len());
                let added = rows.add(&mut selection, chunk.key.clone(), &bytes)?;
                if chunk.start >= start && chunk.end <= end {
                    per_chunk = per_chunk.max(added);
                }
                chunks_read += 1;
            }
            next += batch.len();
        }
        Ok(PageRead {
            unread_bound: sealed.get(next).map(bound),
            chunks_read,
        })
    }
}

/// How a page read ended: the bound of the first chunk left unread (in the page's direction,
/// samples beyond it may be missing), and the chunks read (the open chunk counts as one).
struct PageRead {
    unread_bound: Option<i64>,
    chunks_read: usize,
}

/// Whether a sample at `timestamp` is known to come before everything in the chunks left
/// unread, the first of which has `unread_bound` (none: everything is read).
fn settled(order: Order, unread_bound: Option<i64>, timestamp: i64) -> bool {
    match (order, unread_bound) {
        (_, None) => true,
        (Order::Asc, Some(bound)) => timestamp < bound,
        (Order::Desc, Some(bound)) => timestamp > bound,
    }
}

/// What a page read keeps of the chunks it decodes.
trait PageRows {
    /// Decodes one chunk and keeps its selected samples; returns how many.
    fn add(
        &mut self,
        selection: &mut Selection<'_>,
        key: String,
        bytes: &[u8],
    ) -> Result<usize, StoreError>;

    /// Samples kept so far that `keep` accepts (by timestamp and metric).
    fn count(&self, keep: impl Fn(i64, &str) -> bool) -> usize;
}

/// The samples of an entry page as read, chunk after chunk.
#[derive(Debug, Default)]
struct EntryRows {
    samples: Vec<StoredSample>,
    /// Where each chunk's samples begin in `samples`: every chunk's are in order already.
    runs: Vec<usize>,
}

impl PageRows for EntryRows {
    fn add(
        &mut self,
        selection: &mut Selection<'_>,
        key: String,
        bytes: &[u8],
    ) -> Result<usize, StoreError> {
        self.runs.push(self.samples.len());
        let samples = &mut self.samples;
        selection.decode_each(key, bytes, &mut |sample| samples.push(sample))
    }

    fn count(&self, keep: impl Fn(i64, &str) -> bool) -> usize {
        self.samples
            .iter()
            .filter(|s| keep(s.timestamp.0, &s.metric))
            .count()
    }
}

impl PageRows for SeriesRows {
    fn add(
        &mut self,
        selection: &mut Selection<'_>,
        key: String,
        bytes: &[u8],
    ) -> Result<usize, StoreError> {
        let chunk = selection.decode_chunk(key, bytes)?;
        let columns: Vec<_> = chunk
            .into_series_in(selection.start, selection.end, selection.names.as_deref())
            .collect();
        let mut added = 0;
        for (name, timestamps, values) in columns {
            added += timestamps.len();
            let name = selection.intern(&name);
            self.push_run(name, timestamps, values);
        }
        Ok(added)
    }

    fn count(&self, keep: impl Fn(i64, &str) -> bool) -> usize {
        self.count_kept(keep)
    }
}

/// What a read keeps of each chunk: samples in the inclusive window `[start, end]`, of `names`
/// when given.
struct Selection<'a> {
    start: i64,
    end: i64,
    names: Option<Vec<&'a str>>,
    /// One name per metric met so far: the samples of a read share it whichever chunk they come
    /// from, so comparing two samples' metrics mostly stops at the pointer.
    interned: Vec<Arc<str>>,
}

impl<'a> Selection<'a> {
    fn new(start: i64, end: i64, metrics: Option<&'a [MetricName]>) -> Self {
        Selection {
            start,
            end,
            names: metrics.map(|m| m.iter().map(MetricName::as_str).collect()),
            interned: Vec::new(),
        }
    }

    /// Decodes one chunk and hands each selected sample to `visit`, in (timestamp, metric)
    /// order; returns how many.
    fn decode_each(
        &mut self,
        key: String,
        bytes: &[u8],
        visit: &mut impl FnMut(StoredSample),
    ) -> Result<usize, StoreError> {
        let chunk = self.decode_chunk(key, bytes)?;
        // The read's own name for each of the chunk's series, in the chunk's series order.
        let names: Vec<Arc<str>> = chunk.metrics().map(|name| self.intern(name)).collect();
        let mut count = 0;
        chunk.visit_in(
            self.start,
            self.end,
            self.names.as_deref(),
            |series, timestamp, value| {
                visit(StoredSample {
                    timestamp: TimestampMicros(timestamp),
                    metric: Arc::clone(&names[series]),
                    value,
                });
                count += 1;
            },
        );
        Ok(count)
    }

    /// Decodes one chunk, checking that its series names are metric names.
    fn decode_chunk(&self, key: String, bytes: &[u8]) -> Result<Chunk, StoreError> {
        let chunk = open_chunk::decode(bytes).map(|(chunk, _)| chunk);
        let chunk = chunk.map_err(|source| StoreError::CorruptChunk {
            key: key.clone(),
            source,
        })?;
        // Samples leave the store with names that are metric names (cursors are built from
        // them); the codec itself takes any name.
        if chunk.metrics().any(|name| MetricName::parse(name).is_err()) {
            return Err(StoreError::CorruptChunk {
                key,
                source: ChunkError::Corrupt("series name is not a metric name"),
            });
        }
        Ok(chunk)
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.interned.iter().find(|known| &***known == name) {
            Some(known) => Arc::clone(known),
            None => {
                let name: Arc<str> = Arc::from(name);
                self.interned.push(Arc::clone(&name));
                name
            }
        }
    }
}

/// Orders two samples by (timestamp, metric name).
fn by_time(a: &StoredSample, b: &StoredSample) -> std::cmp::Ordering {
    a.timestamp.cmp(&b.timestamp).then_with(|| {
        if Arc::ptr_eq(&a.metric, &b.metric) {
            std::cmp::Ordering::Equal
        } else {
            a.metric.cmp(&b.metric)
        }
    })
}

/// Sorts samples by (timestamp, metric name), stably, given where the runs start that are each
/// sorted already (one per chunk). Chunks rarely overlap in time, so putting whole runs in order
/// of their first sample usually sorts everything; only when runs interleave (or share a sample
/// key, whose order a stable sort defines) is every sample sorted.
fn sort_by_time(mut samples: Vec<StoredSample>, runs: &[usize]) -> Vec<StoredSample> {
    let mut bounds: Vec<(usize, usize)> = runs
        .iter()
        .zip(runs.iter().skip(1).chain([&samples.len()]))
        .map(|(&from, &to)| (from, to))
        .filter(|(from, to)| from < to)
        .collect();
    bounds.sort_by(|a, b| by_time(&samples[a.0], &samples[b.0]));
    let disjoint = bounds.windows(2).all(|pair| {
        by_time(&samples[pair[0].1 - 1], &samples[pair[1].0]) == std::cmp::Ordering::Less
    });
    if !disjoint {
        samples.sort_by(by_time);
        return samples;
    }
    if bounds.windows(2).all(|pair| pair[0].1 == pair[1].0) {
        return samples;
    }
    let mut pieces: Vec<Option<Vec<StoredSample>>> = Vec::with_capacity(bounds.len());
    let mut by_start: Vec<usize> = (0..bounds.len()).collect();
    by_start.sort_by_key(|&i| std::cmp::Reverse(bounds[i].0));
    pieces.resize_with(bounds.len(), || None);
    for i in by_start {
        pieces[i] = Some(samples.split_off(bounds[i].0));
    }
    let mut sorted = Vec::with_capacity(pieces.iter().flatten().map(Vec::len).sum());
    for piece in pieces.into_iter().flatten() {
        sorted.extend(piece);
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts: i64, metric: &str) -> StoredSample {
        StoredSample {
            timestamp: TimestampMicros(ts),
            metric: Arc::from(metric),
            value: ts as f64,
        }
    }

    fn keys(samples: &[StoredSample]) -> Vec<(i64, String)> {
        samples
            .iter()
            .map(|s| (s.timestamp.0, s.metric.to_string()))
            .collect()
    }

    #[test]
    fn paging_visits_each_sample_once_in_both_orders() {
        let all: Vec<StoredSample> = (0..5)
            .flat_map(|t| [sample(t, "A"), sample(t, "B")])
            .collect();
        for order in [Order::Asc, Order::Desc] {
            let mut query = SampleQuery {
                limit: 3,
                order,
                ..SampleQuery::default()
            };
            let mut seen = Vec::new();
            let mut pages = 0;
            loop {
                let (page, next) = query.page(all.clone());
                pages += 1;
                seen.extend(keys(&page));
                match next {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => break,
                }
            }
            let mut expected = keys(&all);
            if order == Order::Desc {
                expected.reverse();
            }
            assert_eq!(seen, expected, "{order:?}");
            assert_eq!(pages, 4, "10 samples in pages of 3");
        }
    }

    #[test]
    fn a_cursor_past_the_end_gives_an_empty_last_page() {
        let query = SampleQuery {
            cursor: Some(Cursor {
                timestamp: TimestampMicros(9),
                metric: MetricName::parse("Z").unwrap(),
            }),
            ..SampleQuery::default()
        };
        let (page, next) = query.page(vec![sample(1, "A")]);
        assert!(page.is_empty());
        assert_eq!(next, None);
    }

    /// (timestamp, metric, value bits): what tells two orders of the same samples apart.
    fn exact(samples: &[StoredSample]) -> Vec<(i64, String, u64)> {
        samples
            .iter()
            .map(|s| (s.timestamp.0, s.metric.to_string(), s.value.to_bits()))
            .collect()
    }

    fn stable_sorted(mut samples: Vec<StoredSample>) -> Vec<StoredSample> {
        samples.sort_by(|a, b| (a.timestamp, &*a.metric).cmp(&(b.timestamp, &*b.metric)));
        samples
    }

    #[test]
    fn runs_of_chunks_are_put_in_order_whole() {
        // The open chunk first (newest), then two sealed chunks, one of them empty.
        let newest = [sample(5, "A"), sample(5, "B"), sample(6, "A")];
        let older = [sample(1, "B"), sample(2, "A")];
        let middle = [sample(3, "A"), sample(3, "B")];
        let all: Vec<StoredSample> = newest
            .iter()
            .chain(&older)
            .chain(&middle)
            .cloned()
            .collect();
        let sorted = sort_by_time(all.clone(), &[0, 3, 5, 5]);
        assert_eq!(
            keys(&sorted),
            [
                (1, "B"),
                (2, "A"),
                (3, "A"),
                (3, "B"),
                (5, "A"),
                (5, "B"),
                (6, "A")
            ]
            .map(|(t, m)| (t, m.to_string()))
        );
        assert_eq!(exact(&sorted), exact(&stable_sorted(all)));
    }

    proptest::proptest! {
        #[test]
        fn sorting_by_runs_is_a_stable_sort(
            runs in proptest::collection::vec(
                proptest::collection::vec((0i64..12, 0usize..3, proptest::num::u64::ANY), 0..8),
                0..6,
            ),
        ) {
            let names = ["A", "B", "C"];
            let mut all = Vec::new();
            let mut starts = Vec::new();
            for run in runs {
                starts.push(all.len());
                let mut run: Vec<StoredSample> = run
                    .into_iter()
                    .map(|(ts, metric, bits)| StoredSample {
                        timestamp: TimestampMicros(ts),
                        // A name of its own per sample: equal names need not share a pointer.
                        metric: Arc::from(names[metric]),
                        value: f64::from_bits(bits),
                    })
                    .collect();
                run = stable_sorted(run);
                all.extend(run);
            }
            let expected = exact(&stable_sorted(all.clone()));
            proptest::prop_assert_eq!(exact(&sort_by_time(all, &starts)), expected);
        }
    }

    /// A chunk of `(timestamp, metric, value)` pushes, encoded as the store keeps it.
    fn encoded_chunk(samples: &[(i64, usize, f64)]) -> Vec<u8> {
        let mut chunk = Chunk::new();
        for &(ts, metric, value) in samples {
            chunk.push(METRICS[metric], ts, value);
        }
        chunk.encode()
    }

    const METRICS: [&str; 4] = ["A", "AB", "B", "C"];

    /// Both ways to a series page over the same chunks, read in the same order: the entry page
    /// (as [`TelemetryStore::query`] makes it) cut per series, and [`SeriesRows`].
    fn both_series_pages(
        chunks: &[Vec<u8>],
        query: &SampleQuery,
        unread_bound: Option<i64>,
        per_series: usize,
    ) -> (SeriesPage, SeriesPage) {
        let (start, end) = query.window();
        let mut selection = Selection::new(start, end, query.metrics.as_deref());
        let mut entries = EntryRows::default();
        let mut series = SeriesRows::default();
        for (at, bytes) in chunks.iter().enumerate() {
            let added = PageRows::add(&mut entries, &mut selection, format!("c{at}"), bytes)
                .expect("decodes");
            let also = PageRows::add(&mut series, &mut selection, format!("c{at}"), bytes)
                .expect("decodes");
            assert_eq!(added, also);
        }
        let keep = |ts: i64, metric: &str| {
            settled(query.order, unread_bound, ts)
                && query
                    .cursor
                    .as_ref()
                    .is_none_or(|c| c.precedes(ts, metric, query.order))
        };
        assert_eq!(
            PageRows::count(&entries, keep),
            PageRows::count(&series, keep)
        );
        let mut samples = sort_by_time(entries.samples, &entries.runs);
        samples.retain(|s| settled(query.order, unread_bound, s.timestamp.0));
        let (samples, next_cursor) = query.page(samples);
        let old = SeriesPage::from_entries(samples, next_cursor, per_series);
        (old, series.into_page(query, unread_bound, per_series))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Chunks that follow each other, overlap or repeat samples, any window, metrics,
        /// cursor, order, page limit and points per series.
        #[test]
        fn series_pages_from_columns_are_entry_pages_cut_per_series(
            chunks in proptest::collection::vec(
                (0i64..40, proptest::collection::vec((0i64..12, 0usize..4), 1..30)),
                0..6,
            ),
            start in proptest::option::of(0i64..50),
            end in proptest::option::of(0i64..60),
            metrics in proptest::option::of(proptest::collection::vec(0usize..5, 0..3)),
            cursor in proptest::option::of((0i64..55, 0usize..4)),
            desc in proptest::bool::ANY,
            limit in 1usize..40,
            per_series in 1usize..15,
            unread_bound in proptest::option::of(0i64..55),
        ) {
            // Every value differs, so the order of repeated (timestamp, metric) pairs shows.
            let mut next_value = 0.0;
            let chunks: Vec<Vec<u8>> = chunks
                .iter()
                .map(|(base, samples)| {
                    let samples: Vec<(i64, usize, f64)> = samples
                        .iter()
                        .map(|&(offset, metric)| {
                            next_value += 1.0;
                            (base + offset, metric, next_value)
                        })
                        .collect();
                    encoded_chunk(&samples)
                })
                .collect();
            let metric_names = ["A", "AB", "B", "C", "D"];
            let query = SampleQuery {
                start: start.map(TimestampMicros),
                end: end.map(TimestampMicros),
                metrics: metrics.map(|wanted| {
                    wanted
                        .iter()
                        .map(|&m| MetricName::parse(metric_names[m]).unwrap())
                        .collect()
                }),
                limit,
                cursor: cursor.map(|(ts, metric)| Cursor {
                    timestamp: TimestampMicros(ts),
                    metric: MetricName::parse(METRICS[metric]).unwrap(),
                }),
                order: if desc { Order::Desc } else { Order::Asc },
            };
            let (old, new) = both_series_pages(&chunks, &query, unread_bound, per_series);
            proptest::prop_assert_eq!(new, old);
        }
    }

    #[test]
    fn a_page_limit_below_the_series_limits_ends_a_series_page_first() {
        let chunks = [
            encoded_chunk(&[(1, 0, 1.0), (1, 2, 2.0), (2, 0, 3.0), (2, 2, 4.0)]),
            encoded_chunk(&[(3, 0, 5.0), (3, 2, 6.0)]),
        ];
        let query = SampleQuery {
            limit: 3,
            ..SampleQuery::default()
        };
        let (old, new) = both_series_pages(&chunks, &query, None, 10);
        assert_eq!(new, old);
        assert_eq!(new.count, 3);
        let cursor = new.next_cursor.expect("more follow");
        assert_eq!((cursor.timestamp.0, cursor.metric.as_str()), (2, "A"));
        assert_eq!(new.series[0].timestamps, [1, 2]);
        assert_eq!(new.series[1].values, [2.0]);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            timestamp: TimestampMicros(1_752_871_354_000_123),
            metric: MetricName::parse("DCGM_FI_DEV_GPU_UTIL").unwrap(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "abc", "12", "x.DCGM", "12.", "12.bad/metric", "12.a b"] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }
}
