//! The `electric` command-line tool.
#![forbid(unsafe_code)]

mod bench;
mod bench_kv;
mod bus_cmds;
mod cdc;
mod demo;
mod redis_cmds;

use clap::{Parser, Subcommand};

/// Documents are serialized to JSON trees to diff and patch them, which is allocation-heavy:
/// glibc malloc/free were about 20 % of the client's CPU in `electric bench`, and mimalloc makes
/// `update` markedly faster (see BENCHMARKS.md). The library leaves the allocator to the
/// application; this is the binary's choice.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Electric: versioned JSON documents shared live between services.
///
/// `electric demo` needs no server; the other commands talk to the servers named by their
/// options. `electric <COMMAND> --help` describes each.
#[derive(Parser)]
#[command(name = "electric", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run replicas that share order-book documents, update them concurrently, and check that
    /// every replica converges (embedded store by default; no server needed).
    Demo(demo::DemoArgs),
    /// Print a document stored in Redis: version, epoch, change time, TTL, fields and change log.
    Inspect(redis_cmds::InspectArgs),
    /// Tail a section's deltas live from Redis, one line each.
    Watch(redis_cmds::WatchArgs),
    /// Increment counters in shared documents through Redis (run several at once to check that
    /// no update is lost across processes).
    Hammer(redis_cmds::HammerArgs),
    /// Measure the Redis store: raw commit script, update, load, delivery latency and rate.
    Bench(bench::BenchArgs),
    /// The message bus (NATS JetStream, Pulsar, in-memory): publish, consume, bench.
    Bus(bus_cmds::BusArgs),
    /// Change data capture: a PostgreSQL or MariaDB table into a section's documents (demo,
    /// bench, and a long-running connector; `cdc demo` runs embedded with no server).
    Cdc(cdc::CdcArgs),
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
            Command::Inspect(args) => redis_cmds::inspect(args).await,
            Command::Watch(args) => redis_cmds::watch(args).await,
            Command::Hammer(args) => redis_cmds::hammer(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Bus(args) => bus_cmds::run(args).await,
            Command::Cdc(args) => cdc::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            // stdout was closed (e.g. piped into `head`): not an error of ours.
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn bench_only_refuses_an_unknown_name_and_lists_the_valid_ones() {
        let err = Cli::try_parse_from(["electric", "bench", "--redis", "x", "--only", "nope"])
            .err()
            .expect("an unknown measurement is refused")
            .to_string();
        for name in [
            "update",
            "update_no_digest",
            "delivery_max_no_digest",
            "load_decode",
        ] {
            assert!(err.contains(name), "{name} missing from\n{err}");
        }
        let ok = Cli::try_parse_from([
            "electric",
            "bench",
            "--redis",
            "x",
            "--only",
            "update,update_no_digest",
        ]);
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn the_top_level_help_describes_the_tool_and_lists_every_command() {
        let mut cli = Cli::command();
        let help = cli.render_help().to_string();
        assert!(
            help.starts_with("Electric: versioned JSON documents"),
            "{help}"
        );
        let names: Vec<String> = cli
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(names.len() >= 5, "{names:?}");
        for name in &names {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(name.as_str())),
                "{name} missing from\n{help}"
            );
        }
    }
}
