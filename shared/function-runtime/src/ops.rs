//! The operations endpoints every function serves on `$PORT`: `/healthz` (the process is up),
//! `/readyz` (etcd answers within a bounded time) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use etcd_client::Client;
use prometheus_client::registry::Registry;

/// Whether the function can do its work: it has an etcd client and etcd answers in time.
#[derive(Clone, Debug)]
pub struct Readiness {
    client: Arc<OnceLock<ClientCell>>,
    timeout: Duration,
}

struct ClientCell(Client);

impl std::fmt::Debug for ClientCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Readiness {
    pub fn new(timeout: Duration) -> Self {
        Readiness {
            client: Arc::new(OnceLock::new()),
            timeout,
        }
    }

    /// Records the connected client; until then the function is not ready.
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(ClientCell(client));
    }

    /// `Ok` if etcd answered a read within the timeout.
    pub async fn check(&self) -> Result<(), String> {
        let Some(ClientCell(client)) = self.client.get() else {
            return Err("not connected to etcd yet".into());
        };
        let mut client = client.clone();
        match tokio::time::timeout(self.timeout, client.get("/readyz-probe", None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("etcd error: {e}")),
            Err(_) => Err(format!("etcd did not answer within {:?}", self.timeout)),
        }
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// A router with `/healthz`, `/readyz` and `/metrics`; merge function routes into it.
pub fn ops_router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            readiness,
        })
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.readiness.check().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"ready"}"#.to_string(),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"status":"not ready","reason":{:?}}}"#, reason),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `router` on `0.0.0.0:port` until `shutdown` resolves. Returns the bound port through
/// `on_bound` (useful with port 0).
pub async fn serve(
    router: Router,
    port: u16,
    on_bound: impl FnOnce(u16),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| anyhow::anyhow!("bind port {port}: {e}"))?;
    let bound = listener.local_addr()?.port();
    tracing::info!(port = bound, "serving HTTP");
    on_bound(bound);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
