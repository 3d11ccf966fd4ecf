//! The `electric` command-line tool.
#![forbid(unsafe_code)]

mod demo;

/// Documents are serialized to JSON trees to diff and patch them, which is allocation-heavy;
/// mimalloc makes `update` markedly faster than glibc's allocator (see BENCHMARKS.md; the library leaves the
/// choice of allocator to the application).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Electric: versioned JSON documents shared live between services.
#[derive(Parser)]
#[command(name = "electric", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run replicas that share order-book documents, update them concurrently, and check that
    /// every replica converges (embedded store by default; no server needed).
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
