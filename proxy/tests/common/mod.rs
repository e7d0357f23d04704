//! Shared test fixtures: a real `ferry-proxy` process, an HTTP origin with
//! fault injection, scraping metrics, temporary directories.
#![allow(dead_code)]

pub mod otlp;
pub mod plane;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use ferry_config::exposition::Exposition;

/// How long a process gets to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `ferry-proxy` child process, killed on drop.
pub struct ProxyProcess {
    child: Child,
    /// S3 front door.
    pub listen: SocketAddr,
    /// Admin port.
    pub admin: SocketAddr,
    /// A worker's listener for sidecars.
    pub inbound: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl ProxyProcess {
    /// Starts `ferry-proxy <args> --listen 127.0.0.1:0 --admin 127.0.0.1:0`
    /// (addresses only when `args` starts with a role) and waits for its ready line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`ProxyProcess::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"));
        command.args(args);
        if args.first().is_some_and(|a| !a.starts_with('-')) {
            for flag in ["--listen", "--admin"] {
                if !args.contains(&flag) {
                    command.args([flag, "127.0.0.1:0"]);
                }
            }
        }
        if args.first() == Some(&"worker") && !args.contains(&"--inbound") {
            command.args(["--inbound", "127.0.0.1:0"]);
        }
        command
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn ferry-proxy");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut child_stderr = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = child_stderr.read_to_string(&mut text);
            sink.lock().expect("stderr lock").push_str(&text);
        });
        let line = read_first_line(child.stdout.take().expect("stdout"), START_TIMEOUT);
        let Some(line) = line else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "ferry-proxy did not start: {}",
                stderr.lock().expect("lock")
            );
        };
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let addr = |field: &str| -> SocketAddr {
            ready[field]
                .as_str()
                .expect("address")
                .parse()
                .expect("socket address")
        };
        Self {
            listen: addr("listen"),
            admin: addr("admin"),
            inbound: ready["inbound"].as_str().and_then(|a| a.parse().ok()),
            child,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// A URL on the front door.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// A URL on the admin port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Scrapes `/metrics` and sums the samples of `name` whose labels include all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        sum_samples(&text, name, labels)
    }

    /// Requests of kind `op` (`get`, `head`, `list`) it sent its origin
    /// for the data set `data`.
    pub async fn origin_requests(&self, op: &str) -> f64 {
        self.metric("origin_requests_total", &[("dataset", "data"), ("op", op)])
            .await
    }

    /// SIGKILLs the process and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERMs the process and waits for it to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.child.wait().expect("wait for ferry-proxy")
    }

    /// SIGTERMs the process, waits for it, and returns everything it logged.
    pub fn terminate_with_log(mut self) -> (std::process::ExitStatus, String) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = self.child.wait().expect("wait for ferry-proxy");
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        let log = self.stderr.lock().expect("stderr lock").clone();
        (status, log)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for ferry-proxy")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("FERRY_TEST_LOGS").is_some() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!(
                "--- ferry-proxy stderr ---\n{}",
                self.stderr.lock().expect("lock")
            );
        }
    }
}

/// Sums the samples of `name` in Prometheus text whose labels include `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_exposition(text).sum(name, labels)
}

/// Asks `ask` every 20 ms until it answers 200 with JSON that `done`
/// accepts, and returns that answer; fails after 20 s, naming `what` and
/// the last answer.
pub async fn poll_json<F, Fut>(
    what: &str,
    mut ask: F,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, serde_json::Value)>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = ask().await;
        if code == StatusCode::OK && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never got there: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `url` and parses its body as JSON; a test fails on any error.
pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let text = client
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    serde_json::from_str(&text).expect("json")
}

/// Prometheus text parsed; a test fails on invalid text.
pub fn parse_exposition(text: &str) -> Exposition {
    Exposition::parse(text).unwrap_or_else(|e| panic!("invalid exposition: {e}"))
}

/// Scrapes the `/metrics` at `url`, failing the test unless it is valid and
/// every family has its HELP and TYPE.
pub async fn described_metrics(url: &str) -> Exposition {
    let text = reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let metrics = parse_exposition(&text);
    assert_eq!(
        metrics.undescribed(),
        Vec::<&str>::new(),
        "families without HELP or TYPE"
    );
    metrics
}

