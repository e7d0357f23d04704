//! `ferryctl`: see `ferryctl --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ferry_control_plane::ctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ferryctl: cannot start: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(ferry_control_plane::ctl::run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("ferryctl: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
