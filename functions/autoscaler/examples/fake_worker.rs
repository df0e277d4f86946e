//! A stand-in worker for the autoscaler's tests and for trying the autoscaler without a collector:
//! it listens on `$PORT` (so two workers given the same port would clash), waits for SIGTERM and
//! exits 0, like a collector that drained.
//!
//! `fake_worker [--tag TEXT] [--drained-file PATH] [--ignore-term]`: the tag only marks the
//! process's command line; on SIGTERM the pid is appended to the drained file; with
//! `--ignore-term` SIGTERM is ignored, so only SIGKILL ends it.

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut drained_file = None;
    let mut ignore_term = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tag" => {
                args.next();
            }
            "--drained-file" => drained_file = args.next(),
            "--ignore-term" => ignore_term = true,
            other => {
                eprintln!("fake_worker: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // The handler first: once the port accepts connections, SIGTERM is handled.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    loop {
        terminate.recv().await;
        if !ignore_term {
            break;
        }
    }
    if let Some(path) = drained_file {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        // One write: workers draining together append to the same file.
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    }
    Ok(())
}
