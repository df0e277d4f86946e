//! Connecting to etcd with the configured credentials and TLS, waiting for it rather than failing
//! when it is not reachable yet, and staying logged in.
//!
//! etcd forgets its (simple) auth tokens when it restarts, and expires them after
//! `--auth-token-ttl` of disuse. The client is built with etcd-client's automatic token refresh:
//! a request refused with `Unauthenticated` ("invalid auth token") logs in again with the same
//! credentials and is sent once more, so every crate that uses the client stays logged in without
//! knowing about authentication. If logging in fails too (etcd still starting), the caller sees an
//! `Unavailable` error, which the shared crates retry; the next attempt logs in again.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use etcd_queue::Backoff;

use crate::config::EtcdConfig;
use crate::error::RuntimeError;

impl EtcdConfig {
    /// The user and password to log in with, if any: the password from `password` or from
    /// `password_file` (without its trailing newline). Setting both, or only one of user and
    /// password, is a configuration error.
    fn credentials(&self) -> Result<Option<(String, String)>, RuntimeError> {
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(RuntimeError::InvalidEtcdSettings(
                    "ETCD_PASSWORD and ETCD_PASSWORD_FILE are both set; set one".into(),
                ))
            }
            (Some(password), None) => Some(password.clone()),
            (None, Some(path)) => {
                let text = String::from_utf8(read("ETCD_PASSWORD_FILE", path)?).map_err(|_| {
                    RuntimeError::InvalidEtcdSettings(format!(
                        "ETCD_PASSWORD_FILE {} is not UTF-8 text",
                        path.display()
                    ))
                })?;
                let password = text.strip_suffix('\n').unwrap_or(&text);
                Some(password.strip_suffix('\r').unwrap_or(password).to_string())
            }
            (None, None) => None,
        };
        match (&self.username, password) {
            (Some(user), Some(password)) => Ok(Some((user.clone(), password))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(RuntimeError::InvalidEtcdSettings(
                "ETCD_USERNAME is set without ETCD_PASSWORD or ETCD_PASSWORD_FILE".into(),
            )),
            (None, Some(_)) => Err(RuntimeError::InvalidEtcdSettings(
                "an etcd password is set without ETCD_USERNAME".into(),
            )),
        }
    }

    fn connect_options(&self) -> Result<ConnectOptions, RuntimeError> {
        let mut options = ConnectOptions::new()
            .with_timeout(self.timeout)
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = self.credentials()? {
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read("ETCD_CERT_FILE", cert)?,
                read("ETCD_KEY_FILE", key)?,
            )),
            (None, None) => None,
            (Some(_), None) => return Err(RuntimeError::InvalidEtcdSettings(
                "ETCD_CERT_FILE is set without ETCD_KEY_FILE (a client certificate needs its key)"
                    .into(),
            )),
            (None, Some(_)) => return Err(RuntimeError::InvalidEtcdSettings(
                "ETCD_KEY_FILE is set without ETCD_CERT_FILE (a client key needs its certificate)"
                    .into(),
            )),
        };
        if self.ca_file.is_some() || identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read("ETCD_CA_FILE", ca)?));
            }
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    /// Checks the settings that need no etcd (credentials, password file, TLS files and their
    /// pairing), so that a function can refuse a bad configuration before it serves anything.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        self.connect_options().map(drop)
    }

    /// Connects to etcd (logging in when credentials are set), retrying with backoff until it
    /// answers (logging each failure), so that a function started before etcd waits instead of
    /// crashing. Fails only on a configuration error: unreadable files, a password set twice, a
    /// user without password, a client certificate without its key (or the reverse), or endpoints
    /// the client refuses (a malformed URL, TLS files with an `http://` endpoint).
    pub async fn connect(&self) -> Result<Client, RuntimeError> {
        let options = self.connect_options()?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match Client::connect(&self.endpoints, Some(options.clone())).await {
                Ok(client) => {
                    tracing::info!(endpoints = ?self.endpoints, "connected to etcd");
                    return Ok(client);
                }
                Err(
                    e @ (etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)),
                ) => return Err(RuntimeError::InvalidEtcdSettings(e.to_string())),
                Err(e) => {
                    tracing::warn!(endpoints = ?self.endpoints, error = %e, "etcd unreachable; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::ReadFile {
        variable,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use test_support::{unique_prefix, EtcdHarness, EtcdUser};

    use super::*;

    async fn config_error(config: EtcdConfig) -> String {
        match config.connect().await {
            Ok(_) => panic!("connected with {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn an_unreadable_certificate_is_a_configuration_error() {
        let error = config_error(EtcdConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EtcdConfig::default()
        })
        .await;
        assert!(
            error.starts_with("read ETCD_CA_FILE /nonexistent/ca.pem: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn half_a_client_identity_is_a_configuration_error() {
        let pem = tempfile::NamedTempFile::new().unwrap();
        let error = config_error(EtcdConfig {
            cert_file: Some(pem.path().into()),
            ..EtcdConfig::default()
        })
        .await;
        assert_eq!(
            error,
            "invalid etcd settings: ETCD_CERT_FILE is set without ETCD_KEY_FILE (a client certificate needs its key)"
        );
        let error = config_error(EtcdConfig {
            key_file: Some(pem.path().into()),
            ..EtcdConfig::default()
        })
        .await;
        assert_eq!(
            error,
            "invalid etcd settings: ETCD_KEY_FILE is set without ETCD_CERT_FILE (a client key needs its certificate)"
        );
    }

    #[tokio::test]
    async fn passwords_come_from_one_place_and_with_a_user() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let both = config_error(EtcdConfig {
            username: Some("u".into()),
            password: Some("p".into()),
            password_file: Some(file.path().into()),
            ..EtcdConfig::default()
        })
        .await;
        assert_eq!(
            both,
            "invalid etcd settings: ETCD_PASSWORD and ETCD_PASSWORD_FILE are both set; set one"
        );
        let unreadable = config_error(EtcdConfig {
            username: Some("u".into()),
            password_file: Some("/nonexistent/password".into()),
            ..EtcdConfig::default()
        })
        .await;
        assert!(
            unreadable.starts_with("read ETCD_PASSWORD_FILE /nonexistent/password: "),
            "{unreadable}"
        );
        let no_password = config_error(EtcdConfig {
            username: Some("u".into()),
            ..EtcdConfig::default()
        })
        .await;
        assert_eq!(
            no_password,
            "invalid etcd settings: ETCD_USERNAME is set without ETCD_PASSWORD or ETCD_PASSWORD_FILE"
        );
        let no_user = config_error(EtcdConfig {
            password: Some("p".into()),
            ..EtcdConfig::default()
        })
        .await;
        assert_eq!(
            no_user,
            "invalid etcd settings: an etcd password is set without ETCD_USERNAME"
        );
    }

    #[tokio::test]
    async fn endpoints_the_client_refuses_are_a_configuration_error() {
        let error = config_error(EtcdConfig {
            endpoints: vec!["http://127.0.0.1:1 bad".into()],
            ..EtcdConfig::default()
        })
        .await;
        assert!(error.starts_with("invalid etcd settings: "), "{error}");
    }

    #[tokio::test]
    async fn connecting_to_a_real_etcd_answers_reads() {
        let etcd = EtcdHarness::start().await;
        let config = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            ..EtcdConfig::default()
        };
        let key = format!("{}/connect-test", unique_prefix("connect"));
        let mut client = config.connect().await.unwrap();
        client.put(key.as_str(), "1", None).await.unwrap();
        let value = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(value.kvs()[0].value(), b"1");
    }

    /// The settings of `user` on `etcd`, with the password in a file (trailing newline and all,
    /// as `echo` or a Kubernetes Secret writes it).
    fn config_for(etcd: &EtcdHarness, user: &EtcdUser) -> (EtcdConfig, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{}", user.password).unwrap();
        let config = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            username: Some(user.name.clone()),
            password_file: Some(file.path().into()),
            timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        };
        (config, file)
    }

    #[tokio::test]
    async fn a_client_logs_in_again_when_a_restarted_etcd_rejects_its_token() {
        let prefix = unique_prefix("relogin");
        let (mut etcd, user) = EtcdHarness::start_with_auth(&prefix, &[]).await;
        let (config, _password) = config_for(&etcd, &user);
        let key = format!("{prefix}/k");
        let mut client = config.connect().await.unwrap();
        client.put(key.as_str(), "before", None).await.unwrap();
        // The same user without re-login, to show the restart does reject the old token.
        let mut plain =
            etcd_client::Client::connect([etcd.endpoint()], Some(user.connect_options()))
                .await
                .unwrap();
        plain.get(key.as_str(), None).await.unwrap();

        // A restart forgets every token the member handed out.
        etcd.restart().await;
        let rejected = plain.get(key.as_str(), None).await.unwrap_err();
        assert!(
            rejected.to_string().contains("invalid auth token"),
            "{rejected}"
        );
        client.put(key.as_str(), "after", None).await.unwrap();
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"after");

        // Transactions (what the queue and the store send) too, from a clone of the client.
        let mut clone = client.clone();
        etcd.restart().await;
        let put = etcd_client::TxnOp::put(key.as_str(), "txn", None);
        let txn = etcd_client::Txn::new().and_then([put]);
        assert!(clone.txn(txn).await.unwrap().succeeded());
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"txn");
    }

    #[tokio::test]
    async fn a_client_logs_in_again_when_its_token_expires() {
        let prefix = unique_prefix("expiry");
        let (etcd, user) = EtcdHarness::start_with_auth(&prefix, &["--auth-token-ttl=1"]).await;
        let (config, _password) = config_for(&etcd, &user);
        let key = format!("{prefix}/k");
        let mut client = config.connect().await.unwrap();
        client.put(key.as_str(), "v", None).await.unwrap();
        let mut plain =
            etcd_client::Client::connect([etcd.endpoint()], Some(user.connect_options()))
                .await
                .unwrap();
        plain.get(key.as_str(), None).await.unwrap();
        // A simple token expires after `--auth-token-ttl` without use, checked every second, and
        // every use renews it: what expires it is time without use, so the test lets time pass.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rejected = plain.get(key.as_str(), None).await.unwrap_err();
        assert!(
            rejected.to_string().contains("invalid auth token"),
            "{rejected}"
        );
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v");
    }
}
