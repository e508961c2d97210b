//! `medledger`: parse arguments, set up logging, run one command, map errors to an
//! exit code. Everything else lives in the library.

use clap::Parser;

// glibc's malloc was ~10 % of the node's CPU on the audited read path (arena
// consolidation across tokio workers); jemalloc measured best of glibc, mimalloc and
// jemalloc on both the read and the ledger benchmarks (README, "Measured").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = medledger::Cli::parse();
    let default_filter = cli.default_log_filter();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDLEDGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match medledger::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
