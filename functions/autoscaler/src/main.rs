//! `autoscaler`: parses the command line, starts tracing, binds the HTTP port and runs the
//! library's control loop until SIGTERM or SIGINT.

mod cli;

use clap::Parser;
use cli::Command;
use function_runtime::{bind_http, init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Command::parse();
    init_tracing(args.serve.log.log_format);
    let listener = bind_http(args.serve.port)?;
    autoscaler::run(args.into_config(), listener, shutdown_signal()).await?;
    Ok(())
}
