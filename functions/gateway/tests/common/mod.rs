//! Shared pieces of the gateway's integration tests: the store filled by the real pipeline from a
//! DCGM CSV (with the samples the tests expect back), the application in-process or served over
//! HTTP, and a small HTTP client.
//!
//! The store is filled the way production fills it: the streamer library streams `PASSES` passes
//! over the CSV onto the etcd queue, stamping every row with the time it processes it, and the
//! collector library consumes the queue and persists each delivery in its fenced commit. The
//! samples the tests expect are then derived from the CSV (GPU, metric, value of every row) and
//! the stored timestamps, after checking that the store holds exactly one sample per row and pass.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use collector::{CollectorMetrics, DeliveryProcessor};
use etcd_queue::{ConsumerConfig, Queue, QueueConfig};
use function_runtime::{EtcdConfig, Readiness, Shutdown};
use gateway::{app, ApiState, Backend, Config, HttpSettings};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use serde_json::Value;
use telemetry_model::{CsvRow, DcgmCsvReader, GpuInfo, RowOutcome, TimestampMicros};
use telemetry_store::{SampleQuery, StoreConfig, TelemetryStore};
use test_support::{unique_prefix, EtcdHarness};
use tower::ServiceExt;

#[allow(unused_imports)] // not every test binary uses every helper
pub use test_support::{testdata, REAL_CSV};
pub const SLICE_CSV: &str = "dcgm-slice-100.csv";
pub const PASSES: usize = 3;
/// The streamer's pause between passes, so the passes fall into different seconds.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// How long the fixture's collector may take to persist everything the streamer published.
const COLLECT_LIMIT: Duration = Duration::from_secs(300);

/// One stored sample as the tests expect to read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub timestamp: i64,
    pub metric: String,
    pub value: f64,
}

/// What was stored for one GPU.
#[derive(Debug, Clone)]
pub struct ExpectedGpu {
    pub info: GpuInfo,
    /// Sorted by (timestamp, metric).
    pub samples: Vec<Expected>,
}

impl ExpectedGpu {
    /// This GPU's samples stamped during `pass`.
    pub fn in_pass(&self, pass: &Pass) -> Vec<&Expected> {
        self.samples
            .iter()
            .filter(|s| pass.contains(s.timestamp))
            .collect()
    }

    /// This GPU's samples in the inclusive window `[start, end]`.
    pub fn between(&self, start: i64, end: i64) -> Vec<&Expected> {
        self.samples
            .iter()
            .filter(|s| start <= s.timestamp && s.timestamp <= end)
            .collect()
    }
}

/// The first and last timestamp the streamer stamped in one pass over the CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub first: i64,
    pub last: i64,
}

impl Pass {
    pub fn contains(&self, timestamp: i64) -> bool {
        self.first <= timestamp && timestamp <= self.last
    }
}

/// A real etcd with the store filled by the streamer and the collector from a CSV.
pub struct Fixture {
    pub etcd: EtcdHarness,
    pub prefix: String,
    pub store: TelemetryStore,
    pub gpus: BTreeMap<String, ExpectedGpu>,
    /// The passes, oldest first.
    pub passes: Vec<Pass>,
    /// Queue messages the streamer published, all committed by the collector.
    pub messages: u64,
}

impl Fixture {
    /// Starts etcd, streams `PASSES` passes over the testdata CSV `csv` with the streamer
    /// (`PASS_INTERVAL` apart) while the collector persists them, and waits until every sample is
    /// stored and the queue is empty.
    pub async fn filled(test: &str, csv: &str) -> Fixture {
        Self::filled_from(test, &testdata(csv), PASSES).await
    }

