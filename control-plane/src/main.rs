//! `ferry-control-plane`: see `ferry-control-plane --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ferry_control_plane::install_crypto_provider();
    ferry_control_plane::init_logging();
    let cli = ferry_control_plane::cli::Cli::parse();
    match ferry_control_plane::cli::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-control-plane: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
