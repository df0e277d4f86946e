//! The gateway's configuration: the common etcd/prefix/port options, the queue settings (to read
//! the queue status) and the HTTP server's limits. Every option is a flag and an environment
//! variable; tests build the struct directly.

use std::time::Duration;

use function_runtime::{parse_duration, CommonArgs, QueueArgs};

/// The port the gateway listens on when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 8080;

/// Everything `gateway run` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    /// Longest time one API request may take before it is answered with 503.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest time one etcd read may take before the request is answered with 503.
    #[arg(long = "gateway-etcd-timeout", env = "GATEWAY_ETCD_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub etcd_read_timeout: Duration,

    /// Origins allowed by CORS, comma separated (`*` for any); empty turns CORS off.
    #[arg(
        long,
        env = "GATEWAY_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_origins: Vec<String>,

    /// Retention bucket of the store; must match the collector's STORE_BUCKET (reads look one
    /// bucket back for chunks overlapping a window).
    #[arg(long, env = "STORE_BUCKET", default_value = "1h", value_parser = parse_duration)]
    pub store_bucket: Duration,

    /// Largest request body accepted, in bytes (suffixes KiB and MiB allowed).
    #[arg(long, env = "GATEWAY_BODY_LIMIT", default_value = "64KiB", value_parser = parse_byte_size)]
    pub body_limit: usize,
}

impl GatewayArgs {
    /// Defaults for tests and embedding: one local etcd, the given prefix, an ephemeral port.
    pub fn local(endpoint: &str, prefix: &str) -> Self {
        GatewayArgs {
            common: CommonArgs::local(endpoint, prefix),
            queue: QueueArgs::default(),
            request_timeout: Duration::from_secs(10),
            etcd_read_timeout: Duration::from_secs(2),
            cors_origins: Vec::new(),
            store_bucket: Duration::from_secs(3600),
            body_limit: 64 * 1024,
        }
    }

    /// The port to listen on: `PORT`, or 8080.
    pub fn port(&self) -> u16 {
        self.common.port.unwrap_or(DEFAULT_PORT)
    }

    /// The HTTP server's limits.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            request_timeout: self.request_timeout,
            body_limit: self.body_limit,
            cors_origins: self
                .cors_origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }
}

/// Limits and policies of the HTTP layer, independent of etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub request_timeout: Duration,
    pub body_limit: usize,
    /// Empty: no CORS headers at all (browsers then refuse cross-origin reads).
    pub cors_origins: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            request_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            cors_origins: Vec::new(),
        }
    }
}

/// Parses `65536`, `64KiB`, `1MiB` (also `KB`/`MB`/`K`/`M`, all powers of 1024).
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?} (examples: 65536, 64KiB, 1MiB)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use KiB or MiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_byte_size(" 2 k "), Ok(2048));
        assert!(parse_byte_size("").is_err());
        assert!(parse_byte_size("KiB").is_err());
        assert!(parse_byte_size("1GiB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_byte_size("99999999999999999999M").is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    #[test]
    fn the_flags_are_consistent_and_parse() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "gateway",
            "--request-timeout",
            "3s",
            "--gateway-etcd-timeout",
            "250ms",
            "--cors-origins",
            "https://a.example,https://b.example",
            "--body-limit",
            "1MiB",
        ])
        .unwrap();
        assert_eq!(cli.args.request_timeout, Duration::from_secs(3));
        assert_eq!(cli.args.etcd_read_timeout, Duration::from_millis(250));
        assert_eq!(cli.args.body_limit, 1024 * 1024);
        assert_eq!(
            cli.args.http_settings().cors_origins,
            vec![
                "https://a.example".to_string(),
                "https://b.example".to_string()
            ]
        );
    }

    #[test]
    fn cors_origins_drop_blanks_and_the_port_defaults_to_8080() {
        let mut args = GatewayArgs::local("http://127.0.0.1:2379", "/p");
        args.cors_origins = vec!["".into(), " https://a.example ".into()];
        assert_eq!(
            args.http_settings().cors_origins,
            vec!["https://a.example".to_string()]
        );
        args.common.port = None;
        assert_eq!(args.port(), 8080);
    }
}
