//! `streamer`: parses the configuration, starts tracing and runs the library.

use std::process::ExitCode;

use clap::Parser;
use function_runtime::{init_tracing, LogFormat};
use streamer::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => {
            init_tracing(LogFormat::Text);
            let code = streamer::validate::run_validate(
                &args,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            Ok(ExitCode::from(code))
        }
        Command::Run(args) => {
            init_tracing(args.common.log_format);
            streamer::run(*args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