    /// [`Fixture::filled`] from the CSV at `csv`, `passes` times.
    pub async fn filled_from(test: &str, csv: &Path, passes: usize) -> Fixture {
        let etcd = EtcdHarness::start().await;
        let prefix = unique_prefix(test);
        let client = etcd.client().await;
        let store = TelemetryStore::new(client.clone(), store_config(&prefix));
        let rows = csv_rows(csv);
        let total = passes * rows.len();

        // Boxed: in debug builds the two futures together outgrow a test thread's stack.
        let (report, collected) = tokio::join!(
            Box::pin(stream(client.clone(), &prefix, csv, passes)),
            Box::pin(collect(client.clone(), &prefix, total)),
        );
        assert!(report.passes_reached, "the streamer stopped early");
        assert_eq!(report.samples_published, total as u64, "samples streamed");
        assert_eq!(collected.samples, total, "samples persisted");
        assert_eq!(
            collected.messages, report.batches_published,
            "messages committed"
        );
        let queue = Queue::open(client, queue_config(&prefix))
            .await
            .expect("open the queue");
        assert_eq!(
            queue.depth().await.expect("queue depth"),
            0,
            "queue drained"
        );

        let (gpus, passes) = read_back(&store, &rows, passes).await;
        Fixture {
            etcd,
            prefix,
            store,
            gpus,
            passes,
            messages: report.batches_published,
        }
    }

    pub fn config(&self) -> Config {
        config_for(&self.etcd, &self.prefix)
    }

    /// The application, connected, with default HTTP settings.
    pub async fn router(&self) -> Router {
        router_for(&self.etcd, &self.config(), &HttpSettings::default()).await
    }

    pub fn gpu(&self, uuid: &str) -> &ExpectedGpu {
        &self.gpus[uuid]
    }
}

/// The gateway's configuration for `etcd` under `prefix`, with every other setting at its default.
pub fn config_for(etcd: &EtcdHarness, prefix: &str) -> Config {
    Config {
        etcd: EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.to_string(),
            ..EtcdConfig::default()
        },
        ..Config::default()
    }
}

/// Every valid row of a CSV.
pub fn csv_rows(path: &Path) -> Vec<CsvRow> {
    DcgmCsvReader::open(path)
        .expect("open CSV")
        .filter_map(RowOutcome::row)
        .collect()
}

pub fn queue_config(prefix: &str) -> QueueConfig {
    QueueConfig {
        prefix: prefix.to_string(),
        ..QueueConfig::default()
    }
}

pub fn store_config(prefix: &str) -> StoreConfig {
    StoreConfig {
        prefix: prefix.to_string(),
        ..StoreConfig::default()
    }
}

/// Streams `passes` passes over a CSV with the streamer (one instance).
async fn stream(
    client: etcd_client::Client,
    prefix: &str,
    csv: &Path,
    passes: usize,
) -> streamer::RunReport {
    let mut config = streamer::StreamerConfig::new(csv.to_path_buf(), queue_config(prefix));
    config.passes = Some(passes as u64);
    config.interval = PASS_INTERVAL;
    let metrics = streamer::StreamerMetrics::register(&mut Registry::default());
    streamer::Streamer::new(client, config, metrics)
        .run(Shutdown::new())
        .await
        .expect("stream the CSV")
}

/// What the fixture's collector persisted.
struct Collected {
    messages: u64,
    samples: usize,
}

/// Runs the collector's consume loop (one member of the group) until `expected` samples are
/// persisted, then leaves the group.
async fn collect(client: etcd_client::Client, prefix: &str, expected: usize) -> Collected {
    let queue = Queue::open(client.clone(), queue_config(prefix))
        .await
        .expect("open the queue");
    let metrics = Arc::new(CollectorMetrics::register(&mut Registry::default()));
    let mut processor =
        DeliveryProcessor::new(TelemetryStore::new(client, store_config(prefix)), metrics);
    let mut consumer = queue
        .consumer(ConsumerConfig::new("fixture-collector"))
        .await
        .expect("join the consumer group");
    let mut collected = Collected {
        messages: 0,
        samples: 0,
    };
    let deadline = Instant::now() + COLLECT_LIMIT;
    while collected.samples < expected {
        assert!(
            Instant::now() < deadline,
            "persisted {} of {expected} samples in {COLLECT_LIMIT:?}",
            collected.samples
        );
        let Some(delivery) = consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll the queue")
        else {
            continue;
        };
        let done = processor
            .process(&mut consumer, delivery)
            .await
            .expect("persist a delivery");
        assert_eq!(done.dead_letters, 0, "the streamer's batches decode");
        collected.messages += done.messages as u64;
        collected.samples += done.samples;
    }
    consumer.leave().await.expect("leave the consumer group");
    collected
}

