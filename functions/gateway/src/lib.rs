//! The gateway: a stateless REST API over the telemetry store (GPUs, telemetry windows, latest
//! values, metric descriptions) and the queue status, with a generated OpenAPI 3.1 document, an
//! offline Swagger UI, health, readiness and Prometheus metrics. It reads etcd and writes nothing.
//!
//! The server starts answering at once (API calls get 503 until etcd is connected), which keeps
//! cold starts short when the service scales from zero.

pub mod app;
pub mod backend;
pub mod config;
pub mod dcgm_fields;
pub mod dto;
pub mod error;
pub mod http_metrics;
pub mod openapi;
pub mod params;
pub mod queue_view;
pub mod routes;
pub mod seed;

use function_runtime::{serve, Readiness, Shutdown};

pub use app::app;
pub use backend::{ApiState, Backend};
pub use config::{GatewayArgs, HttpSettings, DEFAULT_PORT};
pub use error::{ApiError, Problem};
pub use openapi::{openapi, openapi_json};

/// Serves the gateway on `PORT` until `shutdown` triggers.
pub async fn run(args: GatewayArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    run_until(args, shutdown, |_| {}).await
}

/// [`run`], reporting the bound port through `on_bound` (useful with port 0).
pub async fn run_until(
    args: GatewayArgs,
    shutdown: Shutdown,
    on_bound: impl FnOnce(u16),
) -> anyhow::Result<()> {
    let state = ApiState::connecting();
    let readiness = Readiness::new(args.etcd_read_timeout);
    let router = app(state.clone(), readiness.clone(), &args.http_settings());
    let connect = tokio::spawn(connect_backend(args.clone(), state, readiness));
    let result = serve(router, args.port(), on_bound, async move {
        shutdown.wait().await
    })
    .await;
    connect.abort();
    result
}

/// Connects to etcd (retrying until it answers) and hands the readers to the API.
async fn connect_backend(args: GatewayArgs, state: ApiState, readiness: Readiness) {
    match args.common.connect_etcd().await {
        Ok(client) => {
            readiness.set_client(client.clone());
            state.connect(Backend::new(client, &args));
        }
        Err(e) => tracing::error!(error = %e, "cannot connect to etcd; the API answers 503"),
    }
}

/// Runs the same application under AWS Lambda (API Gateway / ALB / function URL events).
#[cfg(feature = "lambda")]
pub async fn run_lambda(args: GatewayArgs) -> anyhow::Result<()> {
    let state = ApiState::connecting();
    let readiness = Readiness::new(args.etcd_read_timeout);
    let router = app(state.clone(), readiness.clone(), &args.http_settings());
    connect_backend(args, state, readiness).await;
    lambda_http::run(router)
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
