//! The HTTP listener and server of every function: `main` binds the port (on IPv6 and IPv4 where
//! it can) and hands the listener to the library, which serves on it until told to stop.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::RuntimeError;
use crate::shutdown::Shutdown;

/// Binds `port` on every address: IPv6 and IPv4 on one socket (`[::]`, dual stack), so IPv6-only
/// clusters reach it too, or every IPv4 address (`0.0.0.0`) where IPv6 is unavailable. Port 0
/// picks a free port. Call it inside the Tokio runtime.
pub fn bind_http(port: u16) -> Result<TcpListener, RuntimeError> {
    let bound = match bind_dual_stack(port) {
        Ok(listener) => Ok(listener),
        // Taken on IPv6 is taken on IPv4 too (one dual-stack socket holds both).
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(e) => {
            tracing::info!(error = %e, "IPv6 unavailable; listening on IPv4 only");
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        }
    };
    bound
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        })
        .map_err(|source| RuntimeError::BindPort { port, source })
}

fn bind_dual_stack(port: u16) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    // As `TcpListener::bind` does: a restarted process can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let address = listener.local_addr().map_err(RuntimeError::ServeHttp)?;
    tracing::info!(%address, "serving HTTP");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RuntimeError::ServeHttp)
}

/// [`serve_http`] in the background, for a function whose health and metrics must stay up while
/// it works and drains: it stops when told to ([`HttpServer::stop`]) or dropped.
#[derive(Debug)]
pub struct HttpServer {
    stop: Shutdown,
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl HttpServer {
    pub fn spawn(listener: TcpListener, router: Router) -> Self {
        let stop = Shutdown::new();
        let until = stop.clone();
        let task = tokio::spawn(serve_http(
            listener,
            router,
            async move { until.wait().await },
        ));
        HttpServer {
            stop,
            task: Some(task),
        }
    }

    /// Resolves only if the server ended without being stopped, with the reason.
    pub async fn failed(&mut self) -> RuntimeError {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let ended = task.await;
        self.task = None;
        match ended {
            Ok(Err(e)) => e,
            Ok(Ok(())) => RuntimeError::ServerStopped("it returned".into()),
            Err(e) => RuntimeError::ServerStopped(e.to_string()),
        }
    }

    /// Stops accepting connections, finishes the requests in flight and waits for the server.
    pub async fn stop(mut self) -> Result<(), RuntimeError> {
        self.stop.trigger();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| RuntimeError::ServerStopped(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    async fn get_over(host: &str, port: u16) -> String {
        let response =
            test_support::http_request("GET", &format!("http://{host}:{port}/hello"), &[], vec![])
                .await
                .unwrap();
        response.text()
    }

    #[tokio::test]
    async fn one_listener_answers_on_ipv4_and_ipv6_until_stopped() {
        let listener = bind_http(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::spawn(
            listener,
            Router::new().route("/hello", get(|| async { "hi" })),
        );
        assert_eq!(get_over("127.0.0.1", port).await, "hi");
        // Where the machine has IPv6 at all, the same socket serves it.
        if std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
            assert_eq!(get_over("[::1]", port).await, "hi");
        }
        server.stop().await.unwrap();
        assert!(tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_it() {
        let taken = bind_http(0).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = bind_http(port).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("bind port {port}: ")),
            "{error}"
        );
    }
}
