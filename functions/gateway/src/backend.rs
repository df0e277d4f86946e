//! What the API does, without HTTP: reads from the telemetry store and the queue, each etcd call
//! bounded by the etcd timeout, shaped into the response DTOs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::Client;
use promql_engine::Engine;
use telemetry_model::{GpuUuid, TimestampMicros};
use telemetry_store::{aggregate, GpuRecord, TelemetryStore};

use crate::config::Config;
use crate::dcgm_fields::dcgm_field;
use crate::dto::{
    GpuDetail, GpuList, GpuSummary, LatestValues, MetricInfo, MetricList, PartitionInfo, QueueInfo,
    TelemetryEntry, TelemetryPage,
};
use crate::error::ApiError;
use crate::params::{ListGpusParams, TelemetryRequest};
use crate::queue_view::QueueView;

/// The store and queue readers of one deployment (one key prefix).
#[derive(Clone)]
pub struct Backend {
    store: TelemetryStore,
    queue: QueueView,
    etcd_timeout: Duration,
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

    /// Every GPU with telemetry matching the filters, sorted by hostname, GPU index, UUID.
    pub async fn list_gpus(&self, filter: &ListGpusParams) -> Result<GpuList, ApiError> {
        let records = self.bounded("list GPUs", self.store.list_gpus()).await?;
        let mut gpus: Vec<GpuSummary> = records
            .iter()
            .filter(|r| {
                filter
                    .hostname
                    .as_ref()
                    .is_none_or(|h| r.info.hostname.as_ref() == Some(h))
                    && filter
                        .model_name
                        .as_ref()
                        .is_none_or(|m| r.info.model_name.as_ref() == Some(m))
            })
            .map(GpuSummary::from)
            .collect();
        // GPUs without an index sort after the indexed ones of their host.
        gpus.sort_by(|a, b| {
            (&a.hostname, a.gpu_id.is_none(), a.gpu_id, &a.uuid).cmp(&(
                &b.hostname,
                b.gpu_id.is_none(),
                b.gpu_id,
                &b.uuid,
            ))
        });
        Ok(GpuList {
            count: gpus.len(),
            gpus,
        })
    }

    pub async fn gpu(&self, id: &GpuUuid) -> Result<GpuDetail, ApiError> {
        Ok(GpuDetail::from(&self.record(id).await?))
    }

    pub async fn latest(&self, id: &GpuUuid) -> Result<LatestValues, ApiError> {
        Ok(LatestValues::from(&self.record(id).await?))
    }

    /// One page of a GPU's samples (or of its downsampled buckets).
    pub async fn telemetry(
        &self,
        id: &GpuUuid,
        request: &TelemetryRequest,
    ) -> Result<TelemetryPage, ApiError> {
        let record = self.record(id).await?;
        let query = &request.query;
        let (samples, next_cursor) = match request.aggregation {
            None => {
                let page = self
                    .bounded("read telemetry", self.store.query(id, query))
                    .await?;
                (page.samples, page.next_cursor)
            }
            Some((step_us, aggregation)) => {
                let start = query.start.unwrap_or(TimestampMicros(i64::MIN));
                let end = query.end.unwrap_or(TimestampMicros(i64::MAX));
                let samples = self
                    .bounded(
                        "read telemetry",
                        self.store
                            .read_window(id, start, end, query.metrics.as_deref()),
                    )
                    .await?;
                query.page(aggregate(&samples, step_us, aggregation))
            }
        };
        let entries: Vec<TelemetryEntry> = samples.iter().map(TelemetryEntry::from).collect();
        Ok(TelemetryPage {
            gpu: GpuSummary::from(&record),
            count: entries.len(),
            entries,
            next_cursor: next_cursor.map(|c| c.encode()),
        })
    }

    /// Metric names seen on any GPU, with the DCGM description and unit where known.
    pub async fn metrics(&self) -> Result<MetricList, ApiError> {
        let records = self.bounded("list GPUs", self.store.list_gpus()).await?;
        let mut gpu_counts: BTreeMap<String, usize> = BTreeMap::new();
        for record in &records {
            for metric in record.metrics() {
                *gpu_counts.entry(metric.to_string()).or_default() += 1;
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
