//! The `ferry-proxy` command line: flags for the common case, a YAML file for
//! everything, flags overriding the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ferry_config::{
    ByteSize, CachePolicy, DatasetPolicy, MetadataTtl, OriginSpec, ProxyConfig, Role, from_yaml,
    from_yaml_file,
};

use crate::{runtime, server, telemetry};

/// Ferry's data-plane proxy.
#[derive(Parser, Debug)]
#[command(
    name = "ferry-proxy",
    version,
    about = "Ferry's data-plane proxy: S3 front door and chunk cache"
)]
pub struct Cli {
    /// YAML configuration (schema in ferry-config); flags override it.
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Role to run; optional when the configuration file names it.
    #[command(subcommand)]
    pub role: Option<RoleCommand>,
}

/// The roles.
#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Cache worker: serves data sets from their origins.
    Worker(WorkerArgs),
}

/// Flags of the worker role.
#[derive(Args, Debug, Default)]
pub struct WorkerArgs {
    /// Origin of a data set: file:///dir, http(s)://host/prefix, s3://bucket/prefix, synthetic://?count=N.
    #[arg(long, requires = "bucket")]
    pub origin: Option<String>,
    /// Bucket name the app uses for that data set.
    #[arg(long, requires = "origin")]
    pub bucket: Option<String>,
    /// Data set name in metrics (defaults to the bucket).
    #[arg(long)]
    pub dataset: Option<String>,
    /// S3 front door address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin address (metrics, readiness).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Hot cache size per data set, e.g. 1GiB.
    #[arg(long)]
    pub cache_size: Option<ByteSize>,
    /// Hot cache policy: pin, lru or s3fifo.
    #[arg(long)]
    pub cache_policy: Option<CachePolicy>,
    /// Chunk size for a data set given by flags, e.g. 4MiB.
    #[arg(long)]
    pub chunk_size: Option<ByteSize>,
    /// Read-ahead depth in chunks for a data set given by flags.
    #[arg(long)]
    pub read_ahead: Option<u32>,
    /// Metadata TTL for a data set given by flags: `job` or a duration.
    #[arg(long)]
    pub metadata_ttl: Option<MetadataTtl>,
    /// Runtime worker threads (default: the container's CPU quota).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Bound on chunk bytes being fetched upstream at once.
    #[arg(long)]
    pub inflight_memory: Option<ByteSize>,
}

impl Cli {
    /// The configuration these arguments describe.
    pub fn into_config(self) -> anyhow::Result<ProxyConfig> {
        let mut config = match &self.config {
            Some(path) => from_yaml_file::<ProxyConfig>(path)?,
            None => ProxyConfig::default(),
        };
        match self.role {
            Some(RoleCommand::Worker(args)) => {
                config.role = Role::Worker;
                args.apply(&mut config)?;
            }
            None if self.config.is_none() => {
                anyhow::bail!(
                    "give a role (e.g. `ferry-proxy worker --origin URL --bucket NAME`) or --config FILE"
                )
            }
            None => {}
        }
        anyhow::ensure!(
            config.role == Role::Worker,
            "the {} role is not available in this version: run `ferry-proxy worker`",
            config.role.as_str()
        );
        anyhow::ensure!(
            !config.datasets.is_empty(),
            "no data sets to serve: give --origin URL --bucket NAME or list them under `datasets:` in --config"
        );
        Ok(config)
    }
}

impl WorkerArgs {
    fn apply(self, config: &mut ProxyConfig) -> anyhow::Result<()> {
        if let (Some(origin), Some(bucket)) = (&self.origin, &self.bucket) {
            let dataset = self.dataset.as_deref().unwrap_or(bucket);
            // Build the policy through the schema so flags get the same
            // validation (and messages) as a file.
            let yaml = format!(
                "name: {}\nbucket: {}\norigin: {}\n",
                yaml_string(dataset),
                yaml_string(bucket),
                yaml_string(origin)
            );
            let mut policy: DatasetPolicy = from_yaml(&yaml, "command line").map_err(|e| {
                anyhow::anyhow!("{}", e.message).context(format!("invalid flags ({})", e.field))
            })?;
            if let Some(size) = self.chunk_size {
                anyhow::ensure!(
                    (ferry_config::policy::MIN_CHUNK_SIZE..=ferry_config::policy::MAX_CHUNK_SIZE)
                        .contains(&size),
                    "--chunk-size {size} is out of range: allowed {} to {}",
                    ferry_config::policy::MIN_CHUNK_SIZE,
                    ferry_config::policy::MAX_CHUNK_SIZE
                );
                policy.chunk_size = size;
            }
            if let Some(depth) = self.read_ahead {
                anyhow::ensure!(
                    depth <= ferry_config::policy::MAX_READ_AHEAD,
                    "--read-ahead {depth} is too deep: allowed 0 to {}",
                    ferry_config::policy::MAX_READ_AHEAD
                );
                policy.read_ahead = depth;
            }
            if let Some(ttl) = self.metadata_ttl {
                policy.metadata_ttl = ttl;
            }
            config
                .datasets
                .0
                .retain(|d| d.bucket != policy.bucket && d.name != policy.name);
            config.datasets.0.push(policy);
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin {
            config.admin = admin;
        }
        if let Some(threads) = self.threads {
            config.threads = Some(threads);
        }
        if let Some(bytes) = self.inflight_memory {
            config.limits.inflight_memory = bytes;
        }
        for policy in &mut config.datasets.0 {
            if let Some(size) = self.cache_size {
                policy.cache.worker.size = size;
            }
            if let Some(cache_policy) = self.cache_policy {
                policy.cache.worker.policy = cache_policy;
            }
        }
        Ok(())
    }
}

/// Quotes a flag value as a YAML string.
fn yaml_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl std::str::FromStr for RoleCommand {
    type Err = String;
    fn from_str(_: &str) -> Result<Self, String> {
        Err("roles are subcommands".to_owned())
    }
}

/// Runs the proxy described by `cli` until SIGINT, SIGTERM or `/shutdown`.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config()?;
    let threads = runtime::worker_threads(config.threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("ferry-proxy")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let prometheus = telemetry::install_recorder()?;
        let role = config.role;
        let proxy = server::start(config, Some(prometheus)).await?;
        // One machine-readable line on stdout: tests and the bench read the
        // bound addresses from it (ports may have been 0).
        println!(
            "{{\"event\":\"ready\",\"role\":\"{}\",\"listen\":\"{}\",\"admin\":\"{}\",\"threads\":{threads}}}",
            role.as_str(),
            proxy.listen,
            proxy.admin
        );
        let shutdown = proxy.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            shutdown.notify_one();
        });
        proxy.wait().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; use SIGINT or /shutdown");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Checks that an origin URL parses (used by flags' validation messages).
pub fn parse_origin(text: &str) -> Result<OriginSpec, String> {
    text.parse()
}
