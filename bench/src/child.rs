//! Child processes of a benchmark run: ferry-proxy and the baseline servers.
//! Each prints one JSON line with its addresses when ready and is killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use ferry_config::{ByteSize, CachePolicy};

/// How long a child gets to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running child process.
pub struct ChildProcess {
    child: Child,
    /// Its main listening address.
    pub addr: SocketAddr,
    /// Its admin address, when it has one.
    pub admin: Option<SocketAddr>,
    /// A worker's listener for sidecars.
    pub inbound: Option<SocketAddr>,
    /// Everything its ready line said.
    ready: serde_json::Value,
}

/// Token a benchmark's workers present to the control plane.
const WORKER_TOKEN: &str = "bench-worker-token";
/// Token a benchmark's sidecars present.
const SIDECAR_TOKEN: &str = "bench-sidecar-token";

/// How proxies of a benchmark get their identities.
#[derive(Clone, Debug)]
pub struct MeshIdentity {
    /// The control plane's API.
    pub url: String,
    /// Its trust bundle file.
    pub bundle: String,
}

impl MeshIdentity {
    /// Identity flags for a worker: only the training job's service account
    /// may read.
    pub fn worker_flags(&self) -> Vec<String> {
        let mut flags = self.flags(WORKER_TOKEN);
        flags.extend([
            "--allow".to_owned(),
            "spiffe://cluster.local/ns/train/sa/*".to_owned(),
        ]);
        flags
    }

    /// Identity flags for a sidecar: every worker must be the workers'
    /// service account.
    pub fn sidecar_flags(&self) -> Vec<String> {
        let mut flags = self.flags(SIDECAR_TOKEN);
        flags.extend([
            "--worker-identity".to_owned(),
            "spiffe://cluster.local/ns/ferry/sa/worker".to_owned(),
        ]);
        flags
    }

    /// Identity flags for a worker that takes its data sets from the control plane.
    pub fn worker_watch_flags(&self) -> Vec<String> {
        self.flags(WORKER_TOKEN)
    }

    /// Identity flags for a sidecar that takes data sets and pools from the control plane.
    pub fn sidecar_watch_flags(&self) -> Vec<String> {
        self.flags(SIDECAR_TOKEN)
    }

    /// Identity settings of a sidecar, for a proxy identity made in this process.
    pub fn sidecar_spec(&self) -> ferry_config::IdentitySpec {
        ferry_config::IdentitySpec {
            mode: ferry_config::IdentityMode::ControlPlane,
            control_plane: Some(self.url.clone()),
            token: Some(SIDECAR_TOKEN.to_owned()),
            trust_bundle: Some(self.bundle.clone().into()),
            ..ferry_config::IdentitySpec::default()
        }
    }

    fn flags(&self, token: &str) -> Vec<String> {
        [
            "--control-plane",
            &self.url,
            "--token",
            token,
            "--trust-bundle",
            &self.bundle,
        ]
        .map(str::to_owned)
        .into()
    }
}

/// Which ferry-proxy a scenario runs.
#[derive(Args, Clone, Debug, Default)]
pub struct ProxyArgs {
    /// Run this ferry-proxy binary instead of the one built into ferry-bench.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

impl ProxyArgs {
    /// The program these arguments choose.
    pub fn program(&self) -> ProxyProgram {
        self.proxy_bin
            .clone()
            .map_or(ProxyProgram::Embedded, ProxyProgram::Binary)
    }
}

/// A ferry-proxy worker a scenario starts.
pub struct WorkerSpec<'a> {
    /// Origin URL.
    pub origin: &'a str,
    /// Bucket (and data set) name.
    pub bucket: &'a str,
    /// Hot cache size.
    pub cache_size: ByteSize,
    /// Hot cache policy.
    pub cache_policy: CachePolicy,
    /// Read-ahead depth, when not the default.
    pub read_ahead: Option<u32>,
    /// More flags, e.g. `--mount DIR`.
    pub extra: Vec<String>,
}

