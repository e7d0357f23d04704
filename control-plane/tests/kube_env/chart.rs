//! The Helm chart in `charts/ferry`, rendered by a real `helm` (named by
//! `FERRY_HELM`; `scripts/test` installs one with `scripts/install-helm`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The variable naming the helm binary.
pub const HELM: &str = "FERRY_HELM";

/// The helm binary, or `None` after saying that `test` is skipped and why.
pub fn helm(test: &str) -> Option<PathBuf> {
    match std::env::var_os(HELM) {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!(
                "skipped {test}: {HELM} is not set (scripts/test installs Helm with scripts/install-helm)"
            );
            None
        }
    }
}

/// The chart's folder.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry")
}

/// Runs `helm ARGS`; its success and what it printed (stdout, stderr).
pub fn run(helm: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(helm).args(args).output().expect("run helm");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `helm template` of the chart in `namespace` with `values` (YAML): every
/// object, as JSON; or helm's complaint.
pub fn render(helm: &Path, namespace: &str, values: &str) -> Result<Vec<Value>, String> {
    let file = ValuesFile::new(values);
    let chart = chart_dir();
    let (ok, stdout, stderr) = run(
        helm,
        &[
            "template",
            "ferry",
            chart.to_str().expect("path"),
            "--namespace",
            namespace,
            "-f",
            file.as_str(),
        ],
    );
    if !ok {
        return Err(stderr);
    }
    Ok(stdout
        .split("\n---")
        .filter_map(|document| {
            let value: Value = ferry_config::from_yaml(document, "helm template").ok()?;
            value.is_object().then_some(value)
        })
        .collect())
}

/// A values file for `helm -f`, removed when dropped.
pub struct ValuesFile(PathBuf);

impl ValuesFile {
    /// A new file holding `values` (YAML).
    pub fn new(values: &str) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let name = format!(
            "ferry-values-{}-{}.yaml",
            std::process::id(),
            RandomState::new().hash_one(values)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, values).expect("values file");
        Self(path)
    }

    /// Its path as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
