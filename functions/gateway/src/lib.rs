//! The gateway: a stateless REST API over the telemetry store (GPUs, telemetry windows, latest
//! values, metric descriptions) and the queue status, the Prometheus HTTP API (PromQL) over the
//! same store, with a generated OpenAPI 3.1 document, an
//! offline Swagger UI, a dashboard, health, readiness and Prometheus metrics. It reads etcd and
//! writes nothing.
//!
//! [`run`] starts answering at once on the listener it is given (API calls get 503 until etcd is
//! connected), which keeps cold starts short when the service scales from zero.

pub mod app;
pub mod backend;
pub mod config;
pub mod dcgm_fields;
pub mod dto;
pub mod error;
pub mod fleet_latest;
pub mod http_metrics;
pub mod openapi;
pub mod params;
pub mod prom_api;
pub mod prom_source;
pub mod queue_view;
pub mod routes;
pub mod seed;
pub mod telemetry_body;
pub mod ui;

use std::future::Future;

use function_runtime::{serve_http, Readiness};
use tokio::net::TcpListener;

pub use app::app;
pub use backend::{ApiState, Backend};
pub use config::{Config, HttpSettings};
pub use error::{ApiError, GatewayError, Problem};
pub use openapi::{openapi, openapi_json};

/// Serves the gateway on `listener` until `shutdown` resolves, then finishes the requests in
/// flight. Unusable etcd settings stop it at once: connecting would never succeed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config
        .etcd
        .validate()
        .map_err(GatewayError::CheckEtcdSettings)?;
    let state = ApiState::connecting();
    let readiness = Readiness::new(&config.etcd.prefix, config.etcd_read_timeout);
    let router = app(state.clone(), readiness.clone(), &config.http);
    let connect = tokio::spawn(connect_backend(config, state, readiness));
    let result = serve_http(listener, router, shutdown).await;
    connect.abort();
    result.map_err(GatewayError::Serve)
}

/// Connects to etcd (retrying until it answers) and hands the readers to the API.
async fn connect_backend(config: Config, state: ApiState, readiness: Readiness) {
    match config.etcd.connect().await {
        Ok(client) => {
            readiness.set_client(client.clone());
            state.connect(Backend::new(client, &config));
        }
        Err(e) => tracing::error!(error = %e, "cannot connect to etcd; the API answers 503"),
    }
}

/// Runs the same application under AWS Lambda (API Gateway / ALB / function URL events).
#[cfg(feature = "lambda")]
pub async fn run_lambda(config: Config) -> Result<(), GatewayError> {
    config
        .etcd
        .validate()
        .map_err(GatewayError::CheckEtcdSettings)?;
    let state = ApiState::connecting();
    let readiness = Readiness::new(&config.etcd.prefix, config.etcd_read_timeout);
    let router = app(state.clone(), readiness.clone(), &config.http);
    connect_backend(config, state, readiness).await;
    lambda_http::run(router)
        .await
        .map_err(|e| GatewayError::RunLambda(e.to_string()))
}
