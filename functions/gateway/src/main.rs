//! `gateway`: parses the configuration, starts tracing and hands over to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use function_runtime::{init_tracing, parse_duration, CommonArgs, Shutdown};
use gateway::GatewayArgs;
use telemetry_model::TimestampMicros;
use telemetry_store::{StoreConfig, TelemetryStore};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "REST API over the GPU telemetry store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on PORT (default 8080) until SIGTERM.
    Run(GatewayArgs),
    /// Print the OpenAPI document (JSON) on stdout.
    Openapi,
    /// Fill the store from a DCGM CSV, for trying the API without streamer and collector.
    #[command(hide = true)]
    Seed(SeedArgs),
    /// Serve the API under the AWS Lambda runtime.
    #[cfg(feature = "lambda")]
    Lambda(GatewayArgs),
}

#[derive(clap::Args)]
struct SeedArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The CSV to load.
    #[arg(long)]
    csv: PathBuf,
    /// Passes over the file; each pass is one sample per row.
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Time between passes (the last pass is stamped now).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            init_tracing(args.common.log_format);
            gateway::run(args, Shutdown::on_signal()).await
        }
        Command::Openapi => {
            print!("{}", gateway::openapi_json());
            Ok(())
        }
        Command::Seed(args) => {
            init_tracing(args.common.log_format);
            let client = args.common.connect_etcd().await?;
            let store = TelemetryStore::new(
                client,
                StoreConfig {
                    prefix: args.common.prefix.clone(),
                    ..StoreConfig::default()
                },
            );
            let report = gateway::seed::seed_from_csv(
                &store,
                &args.csv,
                args.passes,
                args.interval,
                TimestampMicros::now(),
            )
            .await?;
            println!(
                "seeded {} samples ({} passes of {} rows, {} rows skipped)",
                report.samples, report.passes, report.rows_per_pass, report.rows_skipped
            );
            Ok(())
        }
        #[cfg(feature = "lambda")]
        Command::Lambda(args) => {
            init_tracing(args.common.log_format);
            gateway::run_lambda(args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["gateway", "seed", "--csv", "x.csv", "--passes", "2"]).unwrap();
        let Command::Seed(seed) = cli.command else {
            panic!("expected seed");
        };
        assert_eq!((seed.passes, seed.interval), (2, Duration::from_secs(1)));
    }
}
