//! The `autoscaler` binary: parses its configuration and runs the library's control loop.

use clap::{Parser, Subcommand};
use function_runtime::{init_tracing, Shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "autoscaler",
    version,
    about = "Keeps 0..N collector processes running from the queue's depth key (KEDA-style)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch the depth key and scale the collector processes until SIGTERM or Ctrl-C.
    Run(Box<autoscaler::AutoscalerConfig>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    match command {
        Command::Run(config) => {
            init_tracing(config.common.log_format);
            autoscaler::run(*config, Shutdown::on_signal(), |_| {}).await?;
        }
    }
    Ok(())
}
