//! `ferry-proxy`: see `ferry-proxy --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ferry_proxy::cli::init_logging();
    let cli = ferry_proxy::cli::Cli::parse();
    match ferry_proxy::cli::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-proxy: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
