//! Graceful shutdown: the signal future a function's `main` hands to its library (SIGTERM, what
//! Kubernetes and the autoscaler send, or Ctrl-C), and the flag the library's tasks wait on.

use std::future::Future;

use tokio::sync::watch;

/// Resolves on SIGTERM or SIGINT. Only a `main` listens for signals; libraries take a future.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT; shutting down"),
        _ = terminate => tracing::info!("received SIGTERM; shutting down"),
    }
}

/// A shutdown flag that many tasks can wait on; triggered by a future ([`Shutdown::when`]) or by
/// the program itself.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx, rx }
    }

    /// A shutdown that triggers once `future` resolves (the shutdown future a library was given).
    pub fn when(future: impl Future<Output = ()> + Send + 'static) -> Self {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            future.await;
            trigger.trigger();
        });
        shutdown
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|t| *t).await;
    }
}
