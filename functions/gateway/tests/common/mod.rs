//! Shared pieces of the gateway's integration tests: the store filled from a DCGM CSV (with the
//! samples the tests expect back), the application in-process or served over HTTP, and a small
//! HTTP client.
//!
//! The store is filled with `TelemetryStore::write_idempotent` from batches built here: every row
//! of the CSV once per pass, pass `i` stamped `first_pass_at + i * PASS_INTERVAL_US`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use function_runtime::{Readiness, Shutdown};
use gateway::{app, ApiState, Backend, GatewayArgs, HttpSettings};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use telemetry_model::{CsvRow, DcgmCsvReader, GpuInfo, RowOutcome, SampleBatch, TimestampMicros};
use telemetry_store::{group_by_gpu, StoreConfig, TelemetryStore};
use test_support::{unique_prefix, EtcdHarness};
use tower::ServiceExt;

pub const REAL_CSV: &str = "dcgm_metrics_20250718_134233.csv";
pub const SLICE_CSV: &str = "dcgm-slice-100.csv";
pub const PASSES: usize = 3;
pub const PASS_INTERVAL_US: i64 = 1_000_000;

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(name)
}

/// One stored sample as the tests expect to read it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub timestamp: i64,
    pub metric: String,
    pub value: f64,
}

/// What was written for one GPU.
#[derive(Debug, Clone)]
pub struct ExpectedGpu {
    pub info: GpuInfo,
    /// Sorted by (timestamp, metric).
    pub samples: Vec<Expected>,
}

/// A real etcd with the store filled from a CSV.
pub struct Fixture {
    pub etcd: EtcdHarness,
    pub prefix: String,
    pub store: TelemetryStore,
    pub gpus: BTreeMap<String, ExpectedGpu>,
    /// Time of each pass, oldest first.
    pub pass_times: Vec<i64>,
}

impl Fixture {
    /// Starts etcd and stores `PASSES` passes over `csv`. The first pass is stamped ten minutes
    /// ago with a sub-second part, so microsecond precision is exercised.
    pub async fn filled(test: &str, csv: &str) -> Fixture {
        let etcd = EtcdHarness::start().await;
        let prefix = unique_prefix(test);
        let store = TelemetryStore::new(
            etcd.client().await,
            StoreConfig {
                prefix: prefix.clone(),
                ..StoreConfig::default()
            },
        );
        let now = TimestampMicros::now().0;
        let first_pass_at = (now / 1_000_000 - 600) * 1_000_000 + 123_457;
        let pass_times: Vec<i64> = (0..PASSES as i64)
            .map(|i| first_pass_at + i * PASS_INTERVAL_US)
            .collect();
        let rows = csv_rows(csv);
        let mut gpus: BTreeMap<String, ExpectedGpu> = BTreeMap::new();
        for &at in &pass_times {
            let mut builder = SampleBatch::builder();
            for row in &rows {
                builder.push(&row.info, &row.metric, TimestampMicros(at), row.value);
                gpus.entry(row.info.uuid.to_string())
                    .or_insert_with(|| ExpectedGpu {
                        info: row.info.clone(),
                        samples: Vec::new(),
                    })
                    .samples
                    .push(Expected {
                        timestamp: at,
                        metric: row.metric.to_string(),
                        value: row.value,
                    });
            }
            let batch = builder.build();
            let stats = store
                .write_idempotent(&format!("fixture-{at}"), &group_by_gpu([&batch]))
                .await
                .expect("fill the store");
            assert_eq!(stats.samples, rows.len());
        }
        for gpu in gpus.values_mut() {
            gpu.samples
                .sort_by(|a, b| (a.timestamp, &a.metric).cmp(&(b.timestamp, &b.metric)));
        }
        Fixture {
            etcd,
            prefix,
            store,
            gpus,
            pass_times,
        }
    }

    pub fn args(&self) -> GatewayArgs {
        GatewayArgs::local(&self.etcd.endpoint(), &self.prefix)
    }

    /// The application, connected, with default HTTP settings.
    pub async fn router(&self) -> Router {
        router_for(&self.etcd, &self.args(), &HttpSettings::default()).await
    }

    pub fn gpu(&self, uuid: &str) -> &ExpectedGpu {
        &self.gpus[uuid]
    }
}

/// Every valid row of a testdata CSV.
pub fn csv_rows(name: &str) -> Vec<CsvRow> {
    DcgmCsvReader::open(testdata(name))
        .expect("open CSV")
        .filter_map(|outcome| match outcome {
            RowOutcome::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// The application connected to `etcd` with `args`' prefix and timeouts.
pub async fn router_for(etcd: &EtcdHarness, args: &GatewayArgs, settings: &HttpSettings) -> Router {
    let client = etcd.client().await;
    let readiness = Readiness::new(args.etcd_read_timeout);
    readiness.set_client(client.clone());
    let state = ApiState::connected(Backend::new(client, args));
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
    pub async fn start(args: GatewayArgs) -> Served {
        let shutdown = Shutdown::new();
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            gateway::run_until(args, stop, move |port| {
                let _ = port_tx.send(port);
            })
            .await
            .expect("gateway serves");
        });
        let port = port_rx.await.expect("gateway bound a port");
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
