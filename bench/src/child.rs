//! Child processes of a benchmark run: ferry-proxy and the baseline servers.
//! Each prints one JSON line with its addresses when ready and is killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
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
        let mut command = program.command()?;
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

    /// Starts a ferry-proxy worker as `worker` describes.
    pub fn ferry_worker(program: &ProxyProgram, worker: &WorkerSpec<'_>) -> anyhow::Result<Self> {
        let mut args: Vec<String> = [
            "worker",
            "--origin",
            worker.origin,
            "--bucket",
            worker.bucket,
            "--cache-policy",
            worker.cache_policy.as_str(),
        ]
        .map(str::to_owned)
        .into();
        args.extend([
            "--cache-size".to_owned(),
            worker.cache_size.bytes().to_string(),
        ]);
        if let Some(depth) = worker.read_ahead {
            args.extend(["--read-ahead".to_owned(), depth.to_string()]);
        }
        Self::proxy(program, &args)
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
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let Ok(line) = rx.recv_timeout(READY_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not report ready within {READY_TIMEOUT:?}");
        };
        let ready: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{name} printed {line:?}"))?;
        let address = |field: &str| -> Option<SocketAddr> { ready[field].as_str()?.parse().ok() };
        let addr =
            address("listen").with_context(|| format!("{name} reported no address: {line}"))?;
        Ok(Self {
            addr,
            admin: address("admin"),
            inbound: address("inbound"),
            child,
        })
    }

    /// Resident memory in bytes (VmRSS), read from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
