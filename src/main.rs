use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use hubcast::config::{Args, Cli, Command};
use hubcast::server::Server;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Sub(args)) => {
            init_client_logging();
            hubcast::client::cli::sub(args).await
        }
        Some(Command::Pub(args)) => {
            init_client_logging();
            hubcast::client::cli::publish(args).await
        }
    }
}

async fn serve(args: Args) -> ExitCode {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = args.into_config();
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "failed to start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    server.shutdown(Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

/// Logs of `hubcast sub` and `hubcast pub` go to standard error, so standard output carries
/// only deliveries and cursors.
fn init_client_logging() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
