//! `millgate run | check | triggers | jobs | state`: the service's command line (src/cli/, one
//! file per subcommand; `triggers`, `jobs` and `state` are clients of the admin API, see
//! docs/cli.md).

mod cli;
mod store_lock;

use std::process::ExitCode;

use clap::Parser;
use millgate_actors::preprocess::jq_worker;

// glibc malloc was a quarter of all samples under load; jemalloc beat it and mimalloc in CPU
// per job and peak memory (BENCHMARKS.md, allocators).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // millgate starts copies of itself to run jq filters in (never a user's command).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(jq_worker::WORKER_ARG) {
        let code = jq_worker::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    cli::main(cli::Cli::parse())
}
