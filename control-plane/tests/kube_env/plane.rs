//! A `ferry-control-plane --kubernetes` process against a [`super::KubeEnv`],
//! found beside the test binary's own binaries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A running control plane.
pub struct KubePlane {
    child: Child,
    /// The proxy API, `https://ADDR`.
    pub url: String,
    /// The admin address.
    pub admin: String,
    /// The webhook's address, when it serves one.
    pub webhook: Option<String>,
    /// The trust bundle (PEM).
    pub bundle: String,
    /// What it logged so far.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl KubePlane {
    /// Starts `binary` (ferry-control-plane) with `kubeconfig`, state in
    /// `dir`, and `args` after `--kubernetes`; returns once it is ready.
    pub fn start(binary: &Path, kubeconfig: &Path, dir: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("state dir");
        let mut child = Command::new(binary)
            .arg("--kubernetes")
            .args(["--state-dir", dir.to_str().expect("path")])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry-control-plane");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        let (lines, arrived) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let ready = loop {
            let Ok(line) = arrived.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                panic!(
                    "the control plane never got ready: {}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                );
            };
            let event: Value = serde_json::from_str(&line).expect("a JSON line");
            if event["event"] == "ready" {
                break event;
            }
        };
        let bundle = PathBuf::from(ready["trust_bundle"].as_str().expect("bundle"));
        Self {
            url: format!("https://{}", ready["listen"].as_str().expect("listen")),
            admin: ready["admin"].as_str().expect("admin").to_owned(),
            webhook: ready["webhook"].as_str().map(str::to_owned),
            bundle: std::fs::read_to_string(bundle).expect("bundle"),
            child,
            stderr,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops it (SIGKILL) and waits.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KubePlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