/// Reads every stored sample back and checks it is exactly the CSV once per pass: the streamer
/// stamps rows in file order with strictly increasing times, so the stored timestamps, sorted,
/// are those of rows 0..n of the first pass, then of the second, and so on. Returns the samples
/// per GPU (CSV values at the stored times) and the passes.
async fn read_back(
    store: &TelemetryStore,
    rows: &[CsvRow],
    passes: usize,
) -> (BTreeMap<String, ExpectedGpu>, Vec<Pass>) {
    let mut stored: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
    for record in store.list_gpus().await.expect("list GPUs") {
        let page = store
            .query(
                &record.info.uuid,
                &SampleQuery {
                    limit: 100_000,
                    ..SampleQuery::default()
                },
            )
            .await
            .expect("read a GPU's samples");
        assert_eq!(page.next_cursor, None);
        let samples = page
            .samples
            .into_iter()
            .map(|s| Expected {
                timestamp: s.timestamp.0,
                metric: s.metric.to_string(),
                value: s.value,
            })
            .collect();
        stored.insert(record.info.uuid.to_string(), samples);
    }

    let mut stamps: Vec<i64> = stored.values().flatten().map(|s| s.timestamp).collect();
    stamps.sort_unstable();
    assert_eq!(stamps.len(), passes * rows.len(), "samples stored");
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "every row of every pass has its own timestamp"
    );
    let mut gpus: BTreeMap<String, ExpectedGpu> = BTreeMap::new();
    let mut pass_bounds = Vec::with_capacity(passes);
    for pass_stamps in stamps.chunks(rows.len()) {
        for (row, &timestamp) in rows.iter().zip(pass_stamps) {
            gpus.entry(row.info.uuid.to_string())
                .or_insert_with(|| ExpectedGpu {
                    info: row.info.clone(),
                    samples: Vec::new(),
                })
                .samples
                .push(Expected {
                    timestamp,
                    metric: row.metric.to_string(),
                    value: row.value,
                });
        }
        pass_bounds.push(Pass {
            first: pass_stamps[0],
            last: pass_stamps[pass_stamps.len() - 1],
        });
    }
    for gpu in gpus.values_mut() {
        gpu.samples
            .sort_by(|a, b| (a.timestamp, &a.metric).cmp(&(b.timestamp, &b.metric)));
    }
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        gpus.keys().collect::<Vec<_>>(),
        "GPUs stored"
    );
    for (uuid, gpu) in &gpus {
        assert_eq!(stored[uuid], gpu.samples, "{uuid}: stored samples");
    }
    (gpus, pass_bounds)
}

/// The application with no etcd behind it: every API call answers 503.
pub fn unconnected_router() -> Router {
    app(
        ApiState::connecting(),
        Readiness::new("/gpu-telemetry", Duration::from_secs(1)),
        &HttpSettings::default(),
    )
}

/// The application connected to `etcd` with `config`'s prefix and timeouts.
pub async fn router_for(etcd: &EtcdHarness, config: &Config, settings: &HttpSettings) -> Router {
    let client = etcd.client().await;
    let readiness = Readiness::new(&config.etcd.prefix, config.etcd_read_timeout);
    readiness.set_client(client.clone());
    let state = ApiState::connected(Backend::new(client, config));
    app(state, readiness, settings)
}

/// A response, body collected.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a problem document with `status` and returns its `type` slug.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status; body: {}",
            self.text()
        );
        assert_eq!(self.content_type(), "application/problem+json");
        let body = self.json();
        let object = body.as_object().expect("problem is an object");
        assert_eq!(object["status"], status);
        assert!(object["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(object["detail"].as_str().is_some_and(|t| !t.is_empty()));
        let problem_type = object["type"].as_str().expect("type is a string");
        problem_type
            .strip_prefix("urn:gpu-telemetry:problem:")
            .expect("type is a gpu-telemetry URN")
            .to_string()
    }
}

