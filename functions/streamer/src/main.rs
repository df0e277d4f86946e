//! `streamer`: parses the command line, starts tracing, binds the HTTP port and runs the library
//! until SIGTERM or SIGINT (or until its passes or window end); `streamer validate` checks a CSV.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::Command;
use function_runtime::{bind_http, init_tracing, shutdown_signal, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Command::parse() {
        Command::Validate(args) => {
            init_tracing(LogFormat::Text);
            let code = streamer::validate::run_validate(
                &args.into_config(),
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            Ok(ExitCode::from(code))
        }
        Command::Run(args) => {
            init_tracing(args.serve.log.log_format);
            let listener = bind_http(args.serve.port)?;
            streamer::run(args.into_config(), listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
