//! Connecting to etcd with the configured credentials and TLS, waiting for it rather than failing
//! when it is not reachable yet.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use etcd_queue::Backoff;

use crate::config::EtcdConfig;
use crate::error::RuntimeError;

impl EtcdConfig {
    fn connect_options(&self) -> Result<ConnectOptions, RuntimeError> {
        let mut options = ConnectOptions::new()
            .with_timeout(self.timeout)
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            options = options.with_user(user, password);
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read("ETCD_CA_FILE", ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read("ETCD_CERT_FILE", cert)?,
                    read("ETCD_KEY_FILE", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    /// Connects to etcd, retrying with backoff until it answers (logging each failure), so that a
    /// function started before etcd waits instead of crashing. Fails only on unreadable TLS files.
    pub async fn connect(&self) -> Result<Client, RuntimeError> {
        let options = self.connect_options()?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match Client::connect(&self.endpoints, Some(options.clone())).await {
                Ok(client) => {
                    tracing::info!(endpoints = ?self.endpoints, "connected to etcd");
                    return Ok(client);
                }
                Err(e) => {
                    tracing::warn!(endpoints = ?self.endpoints, error = %e, "etcd unreachable; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::ReadTlsFile {
        variable,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreadable_certificate_is_a_configuration_error() {
        let config = EtcdConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EtcdConfig::default()
        };
        let Err(error) = config.connect().await else {
            panic!("connected without the CA certificate");
        };
        assert!(
            error
                .to_string()
                .starts_with("read ETCD_CA_FILE /nonexistent/ca.pem: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn connecting_to_a_real_etcd_answers_reads() {
        let etcd = test_support::EtcdHarness::start().await;
        let config = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            ..EtcdConfig::default()
        };
        let key = format!("{}/connect-test", test_support::unique_prefix("connect"));
        let mut client = config.connect().await.unwrap();
        client.put(key.as_str(), "1", None).await.unwrap();
        let value = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(value.kvs()[0].value(), b"1");
    }
}
