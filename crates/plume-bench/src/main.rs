//! The `plume-bench` binary: parse the command line and run it (see the library docs).

use std::process::ExitCode;

use clap::Parser;
use plume_bench::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match plume_bench::app::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plume-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
