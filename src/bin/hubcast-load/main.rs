//! hubcast-load: a load generator for hubcast and the servers it is compared with.
//!
//! It runs bounded scenarios against a server on loopback and prints one JSON object and a
//! table: delivered messages per second, publish-to-deliver latency, connections per second,
//! the server's memory and CPU from /proc, and losses. A fan-out run against hubcast exits
//! with status 1 when any subscriber lost, repeated or reordered an event.
//!
//! ```text
//! hubcast-load fanout --target hubcast-ws --server 127.0.0.1:8080 --subscribers 10000
//! hubcast-load telemetry --server 127.0.0.1:4433 --publishers 1000 --subscribers 100
//! hubcast-load idle --target hubcast-wt --server 127.0.0.1:4433 --connections 20000
//! hubcast-load storm --target hubcast-sse --server 127.0.0.1:8080 --duration 10
//! hubcast-load report target/bench docs/benchmarks.md
//! ```

mod probe;
mod procfs;
mod report;
mod scenarios;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use targets::Target;

#[derive(Debug, Parser)]
#[command(about = "Load generator for hubcast and comparable servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One publisher, many subscribers of one topic: throughput at the maximum rate the
    /// subscribers keep up with, then latency at a paced rate.
    Fanout(scenarios::fanout::Args),
    /// WebTransport sessions that publish telemetry datagrams to subscriber sessions.
    Telemetry(scenarios::telemetry::Args),
    /// Opens idle connections that each hold one subscription and measures server memory
    /// per connection.
    Idle(scenarios::idle::Args),
    /// Opens, subscribes and closes connections as fast as the server accepts them.
    Storm(scenarios::storm::Args),
    /// Renders the JSON results in a directory as Markdown into a file, between the
    /// generated-section markers.
    Report(report::Args),
}

/// Options every scenario against a server shares.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Address subscribers connect to: hubcast's TCP address for hubcast-ws and hubcast-sse,
    /// its QUIC address for hubcast-h3sse and hubcast-wt, a peer's subscriber port otherwise.
    #[arg(long, value_name = "HOST:PORT")]
    server: SocketAddr,

    /// Address the publisher connects to, when not `--server`: hubcast's TCP address for the
    /// QUIC targets, nats-server's client port, Pushpin's HTTP control port.
    #[arg(long, value_name = "HOST:PORT")]
    publish: Option<SocketAddr>,

    /// Process id of the server, to sample its memory and CPU from /proc.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,

    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Label stored in the result, such as the name of the peer.
    #[arg(long)]
    label: Option<String>,
}

impl Common {
    fn publish_addr(&self, target: Target) -> anyhow::Result<SocketAddr> {
        match (self.publish, target.uses_quic()) {
            (Some(addr), _) => Ok(addr),
            (None, false) => Ok(self.server),
            (None, true) => anyhow::bail!(
                "missing --publish: {} subscribes over QUIC at --server, so give hubcast's \
                 TCP address for the publisher",
                target.name()
            ),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Fanout(args) => scenarios::fanout::run(args).await,
            Command::Telemetry(args) => scenarios::telemetry::run(args).await,
            Command::Idle(args) => scenarios::idle::run(args).await,
            Command::Storm(args) => scenarios::storm::run(args).await,
            Command::Report(args) => report::run(args).map(|()| true),
        }
    });
    // Connections still closing must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Raises the soft limit on open files to the hard limit, since every connection of a run
/// takes a file descriptor.
fn raise_open_file_limit() {
    #[repr(C)]
    struct Rlimit {
        current: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: std::os::raw::c_int, limit: *mut Rlimit) -> std::os::raw::c_int;
        fn setrlimit(resource: std::os::raw::c_int, limit: *const Rlimit) -> std::os::raw::c_int;
    }
    /// `RLIMIT_NOFILE` on Linux.
    const RLIMIT_NOFILE: std::os::raw::c_int = 7;
    let mut limit = Rlimit { current: 0, max: 0 };
    // SAFETY: both calls only read or write the struct passed to them, whose layout is
    // glibc's `struct rlimit` on 64-bit Linux.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut limit) == 0 && limit.current < limit.max {
            limit.current = limit.max;
            setrlimit(RLIMIT_NOFILE, &limit);
        }
    }
}

/// Reads the soft limit on open files of this process from /proc.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