impl WorkerSpec<'_> {
    /// The `ferry-proxy worker` arguments it stands for.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "worker",
            "--origin",
            self.origin,
            "--bucket",
            self.bucket,
            "--cache-policy",
            self.cache_policy.as_str(),
        ]
        .map(str::to_owned)
        .into();
        args.extend([
            "--cache-size".to_owned(),
            self.cache_size.bytes().to_string(),
        ]);
        if let Some(depth) = self.read_ahead {
            args.extend(["--read-ahead".to_owned(), depth.to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// Which program runs a proxy.
#[derive(Clone, Debug)]
pub enum ProxyProgram {
    /// This binary, re-executed as `ferry-bench proxy ...` (same build as the bench).
    Embedded,
    /// An external `ferry-proxy` binary.
    Binary(PathBuf),
}

impl ProxyProgram {
    fn command(&self) -> anyhow::Result<Command> {
        Ok(match self {
            Self::Embedded => {
                let mut command =
                    Command::new(std::env::current_exe().context("locating ferry-bench")?);
                command.arg("proxy");
                command
            }
            Self::Binary(path) => Command::new(path),
        })
    }
}

impl ChildProcess {
    /// Starts ferry-proxy with `args` (listen and admin on free ports).
    pub fn proxy(program: &ProxyProgram, args: &[String]) -> anyhow::Result<Self> {
        Self::proxy_with_env(program, args, &[])
    }

    /// [`ChildProcess::proxy`] with more environment variables.
    pub fn proxy_with_env(
        program: &ProxyProgram,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = program.command()?;
        command.envs(env.iter().copied());
        command
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        if args.first().map(String::as_str) == Some("worker")
            && !args.iter().any(|a| a == "--inbound")
        {
            command.args(["--inbound", "127.0.0.1:0"]);
        }
        Self::spawn(command, "ferry-proxy")
    }

    /// [`ChildProcess::proxy`] inside the cgroup whose `cgroup.procs` is
    /// `procs`: a shell joins it, then becomes the proxy, so the proxy sizes
    /// its limits from that cgroup from its first instruction.
    pub fn proxy_in_cgroup(
        program: &ProxyProgram,
        args: &[String],
        procs: &Path,
    ) -> anyhow::Result<Self> {
        let inner = program.command()?;
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(procs)
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        Self::spawn(command, "ferry-proxy (in a cgroup)")
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts a ferry-proxy worker as `worker` describes.
    pub fn ferry_worker(program: &ProxyProgram, worker: &WorkerSpec<'_>) -> anyhow::Result<Self> {
        Self::proxy(program, &worker.args())
    }

    /// Starts the emulated remote store serving the synthetic data set `query`.
    pub fn origin_server(query: &str, latency: std::time::Duration) -> anyhow::Result<Self> {
        Self::server(&[
            "origin".into(),
            "--spec".into(),
            query.to_owned(),
            "--latency".into(),
            format!("{}ms", latency.as_millis()),
        ])
    }

    /// Starts an OTLP/HTTP collector that takes every export and keeps nothing.
    pub fn collector() -> anyhow::Result<Self> {
        Self::server(&["collector".into(), "--spec".into(), "count=1".into()])
    }

    /// Starts the bare server holding the synthetic data set `query` in memory.
    pub fn bare_server(query: &str) -> anyhow::Result<Self> {
        Self::server(&["bare".into(), "--spec".into(), query.to_owned()])
    }

    /// Starts one of this binary's baseline servers: `ferry-bench serve <args>`.
    fn server(args: &[String]) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe().context("locating ferry-bench")?);
        command.arg("serve").args(args);
        Self::spawn(
            command,
            &format!(
                "ferry-bench serve {}",
                args.first().map_or("", String::as_str)
            ),
        )
    }

    fn spawn(mut command: Command, name: &str) -> anyhow::Result<Self> {
        command
            .env(
                "RUST_LOG",
                std::env::var("FERRY_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let ready = child
            .stdout
            .take()
            .context("child stdout")
            .and_then(|stdout| Self::ready_line(stdout, name));
        let ready = match ready {
            Ok(ready) => ready,
            Err(err) => {
                // Never leave a child behind: it would hold our stderr open.
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        };
        let address = |field: &str| -> Option<SocketAddr> { ready[field].as_str()?.parse().ok() };
        let Some(addr) = address("listen") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} reported no address: {ready}");
        };
        Ok(Self {
            addr,
            admin: address("admin"),
            inbound: address("inbound"),
            child,
            ready,
        })
    }

    /// The child's ready line, skipping notices that it is still waiting
    /// (for its first certificate).
    fn ready_line(
        stdout: std::process::ChildStdout,
        name: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even with no one listening: keeps the pipe drained.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                bail!("{name} did not report ready within {READY_TIMEOUT:?}");
            };
            let event: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("{name} printed {line:?}"))?;
            if event["event"] != "waiting" {
                return Ok(event);
            }
        }
    }

    /// Starts a control plane (this binary, `ferry-bench run-control-plane`)
    /// keeping its CA in `dir`, issuing certificates of `lifetime`, knowing
    /// the tokens of [`MeshIdentity`], listening on `listen`, with more flags `extra`.
    fn control_plane(
        dir: &Path,
        lifetime: Duration,
        listen: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<(Self, MeshIdentity)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tokens = dir.join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "tokens:\n  - {{ token: {WORKER_TOKEN}, namespace: ferry, service_account: worker }}\n  \
                 - {{ token: {SIDECAR_TOKEN}, namespace: train, service_account: job }}\n"
            ),
        )?;
        let mut command = Command::new(std::env::current_exe().context("locating ferry-bench")?);
        command
            .arg("run-control-plane")
            .args([
                "--state-dir".into(),
                dir.join("state").display().to_string(),
                "--tokens".into(),
                tokens.display().to_string(),
                "--listen".into(),
                listen.to_string(),
                "--admin".into(),
                "127.0.0.1:0".into(),
                "--cert-lifetime".into(),
                format!("{}s", lifetime.as_secs().max(1)),
            ])
            .args(extra);
        let plane = Self::spawn(command, "ferry-control-plane")?;
        let bundle = plane.ready["trust_bundle"]
            .as_str()
            .context("the control plane named no trust bundle")?
            .to_owned();
        let identity = MeshIdentity {
            url: format!("https://{}", plane.addr),
            bundle,
        };
        Ok((plane, identity))
    }

    /// CPU time (user + system) used so far, read from /proc.
    pub fn cpu_seconds(&self) -> Option<f64> {
        /// /proc reports clock ticks of USER_HZ, which Linux fixes at 100.
        const USER_HZ: f64 = 100.0;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name may hold spaces; fields resume after its ')'.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let user: u64 = fields.nth(11)?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some((user + system) as f64 / USER_HZ)
    }

    /// Resident memory in bytes (VmRSS), read from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// A control plane started for one run, with a fresh CA in a directory of
