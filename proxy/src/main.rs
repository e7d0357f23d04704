//! `ferry-proxy`: see `ferry-proxy --help`.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: ferry_proxy::runtime::Allocator = ferry_proxy::runtime::Allocator;

fn main() -> std::process::ExitCode {
    // One crypto provider for every TLS user in the process (see DEPENDENCIES.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut cli = ferry_proxy::cli::Cli::parse();
    if let Some(ferry_proxy::cli::RoleCommand::Await(args)) = cli
        .role
        .take_if(|role| matches!(role, ferry_proxy::cli::RoleCommand::Await(_)))
    {
        return ferry_proxy::readiness::run(args).unwrap_or_else(|err| {
            eprintln!("ferry-proxy await: {err:#}");
            std::process::ExitCode::FAILURE
        });
    }
    match ferry_proxy::cli::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferry-proxy: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
