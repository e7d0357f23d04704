//! The `ferry-proxy` command line: flags for the common case, a YAML file for
//! everything, flags overriding the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ferry_config::units::parse_duration;
use ferry_config::{
    ByteSize, CachePolicy, DatasetPolicy, DiskCacheSpec, HumanDuration, IdentityMode, MemberSpec,
    MetadataTtl, OriginSpec, PoolDownPolicy, PoolSpec, ProxyConfig, Role, from_yaml_file,
};

use crate::{runtime, server, telemetry};

/// Ferry's data-plane proxy.
#[derive(Parser, Debug)]
#[command(
    name = "ferry-proxy",
    version,
    about = "Ferry's data-plane proxy: S3 front door, chunk cache, worker pool"
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
    /// Cache worker: serves data sets from their origins, to apps and sidecars.
    Worker(WorkerArgs),
    /// Sidecar: serves the app from memory and reads misses from a worker pool.
    Sidecar(SidecarArgs),
    /// Wait until the proxy beside this container is ready, then optionally
    /// run a command (and stop the proxy when it exits).
    Await(crate::readiness::AwaitArgs),
}

/// Flags both roles take.
#[derive(Args, Debug, Default)]
pub struct CommonArgs {
    /// Bucket name the app uses for a data set given by flags.
    #[arg(long)]
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
    /// Hot cache size per data set for this role, e.g. 1GiB.
    #[arg(long)]
    pub cache_size: Option<ByteSize>,
    /// Hot cache policy for this role: pin, lru or s3fifo.
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
    /// Bound on chunk bytes being fetched upstream at once, and again on
    /// response bytes not yet sent (default: an eighth of the memory limit,
    /// at most 512MiB).
    #[arg(long)]
    pub inflight_memory: Option<ByteSize>,
    /// Bound on chunk bytes fetched ahead for posted read orders and not yet
    /// read (`POST /v1/prefetch/{bucket}`; default: as --inflight-memory).
    #[arg(long)]
    pub prefetch_memory: Option<ByteSize>,
    /// Requests served at once per listener (default: 128 per CPU).
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// How long a request waits for a slot or memory before 503 SlowDown, e.g. 1s.
    #[arg(long)]
    pub admission_wait: Option<humantime::Duration>,
    /// How long a connection has to send a complete request head, e.g. 10s.
    #[arg(long)]
    pub header_timeout: Option<humantime::Duration>,
    /// How long a connection may move no byte before it is closed, e.g. 120s.
    #[arg(long)]
    pub idle_timeout: Option<humantime::Duration>,
    /// Mesh identity: control-plane (certificates, mutual TLS) or disabled (plaintext).
    #[arg(long)]
    pub identity: Option<IdentityMode>,
    /// The control plane's identity API, e.g. https://127.0.0.1:8086 (implies --identity control-plane).
    #[arg(long)]
    pub control_plane: Option<String>,
    /// File holding the token that proves this proxy's workload.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The token itself (development).
    #[arg(long)]
    pub token: Option<String>,
    /// PEM trust anchors for the control plane and peers.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// The trust anchors as PEM text (an injected sidecar gets them in
    /// FERRY_TRUST_BUNDLE), instead of --trust-bundle.
    #[arg(long, env = "FERRY_TRUST_BUNDLE", hide_env_values = true)]
    pub trust_bundle_pem: Option<String>,
    /// The mesh's trust domain.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// The control plane's namespace (its certificate names it).
    #[arg(long)]
    pub control_plane_namespace: Option<String>,
    /// Take certificates from the control plane but not its policies and pools.
    #[arg(long)]
    pub no_watch: bool,
    /// Mount every data set read-only on this empty directory (FUSE), one
    /// directory per bucket.
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// FUSE session threads of the mount.
    #[arg(long, requires = "mount")]
    pub mount_threads: Option<usize>,
}

