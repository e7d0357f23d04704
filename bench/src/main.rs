//! `ferry-bench`: the training-read workload against real processes, the
//! scenarios that measure Ferry, and the one-command local demo.

mod child;
mod client;
mod demo;
mod epochs;
mod policies;
mod report;
mod serve;
mod train;
mod workload;

use clap::{Parser, Subcommand};

/// Ferry's benchmark and demo.
#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench",
    version,
    about = "Measure Ferry against no-I/O, bare-HTTP and direct-origin baselines"
)]
struct Cli {
    /// Threads of the reading side (the proxy and servers size themselves).
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The local demo: ferry-proxy over a synthetic origin, a short epochs comparison.
    Demo(demo::DemoArgs),
    /// Shuffled epochs read as synthetic, bare, direct and ferry in one run.
    Epochs(epochs::EpochsArgs),
    /// A GPU-bound training job fed through Ferry against the same job on synthetic data.
    Train(train::TrainArgs),
    /// Cache policies at several cache sizes under shuffled epochs, with a plot.
    Policies(policies::PoliciesArgs),
    /// A baseline server (used by the scenarios).
    #[command(hide = true)]
    Serve(serve::ServeArgs),
    /// ferry-proxy itself, built into this binary so a run never uses a stale proxy.
    #[command(hide = true, disable_help_flag = true)]
    Proxy {
        /// ferry-proxy's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy { args } => {
            ferry_proxy::cli::init_logging();
            let parsed = <ferry_proxy::cli::Cli as Parser>::parse_from(
                std::iter::once("ferry-proxy".to_owned()).chain(args),
            );
            ferry_proxy::cli::main_with(parsed)
        }
        Command::Serve(args) => serve::run(args),
        command => client_runtime(cli.client_threads).and_then(|runtime| {
            runtime.block_on(async move {
                match command {
                    Command::Demo(args) => demo::run(&args).await,
                    Command::Epochs(args) => epochs::run(&args).await.map(drop),
                    Command::Train(args) => train::run(&args).await.map(drop),
                    Command::Policies(args) => policies::run(&args).await.map(drop),
                    Command::Serve(_) | Command::Proxy { .. } => Ok(()),
                }
            })
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn client_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}
