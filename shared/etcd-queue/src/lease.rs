//! A lease kept alive by a background task, with a signal when it is lost.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::QueueError;
use crate::retry::{is_transient, with_retry, Backoff};

/// An etcd lease kept alive every third of its TTL until dropped or revoked. If etcd reports it
/// gone (expired while this process was paused or cut off), [`KeptLease::is_lost`] turns true and
/// everything attached to it (member key, owner keys) must be considered gone.
#[derive(Debug)]
pub struct KeptLease {
    id: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl KeptLease {
    pub async fn grant(
        client: &Client,
        ttl: Duration,
        budget: Duration,
    ) -> Result<Self, QueueError> {
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let granted = with_retry("grant lease", budget, || {
            let mut client = client.clone();
            async move { client.lease_grant(ttl_secs, None).await }
        })
        .await?;
        let id = granted.id();
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(client.clone(), id, ttl, lost_tx));
        Ok(KeptLease {
            id,
            ttl,
            lost,
            task,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True once etcd has said the lease no longer exists.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub async fn wait_lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops the keep-alive and revokes the lease, deleting every key attached to it.
    pub async fn revoke(self, client: &Client) -> Result<(), QueueError> {
        self.task.abort();
        let id = self.id;
        with_retry("revoke lease", Duration::from_secs(5), || {
            let mut client = client.clone();
            async move { client.lease_revoke(id).await }
        })
        .await
        .map(|_| ())
        .or_else(|e| match e {
            // Already expired: its keys are gone, which is what revoking wanted.
            QueueError::Etcd { source, .. } if is_lease_not_found(&source) => Ok(()),
            other => Err(other),
        })
    }
}

/// What etcd says when a request names a lease it does not have (expired or revoked): gRPC
/// `NotFound` with this message, for a revoke, a keep-alive or a put attached to the lease.
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// Whether `error` is etcd saying that the lease a request named no longer exists. Everything
/// attached to that lease is gone with it.
pub fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::NotFound && status.message() == LEASE_NOT_FOUND
    )
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(client: Client, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    let mut backoff = Backoff::new(Duration::from_millis(50), period);
    loop {
        let mut c = client.clone();
        match c.lease_keep_alive(id).await {
            Ok((mut keeper, mut stream)) => {
                backoff = Backoff::new(Duration::from_millis(50), period);
                loop {
                    tokio::time::sleep(period).await;
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match stream.message().await {
                        Ok(Some(resp)) if resp.ttl() > 0 => {}
                        Ok(Some(_)) => {
                            tracing::warn!(lease = id, "lease expired");
                            let _ = lost.send(true);
                            return;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            Err(e) if !is_transient(&e) => {
                tracing::warn!(lease = id, error = %e, "lease is gone");
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::debug!(lease = id, error = %e, "keep-alive stream failed; retrying"),
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcds_lease_not_found_status_is_lease_not_found() {
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(is_lease_not_found(&status(
            tonic::Code::NotFound,
            LEASE_NOT_FOUND
        )));
        // Another missing thing, the same words under another code, or in another error kind.
        assert!(!is_lease_not_found(&status(
            tonic::Code::NotFound,
            "etcdserver: key not found"
        )));
        assert!(!is_lease_not_found(&status(
            tonic::Code::Unavailable,
            LEASE_NOT_FOUND
        )));
        assert!(!is_lease_not_found(
            &etcd_client::Error::LeaseKeepAliveError(LEASE_NOT_FOUND.into())
        ));
    }
}
