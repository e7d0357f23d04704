//! The file source: `--config-dir DIR`. `DIR/*.yaml` apply to the whole
//! mesh; `DIR/<namespace>/*.yaml` to that namespace. Each file is a policy
//! file (`datasets:` and `pools:`). The directory is watched; a change is
//! published as soon as the files settle. Names starting with `.` are
//! skipped (editors' temporaries, the `..data` links of a mounted ConfigMap).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};

use ferry_config::{ConfigError, PolicyFile, from_yaml};

use crate::policy::{DocumentKey, PolicyDocument, PolicyStore};

/// Source name in document keys and metrics.
const SOURCE: &str = "file";
/// Quiet time after a change before reading: an editor's save or a `cp` is
/// several events.
const SETTLE: Duration = Duration::from_millis(50);

/// Reads `dir` into `store` now, then follows its changes in the background.
pub fn start(dir: &Path, store: Arc<PolicyStore>) -> anyhow::Result<()> {
    let listed = store.expect_source("policy files");
    anyhow::ensure!(
        dir.is_dir(),
        "--config-dir {} is not a directory",
        dir.display()
    );
    let mut scanner = Scanner {
        dir: dir.to_owned(),
        store,
        seen: HashMap::new(),
    };
    scanner.scan();
    listed.listed();
    // The watcher's callback runs on notify's thread: it only nudges the
    // scanner, and a nudge already pending covers any number of events.
    let (nudge, mut nudged) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = nudge.try_send(());
        }
    })
    .context("cannot watch the config directory")?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    tokio::spawn(async move {
        let _watcher = watcher;
        while nudged.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while nudged.try_recv().is_ok() {}
            scanner.scan();
        }
    });
    Ok(())
}

struct Scanner {
    dir: PathBuf,
    store: Arc<PolicyStore>,
    /// Content of each file as last read, to skip files that did not change.
    seen: HashMap<PathBuf, Vec<u8>>,
}

impl Scanner {
    fn scan(&mut self) {
        let mut present = BTreeSet::new();
        let mut present_paths = BTreeSet::new();
        for (path, namespace) in policy_files(&self.dir) {
            let key = DocumentKey {
                source: SOURCE,
                name: path.display().to_string(),
            };
            present.insert(key.clone());
            present_paths.insert(path.clone());
            let Ok(content) = std::fs::read(&path) else {
                continue; // gone between listing and reading: the next scan sees it
            };
            if self.seen.get(&path) == Some(&content) {
                continue;
            }
            let document = parse(&path, namespace, &content);
            self.seen.insert(path, content);
            // A refusal is logged, counted and kept by the store.
            let _ = self.store.put(key, document);
        }
        self.seen.retain(|path, _| present_paths.contains(path));
        for key in self.store.keys(SOURCE) {
            if !present.contains(&key) {
                self.store.remove(&key);
            }
        }
    }
}

fn parse(
    path: &Path,
    namespace: Result<Option<String>, String>,
    content: &[u8],
) -> Result<PolicyDocument, ConfigError> {
    let file = path.display().to_string();
    let whole_file = |message: String| ConfigError::in_file(&file, "", message);
    let namespace = namespace.map_err(whole_file)?;
    let text = std::str::from_utf8(content)
        .map_err(|_| whole_file("the file is not UTF-8 text".into()))?;
    let policy: PolicyFile = from_yaml(text, &file)?;
    policy.check(&file)?;
    Ok(PolicyDocument { namespace, policy })
}

/// The policy files under `dir`, each with its namespace (`None` for the
/// whole mesh; an error for a directory that cannot be a namespace).
fn policy_files(dir: &Path) -> Vec<(PathBuf, Result<Option<String>, String>)> {
    let mut files = Vec::new();
    for (path, is_dir) in entries(dir) {
        if is_dir {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let namespace = ferry_config::check_namespace_name(&name)
                .map(|()| Some(name.clone()))
                .map_err(|why| format!("directory {why}"));
            for (file, is_dir) in entries(&path) {
                if !is_dir && is_policy_file(&file) {
                    files.push((file, namespace.clone()));
                }
            }
        } else if is_policy_file(&path) {
            files.push((path, Ok(None)));
        }
    }
    // The mesh admin's first: a namespace's file is judged by the tenants
    // table, which must be in force before it.
    files.sort_by(|a, b| {
        let mesh_wide = |f: &(PathBuf, Result<Option<String>, String>)| matches!(f.1, Ok(None));
        mesh_wide(b).cmp(&mesh_wide(a)).then_with(|| a.0.cmp(&b.0))
    });
    files
}

/// Visible entries of `dir` and whether each is a directory (following links,
/// as a mounted ConfigMap's files are links).
fn entries(dir: &Path) -> Vec<(PathBuf, bool)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let path = e.path();
            let is_dir = path.is_dir();
            (path, is_dir)
        })
        .collect()
}

fn is_policy_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}