/// The first line a child writes, skipping notices that it is still waiting
/// (for its first certificate), or `None` if none comes within `timeout`.
pub fn read_first_line(stdout: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let lines = read_lines(stdout);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        if !line.contains(r#""event":"waiting""#) {
            return Some(line);
        }
    }
}

/// Every line a child writes, as it writes them.
pub fn read_lines(stdout: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // Keep reading even with no one listening, so the child
                // never blocks on a full pipe.
                Ok(_) => drop(tx.send(line)),
            }
        }
    });
    rx
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `label`.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ferry-test-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes of object `index` of the synthetic data set `query`
/// (`count=N&size=...&seed=S`), as a synthetic origin serves them.
pub fn synthetic_object(query: &str, index: u64) -> Vec<u8> {
    let spec = ferry_config::SyntheticSpec::from_query(query).expect("synthetic spec");
    let mut bytes = vec![0; spec.object_size(index) as usize];
    spec.fill(index, 0, &mut bytes);
    bytes
}

/// Deterministic test bytes: object `seed`, `len` bytes.
pub fn test_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// What the test origin does, shared with the test.
#[derive(Default)]
pub struct OriginState {
    /// Objects by key.
    pub objects: Mutex<HashMap<String, Bytes>>,
    /// GET requests received, by key.
    pub gets: Mutex<HashMap<String, usize>>,
    /// HEAD requests received.
    pub heads: AtomicUsize,
    /// Reads starting at or past this offset get a 500.
    pub fail_from: Mutex<Option<u64>>,
    /// Each GET waits this long before answering.
    pub delay: Mutex<Duration>,
}

impl OriginState {
    /// GETs received for `key`.
    pub fn gets_of(&self, key: &str) -> usize {
        self.gets
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    /// GETs received for all keys.
    pub fn total_gets(&self) -> usize {
        self.gets.lock().expect("lock").values().sum()
    }
}

/// A real HTTP origin server with Range support, request counting and faults.
pub struct TestOrigin {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<OriginState>,
}

impl TestOrigin {
    /// Starts serving `objects` on a loopback port.
    pub async fn start(objects: Vec<(&str, Vec<u8>)>) -> Self {
        let state = Arc::new(OriginState::default());
        {
            let mut map = state.objects.lock().expect("lock");
            for (key, bytes) in objects {
                map.insert(key.to_owned(), Bytes::from(bytes));
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// The origin URL of its objects.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

async fn answer<B>(
    state: Arc<OriginState>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = request.uri().path().trim_start_matches('/').to_owned();
    let object = state.objects.lock().expect("lock").get(&key).cloned();
    let Some(object) = object else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let etag = format!("\"{:016x}\"", object.len() as u64 * 31 + key.len() as u64);
    if request.method() == http::Method::HEAD {
        state.heads.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::new()));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, object.len().into());
        response
            .headers_mut()
            .insert(header::ETAG, etag.parse().expect("etag"));
        return Ok(response);
    }
    *state.gets.lock().expect("lock").entry(key).or_default() += 1;
    let delay = *state.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (start, end) = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or((0, object.len() as u64 - 1));
    if state
        .fail_from
        .lock()
        .expect("lock")
        .is_some_and(|from| start >= from)
    {
        return Ok(status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let end = end.min(object.len() as u64 - 1);
    let mut response = Response::new(Full::new(object.slice(start as usize..=end as usize)));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag.parse().expect("etag"));
    headers.insert(
        header::CONTENT_RANGE,
        format!("bytes {start}-{end}/{}", object.len())
            .parse()
            .expect("range"),
    );
    Ok(response)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// The `ferryctl` binary built beside `ferry-proxy`.
pub fn ferryctl_binary() -> PathBuf {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-proxy")).with_file_name("ferryctl");
    assert!(
        binary.exists(),
        "{} is missing: run the workspace tests (scripts/test) so it is built",
        binary.display()
    );
    binary
}

/// The Python interpreter with boto3 and moto (set by scripts/test).
pub fn python() -> String {
    std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails with a clear message if `python()` lacks `modules`.
pub fn require_python_modules(modules: &[&str]) {
    let check = format!("import {}", modules.join(", "));
    let ok = Command::new(python())
        .args(["-c", &check])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot `{check}`: run scripts/test (it installs them) or set FERRY_PYTHON",
        python()
    );
}