/// its own that goes away with it.
pub struct ControlPlane {
    /// The running process, while it runs.
    pub process: Option<ChildProcess>,
    /// Flags that make proxies its clients.
    pub identity: MeshIdentity,
    /// Its directory (CA state, tokens).
    pub dir: PathBuf,
    lifetime: Duration,
    extra: Vec<String>,
}

impl ControlPlane {
    /// Starts one issuing certificates of `lifetime`.
    pub fn start(lifetime: Duration) -> anyhow::Result<Self> {
        Self::start_with(lifetime, Vec::new())
    }

    /// Starts one issuing certificates of `lifetime`, with more flags `extra`.
    pub fn start_with(lifetime: Duration, extra: Vec<String>) -> anyhow::Result<Self> {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-bench-ca-{}-{run}", std::process::id()));
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (process, identity) = ChildProcess::control_plane(&dir, lifetime, any_port, &extra)?;
        Ok(Self {
            process: Some(process),
            identity,
            dir,
            lifetime,
            extra,
        })
    }

    /// The running process.
    pub fn running(&self) -> anyhow::Result<&ChildProcess> {
        self.process
            .as_ref()
            .context("the control plane is stopped")
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts it again on its address, with its CA and flags.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let listen: SocketAddr = self
            .identity
            .url
            .trim_start_matches("https://")
            .parse()
            .context("the control plane's address")?;
        let (process, _) =
            ChildProcess::control_plane(&self.dir, self.lifetime, listen, &self.extra)?;
        self.process = Some(process);
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
