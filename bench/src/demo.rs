//! `ferry-bench demo`: the README's first command. Starts a control plane,
//! three ferry-proxy workers and a sidecar (mutual TLS between them) in front
//! of an emulated remote object store holding a synthetic ImageNet-like data
//! set, reads shuffled epochs four ways, and prints the comparison.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use ferry_config::ByteSize;

use crate::epochs::{self, EpochsArgs, Mode};

/// `ferry-bench demo` arguments.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Samples in the demo data set.
    #[arg(long, default_value_t = 16_000)]
    pub samples: u64,
    /// Epochs per mode.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After the table, keep ferry-proxy running (metrics browsable) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    println!(
        "Ferry demo: {} ImageNet-sized samples (~110 KB) on an origin 10 ms away; \
         32 readers, {} shuffled epochs per mode.",
        args.samples, args.epochs
    );
    println!("  synthetic: no I/O at all (upper bound)");
    println!(
        "  bare:      a minimal HTTP server answering from memory (this machine's HTTP ceiling)"
    );
    println!("  direct:    reading the origin with no cache");
    println!(
        "  pool-mtls: the app reads a ferry-proxy sidecar (cache: a quarter of the data set), which\n             \
         sends each miss to the one of 3 ferry-proxy workers that owns the chunk, over mutual\n             \
         TLS with SPIFFE certificates from a ferry control plane\n"
    );
    let report = epochs::run(&EpochsArgs {
        samples: args.samples,
        size: ByteSize::kib(110),
        shards: false,
        shard_count: 0,
        shard_size: ByteSize::mib(64),
        range_size: ByteSize::mib(4),
        readers: 32,
        epochs: args.epochs,
        seed: 1,
        origin_latency: Duration::from_millis(10),
        modes: vec![Mode::Synthetic, Mode::Bare, Mode::Direct, Mode::PoolMtls],
        access: epochs::Access::S3,
        classes: None,
        tmpfs_dir: None,
        drop_pages: false,
        mount_threads: None,
        cache_policy: ferry_config::CachePolicy::Pin,
        cache_size: None,
        workers: 3,
        sidecar_fraction: 0.25,
        sidecar_flags: None,
        cert_lifetime: Duration::from_secs(24 * 3600),
        proxy: Default::default(),
        json: args.json.clone(),
        keep_running: args.keep_running,
    })
    .await?;
    let errors: usize = report
        .runs
        .iter()
        .flat_map(|r| &r.epochs)
        .map(|e| e.errors)
        .sum();
    println!(
        "\nEpoch 1 fills the workers' caches from the origin; later epochs read it only for \
         hedged or spilled chunks (origin MB)\n(hit ratio: the sidecar's; pool hit: the workers'; \
         max/mean: load spread over workers)."
    );
    println!("To browse the proxy's metrics, add --keep-running, or run one yourself:");
    println!(
        "  cargo run --release -p ferry-proxy -- worker --origin 'synthetic://?count=1000' --bucket imagenet"
    );
    println!(
        "  curl -o sample.jpg localhost:4140/imagenet/00000001.jpg; curl localhost:4191/metrics"
    );
    anyhow::ensure!(errors == 0, "{errors} reads failed");
    Ok(())
}
