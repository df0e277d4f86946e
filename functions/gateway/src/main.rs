//! `gateway`: parses the command line, starts tracing, binds the HTTP port and runs the library
//! until SIGTERM or SIGINT; `gateway openapi` prints the OpenAPI document.

mod cli;

use clap::Parser;
use cli::Command;
use function_runtime::{bind_http, init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Run(args) => {
            init_tracing(args.serve.log.log_format);
            let listener = bind_http(args.serve.port)?;
            gateway::run(args.into_config(), listener, shutdown_signal()).await?;
        }
        Command::Openapi => print!("{}", gateway::openapi_json()),
        Command::Seed(args) => {
            init_tracing(args.log.log_format);
            let report = gateway::seed::run(&args.into_config()).await?;
            println!(
                "seeded {} samples ({} passes of {} rows, {} rows skipped)",
                report.samples, report.passes, report.rows_per_pass, report.rows_skipped
            );
        }
        #[cfg(feature = "lambda")]
        Command::Lambda(args) => {
            init_tracing(args.serve.log.log_format);
            gateway::run_lambda(args.into_config()).await?;
        }
    }
    Ok(())
}
