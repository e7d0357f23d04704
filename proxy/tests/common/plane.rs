//! A real `ferry-control-plane` process for tests, with bootstrap tokens for
//! a worker, a training job and an intruder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{Issuer, KeyPair};

use super::read_first_line;

/// Tokens the control plane knows.
pub const TOKENS: &str = "tokens:\n  \
    - { token: worker-token, namespace: ferry, service_account: worker }\n  \
    - { token: train-token, namespace: train, service_account: job }\n  \
    - { token: other-token, namespace: other, service_account: intruder }\n";

/// A `ferry-control-plane` process with its own state directory.
pub struct ControlPlane {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub bundle: PathBuf,
    pub state: PathBuf,
    pub stderr: Arc<Mutex<String>>,
}

impl ControlPlane {
    /// Starts one keeping its CA in `dir/state`, with more flags `extra`
    /// (`--listen ADDR` among them replaces the default port 0).
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with(dir, extra, TOKENS, &[])
    }

    /// [`ControlPlane::start`] knowing bootstrap `tokens` (YAML) and with
    /// more environment variables; `--admin ADDR` in `extra` replaces port 0
    /// too. Returns once it is ready (every source listed once).
    pub fn start_with(dir: &Path, extra: &[&str], tokens_yaml: &str, env: &[(&str, &str)]) -> Self {
        let binary =
            Path::new(env!("CARGO_BIN_EXE_ferry-proxy")).with_file_name("ferry-control-plane");
        assert!(
            binary.exists(),
            "{} is missing: run the workspace tests (scripts/test) so it is built",
            binary.display()
        );
        let state = dir.join("state");
        let tokens = dir.join("tokens.yaml");
        std::fs::write(&tokens, tokens_yaml).expect("tokens");
        let mut child = Command::new(binary)
            .args([
                "--state-dir",
                state.to_str().expect("path"),
                "--tokens",
                tokens.to_str().expect("path"),
            ])
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(if extra.contains(&"--admin") {
                &[][..]
            } else {
                &["--admin", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start control plane");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let line = read_first_line(
            child.stdout.take().expect("stdout"),
            Duration::from_secs(60),
        );
        let Some(line) = line else {
            let _ = child.kill();
            panic!(
                "the control plane never got ready: {}",
                stderr.lock().expect("lock")
            );
        };
        let ready: serde_json::Value = serde_json::from_str(&line).expect("json");
        Self {
            url: format!("https://{}", ready["listen"].as_str().expect("listen")),
            admin: ready["admin"].as_str().expect("admin").to_owned(),
            bundle: PathBuf::from(ready["trust_bundle"].as_str().expect("bundle")),
            state,
            child,
            stderr,
        }
    }

    /// Identity flags for a proxy presenting `token`.
    pub fn flags(&self, token: &str) -> Vec<String> {
        vec![
            "--control-plane".into(),
            self.url.clone(),
            "--token".into(),
            token.into(),
            "--trust-bundle".into(),
            self.bundle.display().to_string(),
        ]
    }

    /// The CA's issuer, for making certificates the tests need.
    pub fn issuer(&self) -> Issuer<'static, KeyPair> {
        let key = std::fs::read_to_string(self.state.join("ca.key")).expect("ca key");
        let cert = std::fs::read_to_string(self.state.join("ca.pem")).expect("ca cert");
        Issuer::from_ca_cert_pem(&cert, KeyPair::from_pem(&key).expect("key")).expect("issuer")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the policy file `dir/name` whole (a temporary file, then a
/// rename), as an editor's save would: the control plane never reads half.
pub fn write_policy(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, dir.join(name)).expect("rename");
}

/// Data sets named `buckets`, each the synthetic data set `spec` behind the
/// pool `workers`, readable by the training namespace.
pub fn datasets_yaml(buckets: &[&str], spec: &str) -> String {
    let mut text = String::from("datasets:\n");
    for bucket in buckets {
        text.push_str(&format!(
            "  - name: {bucket}\n    bucket: {bucket}\n    origin: \"synthetic://?{spec}\"\n    \
             pool: workers\n    allow: [\"spiffe://cluster.local/ns/train/sa/*\"]\n"
        ));
    }
    text
}