/// Flags of the worker role.
#[derive(Args, Debug, Default)]
pub struct WorkerArgs {
    /// Origin of the data set: file:///dir, http(s)://host/prefix, s3://bucket/prefix, synthetic://?count=N.
    #[arg(long, requires = "bucket")]
    pub origin: Option<String>,
    /// Listener for sidecars.
    #[arg(long)]
    pub inbound: Option<SocketAddr>,
    /// This worker's address as its pool names it (e.g. $(POD_IP):4143), for
    /// warm-ups it starts on its own (policy `warm: on_start`).
    #[arg(long, env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory of the local-disk cache tier.
    #[arg(long, requires = "disk_cache_size")]
    pub disk_cache: Option<PathBuf>,
    /// Size of the local-disk cache tier, e.g. 100GiB.
    #[arg(long, requires = "disk_cache")]
    pub disk_cache_size: Option<ByteSize>,
    /// Identities (SPIFFE IDs or patterns with `*` segments) allowed to read
    /// the data set given by flags; repeatable. Default: any workload of the trust domain.
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Flags both roles take.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags of the sidecar role.
#[derive(Args, Debug, Default)]
pub struct SidecarArgs {
    /// Workers of the pool: host:port[@weight][/zone], comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pool: Vec<String>,
    /// The data set's origin, read directly when the whole pool is down (with --on-pool-down origin).
    #[arg(long)]
    pub origin: Option<String>,
    /// When every worker is down: fail (503 naming the pool) or origin.
    #[arg(long)]
    pub on_pool_down: Option<PoolDownPolicy>,
    /// Hedge after: auto (the pool's p95), off, or a duration like 20ms.
    #[arg(long)]
    pub hedge: Option<String>,
    /// Owner skipped above (1 + epsilon) × the pool's mean load.
    #[arg(long)]
    pub load_epsilon: Option<f64>,
    /// Deadline of one request to a worker.
    #[arg(long)]
    pub chunk_timeout: Option<String>,
    /// Identity every worker must present (SPIFFE ID or pattern). Default:
    /// any workload of the trust domain.
    #[arg(long)]
    pub worker_identity: Option<String>,
    /// HTTP/2 flow-control window per stream to workers.
    #[arg(long)]
    pub h2_stream_window: Option<ByteSize>,
    /// HTTP/2 flow-control window per connection to workers.
    #[arg(long)]
    pub h2_connection_window: Option<ByteSize>,
    /// Flags both roles take.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The pool defined by `--pool` flags.
const FLAG_POOL: &str = "workers";

impl Cli {
    /// The configuration these arguments describe, validated.
    pub fn into_config(self) -> anyhow::Result<ProxyConfig> {
        let source = self
            .config
            .as_ref()
            .map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
        let mut config = match &self.config {
            Some(path) => from_yaml_file::<ProxyConfig>(path)?,
            None => ProxyConfig::default(),
        };
        match self.role {
            Some(RoleCommand::Worker(args)) => {
                config.role = Role::Worker;
                args.apply(&mut config)?;
            }
            Some(RoleCommand::Sidecar(args)) => {
                config.role = Role::Sidecar;
                args.apply(&mut config)?;
            }
            Some(RoleCommand::Await(_)) => {
                anyhow::bail!("`ferry-proxy await` waits for a proxy; it runs none")
            }
            None if self.config.is_none() => anyhow::bail!(
                "give a role (`ferry-proxy worker --origin URL --bucket NAME` or \
                 `ferry-proxy sidecar --pool ADDR,... --bucket NAME`) or --config FILE"
            ),
            None => {}
        }
        let from_control_plane =
            config.identity.mode == IdentityMode::ControlPlane && config.identity.watch;
        anyhow::ensure!(
            !config.datasets.is_empty() || from_control_plane,
            "no data sets to serve: give --bucket NAME (and --origin URL for a worker), list them \
             under `datasets:` in --config, or follow a control plane (--control-plane URL)"
        );
        config.validate(&source)?;
        Ok(config)
    }
}

impl CommonArgs {
    /// Adds the data set these flags describe (if `--bucket` is given),
    /// completed by `role_fields`, and applies the process-wide flags.
    /// Ranges are checked by the schema's `validate()` with the rest.
    fn apply(
        &self,
        config: &mut ProxyConfig,
        role: Role,
        role_fields: impl FnOnce(&mut DatasetPolicy) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(bucket) = &self.bucket {
            let name = self.dataset.as_deref().unwrap_or(bucket);
            let mut policy = DatasetPolicy::new(name, bucket);
            role_fields(&mut policy)?;
            if let Some(size) = self.chunk_size {
                policy.chunk_size = size;
            }
            if let Some(depth) = self.read_ahead {
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
            config.limits.inflight_memory = Some(bytes);
        }
        if let Some(bytes) = self.prefetch_memory {
            config.limits.prefetch_memory = Some(bytes);
        }
        if let Some(requests) = self.max_requests {
            config.limits.max_requests = Some(requests);
        }
        if let Some(wait) = self.admission_wait {
            config.limits.admission_wait = ferry_config::units::HumanDuration(wait.into());
        }
        if let Some(timeout) = self.header_timeout {
            config.limits.header_timeout = ferry_config::units::HumanDuration(timeout.into());
        }
        if let Some(timeout) = self.idle_timeout {
            config.limits.idle_timeout = ferry_config::units::HumanDuration(timeout.into());
        }
        let identity = &mut config.identity;
        if let Some(url) = &self.control_plane {
            identity.control_plane = Some(url.clone());
            identity.mode = IdentityMode::ControlPlane;
        }
        if let Some(mode) = self.identity {
            identity.mode = mode;
        }
        if self.token_file.is_some() {
            identity.token_file.clone_from(&self.token_file);
        }
        if self.token.is_some() {
            identity.token.clone_from(&self.token);
        }
        if self.trust_bundle.is_some() {
            identity.trust_bundle.clone_from(&self.trust_bundle);
        }
        if self.trust_bundle_pem.is_some() {
            identity.trust_bundle_pem.clone_from(&self.trust_bundle_pem);
        }
        if let Some(domain) = &self.trust_domain {
            identity.trust_domain.clone_from(domain);
        }
        if let Some(namespace) = &self.control_plane_namespace {
            identity.control_plane_namespace.clone_from(namespace);
        }
        if self.no_watch {
            identity.watch = false;
        }
        if let Some(dir) = &self.mount {
            config.mount = Some(ferry_config::MountSpec {
                dir: dir.clone(),
                threads: self
                    .mount_threads
                    .unwrap_or(ferry_config::proxy::DEFAULT_MOUNT_THREADS),
            });
        }
        if self.cache_size.is_some() {
            config.cache.size = self.cache_size;
        }
        if self.cache_policy.is_some() {
            config.cache.policy = self.cache_policy;
        }
        for policy in &mut config.datasets.0 {
            config.cache.apply(role, policy);
        }
        Ok(())
    }
}

impl WorkerArgs {
    fn apply(self, config: &mut ProxyConfig) -> anyhow::Result<()> {
        if self.common.bucket.is_some() && self.origin.is_none() {
            anyhow::bail!("a worker's data set needs --origin URL");
        }
        let (origin, allow) = (&self.origin, &self.allow);
        self.common.apply(config, Role::Worker, |policy| {
            if let Some(origin) = origin {
                policy.origin = Some(
                    origin
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--origin: {e}"))?,
                );
            }
            for pattern in allow {
                policy.allow.push(
                    pattern
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--allow: {e}"))?,
                );
            }
            Ok(())
        })?;
        if let Some(inbound) = self.inbound {
            config.inbound = inbound;
        }
        if let Some(advertise) = self.advertise {
            config.advertise = Some(advertise);
        }
        if let (Some(dir), Some(size)) = (self.disk_cache, self.disk_cache_size) {
            config.disk_cache = Some(DiskCacheSpec { dir, size });
        }
        Ok(())
    }
}

impl SidecarArgs {
    fn apply(self, config: &mut ProxyConfig) -> anyhow::Result<()> {
        if !self.pool.is_empty() {
            let members = self
                .pool
                .iter()
                .map(|m| {
                    MemberSpec::parse_flag(m.trim()).map_err(|e| anyhow::anyhow!("--pool: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut pool = PoolSpec::new(FLAG_POOL, members);
            if let Some(hedge) = &self.hedge {
                pool.balance.hedge = hedge.parse().map_err(|e| anyhow::anyhow!("--hedge: {e}"))?;
            }
            if let Some(identity) = &self.worker_identity {
                pool.identity = Some(
                    identity
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--worker-identity: {e}"))?,
                );
            }
            if let Some(epsilon) = self.load_epsilon {
                pool.balance.load_epsilon = epsilon;
            }
            if let Some(window) = self.h2_stream_window {
                pool.balance.stream_window = window;
                pool.balance.connection_window = pool.balance.connection_window.max(window);
            }
            if let Some(window) = self.h2_connection_window {
                pool.balance.connection_window = window;
            }
            if let Some(timeout) = &self.chunk_timeout {
                pool.balance.chunk_timeout =
                    HumanDuration(parse_duration(timeout).map_err(anyhow::Error::msg)?);
            }
            config.pools.retain(|p| p.name != FLAG_POOL);
            config.pools.push(pool);
        }
        let several_pools = !self.pool.is_empty() && config.pools.len() > 1;
        let (origin, on_pool_down) = (&self.origin, self.on_pool_down);
        self.common.apply(config, Role::Sidecar, |policy| {
            if let Some(origin) = origin {
                policy.origin = Some(
                    origin
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--origin: {e}"))?,
                );
            }
            if let Some(on_pool_down) = on_pool_down {
                policy.on_pool_down = on_pool_down;
            }
            if several_pools {
                policy.pool = Some(FLAG_POOL.to_owned());
            }
            Ok(())
        })
    }
}

/// Runs the proxy described by `cli` until SIGINT, SIGTERM or `/shutdown`.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let mut config = cli.into_config()?;
    let threads = runtime::worker_threads(config.threads);
    let memory_limit = runtime::memory_limit();
    config.limits.size_from(threads, memory_limit);
    let purging = runtime::return_memory_when_idle();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("ferry-proxy")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let prometheus = telemetry::install_recorder()?;
        let service = format!("ferry-{}", config.role.as_str());
        let tracing = telemetry::traces::init(&service)?;
        let mut stop = Box::pin(stop_signal());
        let role = config.role;
        tracing::info!(
            threads,
            memory_limit = memory_limit.map(|b| ByteSize(b).to_string()),
            max_requests = config.limits.max_requests,
            inflight_memory = %ByteSize(config.limits.inflight_bytes()),
            prefetch_memory = %ByteSize(config.limits.prefetch_bytes()),
            metadata_entries = config.limits.metadata_capacity(),
            listing_entries = config.limits.listing_capacity(),
            admission_wait = ?config.limits.admission_wait.0,
            returns_freed_memory = purging,
            "limits in force"
        );
        // Machine-readable lines on stdout: tests and the bench read the
        // bound addresses from them (ports may have been 0). A proxy that
        // waits for its first certificate says so first: its admin answers
        // meanwhile, with /ready false, and its front door with 503.
        let starting = server::start_announcing(config, Some(prometheus), |admin, listen| {
            println!(
                "{{\"event\":\"waiting\",\"for\":\"certificate\",\"admin\":\"{admin}\",\"listen\":\"{listen}\"}}"
            );
        });
        // A proxy still waiting for its first certificate stops on a signal too.
        let proxy = tokio::select! {
            proxy = starting => proxy?,
            () = &mut stop => {
                tracing::info!("stopped before it was ready");
                tracing.flush().await;
                return Ok(());
            }
        };
        let inbound = proxy.inbound.map_or("null".to_owned(), |a| format!("\"{a}\""));
        println!(
            "{{\"event\":\"ready\",\"role\":\"{}\",\"listen\":\"{}\",\"admin\":\"{}\",\"inbound\":{inbound},\"threads\":{threads}}}",
            role.as_str(),
            proxy.listen,
            proxy.admin
        );
        let shutdown = proxy.shutdown_handle();
        tokio::spawn(async move {
            stop.await;
            shutdown.notify_one();
        });
        proxy.wait().await;
        tracing.flush().await;
        Ok(())
    })
}

/// SIGTERM or SIGINT, watched from this call on: made before the proxy
/// mounts or announces anything, so a signal that comes right after the
/// ready line still shuts it down cleanly (and unmounts).
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(%err, "cannot watch SIGTERM or SIGINT; use /shutdown");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Checks that an origin URL parses (used by flags' validation messages).
pub fn parse_origin(text: &str) -> Result<OriginSpec, String> {
    text.parse()
}
