//! Reading samples back: one GPU, an inclusive time window, optionally some metrics, in time order
//! (ties by metric name), in pages with a resumable cursor. Only chunks overlapping the window are
//! fetched: sealed-chunk keys carry their time range, so a keys-only scan picks the overlapping
//! ones before any value is read.

use std::sync::Arc;

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use telemetry_model::{GpuUuid, MetricName, TimestampMicros};

use crate::chunk::Chunk;
use crate::error::StoreError;
use crate::keys::parse_sealed;
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

    fn key(&self) -> (i64, &str) {
        (self.timestamp.0, self.metric.as_str())
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
}

impl TelemetryStore {
    /// Samples of `uuid` in the inclusive window `[start, end]`, optionally only `metrics`,
    /// ordered by (timestamp, metric name).
    pub async fn read_window(
        &self,
        uuid: &GpuUuid,
        start: i64,
        end: i64,
        metrics: Option<&[MetricName]>,
    ) -> Result<Vec<StoredSample>, StoreError> {
        if start > end {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let max_span = self.leases().bucket_us();
        // Sealed chunks never span more than one retention bucket, so any chunk overlapping the
        // window starts no earlier than one bucket before it.
        let scan_from = start.saturating_sub(max_span);
        let txn = Txn::new().and_then([
            TxnOp::get(keys.open_chunk(uuid), None),
            TxnOp::get(
                keys.sealed_from(uuid, scan_from),
                Some(
                    GetOptions::new()
                        .with_range(keys.sealed_through(uuid, end))
                        .with_keys_only(),
                ),
            ),
        ]);
        let mut client = self.client().clone();
        let response = client.txn(txn).await.map_err(|source| StoreError::Etcd {
            operation: "scan chunks",
            source,
        })?;
        let responses = response.op_responses();
        let mut chunks: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(TxnOpResponse::Get(get)) = responses.first() {
            if let Some(kv) = get.kvs().first() {
                chunks.push((keys.open_chunk(uuid), kv.value().to_vec()));
            }
        }
        let overlapping: Vec<String> = match responses.get(1) {
            Some(TxnOpResponse::Get(get)) => get
                .kvs()
                .iter()
                .filter(|kv| parse_sealed(kv.key()).is_some_and(|(s, e)| e >= start && s <= end))
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect(),
            _ => Vec::new(),
        };
        if let (Some(first), Some(_)) = (overlapping.first(), overlapping.last()) {
            let got = client
                .get(
                    first.clone(),
                    Some(GetOptions::new().with_range(keys.sealed_through(uuid, end))),
                )
                .await
                .map_err(|source| StoreError::Etcd {
                    operation: "read chunks",
                    source,
                })?;
            for kv in got.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if overlapping.binary_search(&key).is_ok() {
                    chunks.push((key, kv.value().to_vec()));
                }
            }
        }
        let names: Option<Vec<&str>> = metrics.map(|m| m.iter().map(MetricName::as_str).collect());
        let mut samples = Vec::new();
        for (key, bytes) in chunks {
            let chunk =
                Chunk::decode(&bytes).map_err(|source| StoreError::CorruptChunk { key, source })?;
            samples.extend(
                chunk
                    .samples_in(start, end, names.as_deref())
                    .into_iter()
                    .map(|s| StoredSample {
                        timestamp: TimestampMicros(s.timestamp_us),
                        metric: s.metric,
                        value: s.value,
                    }),
            );
        }
        samples.sort_by(|a, b| {
            a.timestamp
                .cmp(&b.timestamp)
                .then_with(|| a.metric.cmp(&b.metric))
        });
        Ok(samples)
    }

    /// One page of a query.
    pub async fn query(
        &self,
        uuid: &GpuUuid,
        query: &SampleQuery,
    ) -> Result<SamplePage, StoreError> {
        if query.limit == 0 {
            return Err(StoreError::InvalidQuery("limit must be at least 1".into()));
        }
        let mut start = query.start.map(|t| t.0).unwrap_or(0);
        let mut end = query.end.map(|t| t.0).unwrap_or(i64::MAX);
        if let Some(cursor) = &query.cursor {
            match query.order {
                Order::Asc => start = start.max(cursor.timestamp.0),
                Order::Desc => end = end.min(cursor.timestamp.0),
            }
        }
        let mut samples = self
            .read_window(uuid, start, end, query.metrics.as_deref())
            .await?;
        if query.order == Order::Desc {
            samples.reverse();
        }
        if let Some(cursor) = &query.cursor {
            let after = cursor.key();
            samples.retain(|s| {
                let key = (s.timestamp.0, &*s.metric);
                match query.order {
                    Order::Asc => key > after,
                    Order::Desc => key < after,
                }
            });
        }
        let next_cursor = if samples.len() > query.limit {
            samples.truncate(query.limit);
            samples.last().map(|s| Cursor {
                timestamp: s.timestamp,
                metric: MetricName::parse(&s.metric).expect("stored metric names are valid"),
            })
        } else {
            None
        };
        Ok(SamplePage {
            samples,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