/// Sends `request` through the router in-process.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes().to_vec();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET uri` through the router in-process.
pub async fn get(router: &Router, uri: &str) -> Reply {
    send(
        router,
        Request::get(uri)
            .body(Body::empty())
            .expect("valid request"),
    )
    .await
}

/// The gateway served over real HTTP on an ephemeral port; stopped on drop.
pub struct Served {
    pub base: String,
    shutdown: Shutdown,
    client: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Served {
    /// Runs the gateway library's `run` on a free port.
    pub async fn start(config: Config) -> Served {
        let shutdown = Shutdown::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            gateway::run(config, listener, async move { stop.wait().await })
                .await
                .expect("gateway serves");
        });
        let served = Served {
            base: format!("http://127.0.0.1:{port}"),
            shutdown,
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
        };
        // The API answers 503 until the background connection to etcd is made.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reply = served.get("/readyz").await;
            if reply.status == StatusCode::OK {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway never became ready: {}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Empty::new()).expect("valid request"))
            .await
            .expect("HTTP request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes().to_vec();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A gateway process of the built binary (`gateway run`), killed on drop.
pub struct GatewayProcess {
    child: std::process::Child,
    pub base: String,
}

impl GatewayProcess {
    /// Starts `gateway run` on a free port for the etcd at `endpoint` under `prefix`, with `env`
    /// added, and waits until it is ready.
    pub async fn start(endpoint: &str, prefix: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let port = test_support::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("run")
            .env("ETCD_ENDPOINTS", endpoint)
            .env("TELEMETRY_PREFIX", prefix)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the gateway binary");
        let gateway = GatewayProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        test_support::wait_until("the gateway is ready", Duration::from_secs(60), || async {
            gateway
                .try_get("/readyz", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        gateway
    }

    async fn try_get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<test_support::HttpResponse, String> {
        test_support::http_request("GET", &format!("{}{path}", self.base), headers, Vec::new())
            .await
    }

    /// `GET path` with `headers`.
    pub async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> test_support::HttpResponse {
        self.try_get(path, headers)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> test_support::HttpResponse {
        self.get_with(path, &[]).await
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        reply.json()
    }

    /// `VmHWM` (peak) or `VmRSS` (now) of the process, in KiB.
    pub fn memory_kib(&self, field: &str) -> u64 {
        test_support::process_memory_kib(self.child.id(), field)
    }

    /// Sends `paths`, `at_once` at a time, and returns the answers in order.
    pub async fn burst(&self, paths: &[String], at_once: usize) -> Vec<test_support::HttpResponse> {
        let mut answers = Vec::with_capacity(paths.len());
        for round in paths.chunks(at_once) {
            let requests = round.iter().map(|path| self.get(path));
            answers.extend(futures::future::join_all(requests).await);
        }
        answers
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders a timestamp the way the API does.
pub fn rfc3339(micros: i64) -> String {
    TimestampMicros(micros).to_rfc3339()
}

/// Percent-encodes a query value (RFC 3339 offsets contain `+` and `:`).
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `(timestamp, metric, value)` of the entries of a telemetry page.
pub fn entries(page: &Value) -> Vec<(String, String, f64)> {
    page["entries"]
        .as_array()
        .expect("entries is an array")
        .iter()
        .map(|e| {
            (
                e["timestamp"].as_str().unwrap().to_string(),
                e["metric_name"].as_str().unwrap().to_string(),
                e["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The expected samples rendered as API entries.
pub fn expected_entries<'a>(
    samples: impl IntoIterator<Item = &'a Expected>,
) -> Vec<(String, String, f64)> {
    samples
        .into_iter()
        .map(|s| (rfc3339(s.timestamp), s.metric.clone(), s.value))
        .collect()
}
