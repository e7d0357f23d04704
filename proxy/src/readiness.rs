//! `ferry-proxy await`: holds a container until the proxy beside it is
//! ready, and optionally runs the app and then stops the proxy. On clusters
//! without native sidecars the injected proxy is an ordinary first container
//! whose `postStart` hook runs `ferry-proxy await`, so the app's containers
//! start only once Ferry serves; a Job's command wrapped in
//! `ferry-proxy await --shutdown -- CMD` lets the pod complete.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often `/ready` is asked while the proxy starts.
const POLL: Duration = Duration::from_millis(100);
/// Deadline of one request to the admin port.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Flags of `ferry-proxy await`.
#[derive(Args, Debug)]
pub struct AwaitArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:4191")]
    pub admin: SocketAddr,
    /// Longest wait for the proxy to be ready.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Once COMMAND exits, stop the proxy (POST /shutdown), so a Job's pod completes.
    #[arg(long, requires = "command")]
    pub shutdown: bool,
    /// Run once the proxy is ready; its exit status becomes this one's, and
    /// SIGTERM and SIGINT are passed on to it.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs `ferry-proxy await`.
pub fn run(args: AwaitArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: AwaitArgs) -> anyhow::Result<ExitCode> {
    let admin = reachable(args.admin);
    let deadline = Instant::now() + args.timeout;
    loop {
        match request(admin, "GET", "/ready").await {
            Ok(200) => break,
            Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Ok(status) => anyhow::bail!(
                "the proxy at {admin} is not ready after {:?} (/ready answers {status})",
                args.timeout
            ),
            Err(err) => anyhow::bail!(
                "the proxy at {admin} is not ready after {:?}: {err:#}",
                args.timeout
            ),
        }
    }
    let Some((program, arguments)) = args.command.split_first() else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let status = pass_signals_until_exit(&mut child).await?;
    if args.shutdown {
        match request(admin, "POST", "/shutdown").await {
            Ok(200) => {}
            Ok(status) => eprintln!("ferry-proxy await: /shutdown answered {status}"),
            Err(err) => eprintln!("ferry-proxy await: cannot stop the proxy: {err:#}"),
        }
    }
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: the shell convention would be 128 + n.
        None => ExitCode::FAILURE,
    })
}

/// Waits for `child`, passing it the SIGTERM and SIGINT this process gets
/// (in a container this process is PID 1, the only one the kubelet signals).
async fn pass_signals_until_exit(
    child: &mut tokio::process::Child,
) -> anyhow::Result<std::process::ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let pid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?));
    loop {
        let forward = tokio::select! {
            status = child.wait() => return Ok(status?),
            _ = terminate.recv() => rustix::process::Signal::TERM,
            _ = interrupt.recv() => rustix::process::Signal::INT,
        };
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, forward);
        }
    }
}

/// An address to connect to for `admin` (an unspecified one means this host).
fn reachable(mut admin: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    admin
}

/// The status code of `method path` on the admin port.
async fn request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut answer = Vec::with_capacity(256);
        // The status line is all that is needed; a misbehaving peer cannot
        // make this read much.
        (&mut stream).take(4096).read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| text.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .context("not an HTTP answer")?;
        anyhow::Ok(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .context("no answer")?
}
