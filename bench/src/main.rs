//! `ferry-bench`: the training-read workload against real processes, the
//! scenarios that measure Ferry, and the one-command local demo.

mod chaos;
mod child;
mod client;
mod crypto;
mod demo;
mod epochs;
mod inject;
mod listing;
mod mtls;
mod overload;
mod plane;
mod policies;
mod report;
mod serve;
mod soak;
mod telemetry;
mod topology;
mod train;
mod tree;
mod workload;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: ferry_proxy::runtime::Allocator = ferry_proxy::runtime::Allocator;

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
    /// The sidecar and worker pool against synthetic and direct reads.
    Pool(PoolArgs),
    /// A worker killed mid-epoch and restarted: failed reads, wrong bytes, recovery.
    Chaos(chaos::ChaosArgs),
    /// A bucket of many objects listed page by page through a worker against the origin.
    List(listing::ListArgs),
    /// The control plane, built into this binary like the proxy.
    #[command(hide = true, disable_help_flag = true)]
    RunControlPlane {
        /// ferry-control-plane's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The sidecar → worker hop with mutual TLS against plaintext, and certificate renewal under load.
    Mtls(mtls::MtlsArgs),
    /// A policy change reaching 1,000 and 5,000 watchers; reads while the control plane is down.
    ControlPlane(plane::ControlPlaneArgs),
    /// What tracing (sampled at 0.01 and 1.0) and 10 scrapes/s cost cached reads.
    Telemetry(telemetry::TelemetryArgs),
    /// The injection webhook's latency: directly, and through a real kube-apiserver.
    Inject(inject::InjectArgs),
    /// rustls crypto providers and cipher suites, in memory: bulk transfer and handshakes.
    Crypto(crypto::CryptoArgs),
    /// Admission control: a worker at and past its capacity; a sidecar's memory under and after a burst.
    Overload(overload::OverloadArgs),
    /// A long run with restarts, policy changes and renewals; RSS, descriptors and tasks sampled for slopes.
    Soak(soak::SoakArgs),
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
    // Proxies and control planes started from this binary speak TLS.
    ferry_control_plane::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::RunControlPlane { args } => {
            ferry_control_plane::init_logging();
            let parsed = <ferry_control_plane::cli::Cli as Parser>::parse_from(
                std::iter::once("ferry-control-plane".to_owned()).chain(args),
            );
            ferry_control_plane::cli::main_with(parsed)
        }
        Command::Proxy { args } => {
            let parsed = <ferry_proxy::cli::Cli as Parser>::parse_from(
                std::iter::once("ferry-proxy".to_owned()).chain(args),
            );
            ferry_proxy::cli::main_with(parsed)
        }
        Command::Serve(args) => serve::run(args),
        Command::Crypto(args) => crypto::run(&args).map(drop),
        command => client_runtime(cli.client_threads).and_then(|runtime| {
            runtime.block_on(async move {
                match command {
                    Command::Demo(args) => demo::run(&args).await,
                    Command::Epochs(args) => epochs::run(&args).await.map(drop),
                    Command::Train(args) => train::run(&args).await.map(drop),
                    Command::Policies(args) => policies::run(&args).await.map(drop),
                    Command::Pool(args) => epochs::run(&args.into_epochs()).await.map(drop),
                    Command::ControlPlane(args) => plane::run(&args).await.and_then(|report| {
                        let failures = report.failures();
                        anyhow::ensure!(failures == 0, "{failures} failed reads or missed changes");
                        Ok(())
                    }),
                    Command::Telemetry(args) => telemetry::run(&args).await.and_then(|report| {
                        let failures = report.failures();
                        anyhow::ensure!(failures == 0, "{failures} reads failed");
                        Ok(())
                    }),
                    Command::Mtls(args) => mtls::run(&args).await.and_then(|report| {
                        let failures = report.failures();
                        anyhow::ensure!(failures == 0, "{failures} reads failed or were wrong");
                        Ok(())
                    }),
                    Command::Inject(args) => inject::run(&args).await.map(drop),
                    Command::List(args) => listing::run(&args).await.and_then(|report| {
                        let failures = report.failures();
                        anyhow::ensure!(failures == 0, "{failures} listings failed or missed keys");
                        Ok(())
                    }),
                    Command::Soak(args) => soak::run(&args).await.and_then(|report| {
                        let failures = report.failed_reads + report.wrong_bytes;
                        anyhow::ensure!(failures == 0, "{failures} reads failed or were wrong");
                        Ok(())
                    }),
                    Command::Overload(args) => overload::run(&args).await.and_then(|report| {
                        let failures = report.failures();
                        anyhow::ensure!(failures == 0, "{failures} reads failed or were wrong");
                        Ok(())
                    }),
                    Command::Chaos(args) => chaos::run(&args).await.and_then(|report| {
                        anyhow::ensure!(
                            report.failed_reads == 0 && report.wrong_bytes == 0,
                            "{} failed reads, {} wrong bytes",
                            report.failed_reads,
                            report.wrong_bytes
                        );
                        Ok(())
                    }),
                    Command::Serve(_)
                    | Command::Crypto(_)
                    | Command::Proxy { .. }
                    | Command::RunControlPlane { .. } => Ok(()),
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

/// `ferry-bench pool` arguments: the epochs comparison with the pool topology.
#[derive(clap::Args, Debug)]
struct PoolArgs {
    /// Samples in the data set.
    #[arg(long, default_value_t = 20_000)]
    samples: u64,
    /// Epochs.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// The sidecar's cache as a fraction of the data set.
    #[arg(long, default_value_t = 0.25)]
    sidecar_fraction: f64,
    /// Extra sidecar flags, e.g. "--hedge off".
    #[arg(long, allow_hyphen_values = true)]
    sidecar_flags: Option<String>,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    proxy: child::ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

impl PoolArgs {
    fn into_epochs(self) -> epochs::EpochsArgs {
        epochs::EpochsArgs {
            samples: self.samples,
            size: ferry_config::ByteSize::kib(110),
            shards: false,
            shard_count: 0,
            shard_size: ferry_config::ByteSize::mib(64),
            range_size: ferry_config::ByteSize::mib(4),
            readers: 32,
            epochs: self.epochs,
            access: epochs::Access::S3,
            classes: None,
            tmpfs_dir: None,
            drop_pages: false,
            mount_threads: None,
            seed: 1,
            origin_latency: std::time::Duration::from_millis(10),
            modes: vec![
                epochs::Mode::Synthetic,
                epochs::Mode::Direct,
                epochs::Mode::Pool,
            ],
            cache_policy: ferry_config::CachePolicy::Pin,
            cache_size: None,
            workers: self.workers,
            sidecar_fraction: self.sidecar_fraction,
            sidecar_flags: self.sidecar_flags,
            cert_lifetime: std::time::Duration::from_secs(24 * 3600),
            proxy: self.proxy,
            json: self.json,
            keep_running: false,
        }
    }
}

fn client_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}
