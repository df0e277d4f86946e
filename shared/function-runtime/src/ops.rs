//! The operations endpoints every function serves on `$PORT`: `/healthz` (the process is up),
//! `/readyz` (etcd answers within a bounded time and the function reports no fault) and
//! `/metrics` (Prometheus text format).
//!
//! The readiness probe reads a key under the deployment's prefix (`{prefix}/readyz-probe`, never
//! written), so that a role allowed only that prefix suffices for it as for everything else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use etcd_client::Client;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Whether the function can do its work: it has an etcd client, etcd answers in time, and the
/// function reports no fault (a state etcd answers in but refuses the function's work, such as
/// NOSPACE). Cheap to clone; every clone reports to the same `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness {
    client: Arc<OnceLock<ClientCell>>,
    probe_key: String,
    timeout: Duration,
    /// Faults reported now, by kind.
    faults: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

struct ClientCell(Client);

impl std::fmt::Debug for ClientCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Readiness {
    /// Readiness of a function whose keys live under `prefix` (`TELEMETRY_PREFIX`), probing etcd
    /// with reads bounded by `timeout`.
    pub fn new(prefix: &str, timeout: Duration) -> Self {
        Readiness {
            client: Arc::new(OnceLock::new()),
            probe_key: probe_key(prefix),
            timeout,
            faults: Arc::default(),
        }
    }

    /// Records the connected client; until then the function is not ready.
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(ClientCell(client));
    }

    /// Reports a fault of `kind` (replacing an earlier `reason` of the same kind): `/readyz`
    /// answers 503 with `reason` until [`Readiness::clear_fault`] clears it.
    pub fn report_fault(&self, kind: &'static str, reason: impl Into<String>) {
        self.lock_faults().insert(kind, reason.into());
    }

    /// Clears the fault of `kind`, if one is reported.
    pub fn clear_fault(&self, kind: &'static str) {
        self.lock_faults().remove(kind);
    }

    /// The reasons of the faults reported now, in the order of their kinds.
    pub fn faults(&self) -> Vec<String> {
        self.lock_faults().values().cloned().collect()
    }

    fn lock_faults(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // A panic while holding the lock cannot leave the map half-written: use it as it is.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` if no fault is reported and etcd answered a read within the timeout.
    pub async fn check(&self) -> Result<(), String> {
        let faults = self.faults();
        if !faults.is_empty() {
            return Err(faults.join("; "));
        }
        let Some(ClientCell(client)) = self.client.get() else {
            return Err("not connected to etcd yet".into());
        };
        let mut client = client.clone();
        let probe = client.get(self.probe_key.as_str(), None);
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("etcd error: {e}")),
            Err(_) => Err(format!("etcd did not answer within {:?}", self.timeout)),
        }
    }
}

/// The key the readiness probe reads: inside the prefix, so that a role granted only the prefix
/// may read it. Nothing writes it; reading a missing key is as good a probe as any.
fn probe_key(prefix: &str) -> String {
    format!("{}/readyz-probe", prefix.trim_end_matches('/'))
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

async fn healthz() -> Response {
    Json(Status {
        status: "ok",
        reason: None,
    })
    .into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    readiness_response(state.readiness.check().await)
}

/// The body of `/healthz` and `/readyz`.
#[derive(Serialize)]
struct Status {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `/readyz`'s answer: 200 `{"status":"ready"}`, or 503 `{"status":"not ready","reason":...}`.
fn readiness_response(readiness: Result<(), String>) -> Response {
    match readiness {
        Ok(()) => Json(Status {
            status: "ready",
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                status: "not ready",
                reason: Some(reason),
            }),
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn json_of(response: Response) -> (StatusCode, String, serde_json::Value) {
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, content_type, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_answers_and_readiness_waits_for_a_client() {
        let router = ops_router(
            Arc::new(Registry::default()),
            Readiness::new("/p", Duration::from_secs(1)),
        );
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        let health = router.clone().oneshot(get("/healthz")).await.unwrap();
        assert_eq!(
            json_of(health).await,
            (
                StatusCode::OK,
                "application/json".into(),
                serde_json::json!({"status": "ok"})
            )
        );
        let ready = router.oneshot(get("/readyz")).await.unwrap();
        assert_eq!(
            json_of(ready).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json".into(),
                serde_json::json!({"status": "not ready", "reason": "not connected to etcd yet"})
            )
        );
    }

    #[tokio::test]
    async fn readiness_needs_only_the_prefix() {
        let prefix = test_support::unique_prefix("readiness");
        let (etcd, user) = test_support::EtcdHarness::start_with_auth(&prefix, &[]).await;
        let readiness = Readiness::new(&prefix, Duration::from_secs(5));
        readiness.set_client(etcd.client_as(&user).await);
        assert_eq!(readiness.check().await, Ok(()));
        // The same user probing outside its prefix is refused: the probe key is what makes it.
        let outside = Readiness::new(&format!("{prefix}-other"), Duration::from_secs(5));
        outside.set_client(etcd.client_as(&user).await);
        let refused = outside.check().await.unwrap_err();
        assert!(refused.contains("permission denied"), "{refused}");
    }

    #[tokio::test]
    async fn a_reported_fault_makes_readiness_fail_until_cleared() {
        let etcd = test_support::EtcdHarness::start().await;
        let readiness = Readiness::new("/p", Duration::from_secs(5));
        readiness.set_client(etcd.client().await);
        let router = ops_router(Arc::new(Registry::default()), readiness.clone());
        let ready = || async {
            let request = Request::get("/readyz").body(Body::empty()).unwrap();
            let (status, _, body) = json_of(router.clone().oneshot(request).await.unwrap()).await;
            (status, body)
        };
        assert_eq!(ready().await.0, StatusCode::OK);
        readiness.report_fault("space", "etcd is out of space");
        readiness.report_fault("auth", "etcd refused the credentials");
        assert_eq!(
            ready().await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "status": "not ready",
                    "reason": "etcd refused the credentials; etcd is out of space"
                })
            )
        );
        readiness.clear_fault("auth");
        readiness.report_fault("space", "still out of space");
        assert_eq!(ready().await.1["reason"], "still out of space");
        readiness.clear_fault("space");
        readiness.clear_fault("space");
        assert_eq!(ready().await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readiness_reasons_are_json_strings_whatever_they_hold() {
        let reason = "etcd error: \"quoted\" \u{e9}\n\u{1}";
        let (status, _, body) = json_of(readiness_response(Err(reason.into()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], reason);
        let (status, _, body) = json_of(readiness_response(Ok(()))).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        );
    }
}
