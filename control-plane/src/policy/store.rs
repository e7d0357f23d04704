//! Accepted documents, refusals, versions, publication.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::sync::watch;

use serde::{Deserialize, Serialize};

use ferry_config::{ConfigError, PolicyFile, PoolSpec, from_yaml, to_yaml};

use super::view::ViewKey;

/// Where a policy document came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentKey {
    /// The kind of source: `file` or `configmap`.
    pub source: &'static str,
    /// The file's path, or the ConfigMap's `namespace/name`.
    pub name: String,
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.source, self.name)
    }
}

/// A document's content and whom it is for.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDocument {
    /// `None`: every proxy of the mesh; else only sidecars of this namespace
    /// (workers serve every data set).
    pub namespace: Option<String>,
    /// The data sets and pools it defines.
    pub policy: PolicyFile,
}

/// Why a document was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The document.
    pub key: DocumentKey,
    /// What is wrong, with file, line and field when known.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", self.key, self.message)
    }
}

/// Everything accepted, at one version.
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    /// Accepted documents.
    pub documents: BTreeMap<DocumentKey, PolicyDocument>,
    /// Pools discovered from Kubernetes Services, by name.
    pub discovered_pools: BTreeMap<String, PoolSpec>,
    /// PEM trust anchors.
    pub trust_bundle: Vec<String>,
    /// The mesh's trust domain.
    pub trust_domain: String,
}

/// One published version, with the snapshots rendered from it so far.
pub struct Published {
    /// The version.
    pub version: u64,
    /// What it holds.
    pub state: Arc<MeshState>,
    /// Rendered watch lines by audience: thousands of watchers of one
    /// namespace share one rendering.
    rendered: Mutex<HashMap<ViewKey, Bytes>>,
}

impl Published {
    /// The watch line for proxies of `key`, rendered once per version.
    pub fn line_for(&self, key: &ViewKey) -> Bytes {
        let mut rendered = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        rendered
            .entry(key.clone())
            .or_insert_with(|| {
                Bytes::from(super::view::snapshot(&self.state, self.version, key).to_line())
            })
            .clone()
    }
}

struct Inner {
    state: MeshState,
    version: u64,
    refusals: BTreeMap<DocumentKey, Refusal>,
    /// Documents accepted by this run or an earlier one (saved in `saved_to`):
    /// a document refused on sight falls back to its version here, so a
    /// restart with a broken file or ConfigMap changes nothing either.
    last_good: BTreeMap<DocumentKey, PolicyDocument>,
    saved_to: Option<PathBuf>,
}

/// The last good documents as saved on disk.
#[derive(Default, Deserialize, Serialize)]
struct Saved {
    documents: Vec<SavedDocument>,
}

#[derive(Deserialize, Serialize)]
struct SavedDocument {
    source: String,
    name: String,
    namespace: Option<String>,
    policy: PolicyFile,
}

/// Source names known to the store, as `&'static str` for keys.
const SOURCES: [&str; 2] = ["file", "configmap"];

/// The control plane's policies, and their publication to watchers.
pub struct PolicyStore {
    inner: Mutex<Inner>,
    published: watch::Sender<Arc<Published>>,
}

impl PolicyStore {
    /// An empty store for `trust_domain`, publishing `trust_bundle`; with
    /// `saved_to`, the last good documents are kept in that file across runs.
    pub fn new(
        trust_domain: &str,
        trust_bundle: Vec<String>,
        saved_to: Option<PathBuf>,
    ) -> Arc<Self> {
        let last_good = saved_to.as_deref().map(load_saved).unwrap_or_default();
        let state = MeshState {
            trust_bundle,
            trust_domain: trust_domain.to_owned(),
            ..MeshState::default()
        };
        let first = Arc::new(Published {
            version: 1,
            state: Arc::new(state.clone()),
            rendered: Mutex::new(HashMap::new()),
        });
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state,
                version: 1,
                refusals: BTreeMap::new(),
                last_good,
                saved_to,
            }),
            published: watch::Sender::new(first),
        })
    }

    /// Follows every published version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// The version in force.
    pub fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// Documents refused and not since replaced by a good version.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.lock().refusals.values().cloned().collect()
    }

    /// Takes `document` as the content of `key` (a parse error is passed in
    /// as `Err`). A document that is malformed or clashes with another is
    /// refused and the last good content of `key` stays in force.
    pub fn put(
        &self,
        key: DocumentKey,
        document: Result<PolicyDocument, ConfigError>,
    ) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let document = match document {
            Ok(document) => document,
            Err(err) => {
                let refusal = refuse(&mut inner, key, err.to_string());
                self.restore_last_good(&mut inner, &refusal.key);
                return Err(refusal);
            }
        };
        if let Err(message) = clashes(&inner.state, &key, &document) {
            let refusal = refuse(&mut inner, key, message);
            self.restore_last_good(&mut inner, &refusal.key);
            return Err(refusal);
        }
        inner.refusals.remove(&key);
        gauge!("policy_documents_refused").set(inner.refusals.len() as f64);
        if inner.state.documents.get(&key) == Some(&document) {
            return Ok(());
        }
        inner.state.documents.insert(key.clone(), document.clone());
        inner.last_good.insert(key.clone(), document);
        tracing::info!(document = %key, "policy accepted");
        save(&inner);
        self.publish(&mut inner);
        Ok(())
    }

    /// Puts the last good version of `key` in force, if none is and one was
    /// saved (by this run or an earlier one) and it still fits.
    fn restore_last_good(&self, inner: &mut Inner, key: &DocumentKey) {
        if inner.state.documents.contains_key(key) {
            return;
        }
        let Some(document) = inner.last_good.get(key).cloned() else {
            return;
        };
        if clashes(&inner.state, key, &document).is_ok() {
            tracing::warn!(document = %key, "using its last good version, saved earlier");
            inner.state.documents.insert(key.clone(), document);
            self.publish(inner);
        }
    }

    /// Forgets `key` (its file or ConfigMap was deleted).
    pub fn remove(&self, key: &DocumentKey) {
        let mut inner = self.lock();
        let refused = inner.refusals.remove(key).is_some();
        if refused {
            gauge!("policy_documents_refused").set(inner.refusals.len() as f64);
        }
        inner.last_good.remove(key);
        if inner.state.documents.remove(key).is_some() {
            tracing::info!(document = %key, "policy removed");
            save(&inner);
            self.publish(&mut inner);
        }
    }

    /// Keys of the accepted documents from `source`.
    pub fn keys(&self, source: &str) -> Vec<DocumentKey> {
        let inner = self.lock();
        inner
            .state
            .documents
            .keys()
            .chain(inner.refusals.keys())
            .filter(|k| k.source == source)
            .cloned()
            .collect()
    }

    /// Sets a discovered pool (`None` removes it).
    pub fn set_discovered_pool(&self, name: &str, pool: Option<PoolSpec>) {
        let mut inner = self.lock();
        let changed = match pool {
            Some(pool) => {
                inner
                    .state
                    .discovered_pools
                    .insert(name.to_owned(), pool.clone())
                    != Some(pool)
            }
            None => inner.state.discovered_pools.remove(name).is_some(),
        };
        if changed {
            self.publish(&mut inner);
        }
    }

    /// Replaces the trust bundle.
    pub fn set_trust_bundle(&self, bundle: Vec<String>) {
        let mut inner = self.lock();
        if inner.state.trust_bundle != bundle {
            inner.state.trust_bundle = bundle;
            self.publish(&mut inner);
        }
    }

    fn publish(&self, inner: &mut Inner) {
        inner.version += 1;
        gauge!("config_version").set(inner.version as f64);
        let published = Arc::new(Published {
            version: inner.version,
            state: Arc::new(inner.state.clone()),
            rendered: Mutex::new(HashMap::new()),
        });
        self.published.send_replace(published);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn load_saved(path: &Path) -> BTreeMap<DocumentKey, PolicyDocument> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(err) => {
            tracing::error!(path = %path.display(), %err, "cannot read the saved policies");
            return BTreeMap::new();
        }
    };
    let saved: Saved = match from_yaml(&text, &path.display().to_string()) {
        Ok(saved) => saved,
        Err(err) => {
            tracing::error!(%err, "the saved policies are unreadable; starting without them");
            return BTreeMap::new();
        }
    };
    saved
        .documents
        .into_iter()
        .filter_map(|d| {
            let source = SOURCES.into_iter().find(|s| *s == d.source)?;
            let key = DocumentKey {
                source,
                name: d.name,
            };
            Some((
                key,
                PolicyDocument {
                    namespace: d.namespace,
                    policy: d.policy,
                },
            ))
        })
        .collect()
}

/// Writes the last good documents beside the CA (temporary file, then rename).
fn save(inner: &Inner) {
    let Some(path) = &inner.saved_to else {
        return;
    };
    let saved = Saved {
        documents: inner
            .last_good
            .iter()
            .map(|(key, document)| SavedDocument {
                source: key.source.to_owned(),
                name: key.name.clone(),
                namespace: document.namespace.clone(),
                policy: document.policy.clone(),
            })
            .collect(),
    };
    let written = to_yaml(&saved)
        .map_err(std::io::Error::other)
        .and_then(|text| {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, text)?;
            std::fs::rename(&temporary, path)
        });
    if let Err(err) = written {
        tracing::error!(path = %path.display(), %err, "cannot save the accepted policies");
    }
}

fn refuse(inner: &mut Inner, key: DocumentKey, message: String) -> Refusal {
    let refusal = Refusal { key, message };
    tracing::error!(%refusal, "policy refused; the last good version stays in force");
    counter!("policy_refused_total", "source" => refusal.key.source).increment(1);
    inner.refusals.insert(refusal.key.clone(), refusal.clone());
    gauge!("policy_documents_refused").set(inner.refusals.len() as f64);
    refusal
}

/// Names that must be unique across the mesh: a data set's name and bucket
/// (workers serve every data set), a pool's name.
fn clashes(state: &MeshState, key: &DocumentKey, document: &PolicyDocument) -> Result<(), String> {
    for (other_key, other) in state.documents.iter().filter(|(k, _)| *k != key) {
        for dataset in document.policy.datasets.iter() {
            if let Some(taken) = other
                .policy
                .datasets
                .iter()
                .find(|d| d.name == dataset.name || d.bucket == dataset.bucket)
            {
                return Err(format!(
                    "data set '{}' (bucket '{}') clashes with data set '{}' (bucket '{}') of {other_key}: \
                     names and buckets are unique across the mesh",
                    dataset.name, dataset.bucket, taken.name, taken.bucket
                ));
            }
        }
        for pool in &document.policy.pools {
            if other.policy.pools.iter().any(|p| p.name == pool.name) {
                return Err(format!(
                    "pool '{}' is already defined by {other_key}",
                    pool.name
                ));
            }
        }
    }
    for pool in &document.policy.pools {
        if state.discovered_pools.contains_key(&pool.name) {
            return Err(format!(
                "pool '{}' is already discovered from a Service labelled ferry.dev/cache-pool",
                pool.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(yaml: &str) -> PolicyDocument {
        PolicyDocument {
            namespace: None,
            policy: from_yaml(yaml, "test.yaml").expect("policy"),
        }
    }

    fn key(name: &str) -> DocumentKey {
        DocumentKey {
            source: "file",
            name: name.into(),
        }
    }

    fn broken() -> ConfigError {
        ConfigError {
            file: "a.yaml".into(),
            line: Some(3),
            column: None,
            field: "datasets[0].chunk_size".into(),
            message: "not a size".into(),
        }
    }

    const GOOD: &str = "datasets:\n  - { name: imagenet, bucket: imagenet, origin: \"s3://d/i/\", chunk_size: 8MiB, allow: [\"spiffe://cluster.local/ns/train/sa/*\"] }\n\
                        pools:\n  - { name: workers, members: [{ address: \"w0:4143\", weight: 2 }], balance: { hedge: 20ms } }\n";

    #[test]
    fn a_refused_document_keeps_the_last_good_one_even_across_restarts() {
        let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let saved = dir.join("policies.yaml");
        let store = PolicyStore::new("cluster.local", Vec::new(), Some(saved.clone()));
        store
            .put(key("a.yaml"), Ok(document(GOOD)))
            .expect("accepted");
        let version = store.current().version;
        let refusal = store
            .put(key("a.yaml"), Err(broken()))
            .expect_err("refused");
        assert!(
            refusal.message.contains("datasets[0].chunk_size"),
            "{refusal}"
        );
        assert_eq!(store.current().version, version, "nothing published");
        assert_eq!(store.refusals().len(), 1);

        // A new run that meets the broken file first still serves the good one.
        let restarted = PolicyStore::new("cluster.local", Vec::new(), Some(saved));
        assert!(restarted.put(key("a.yaml"), Err(broken())).is_err());
        let state = restarted.current().state.clone();
        assert_eq!(state.documents.get(&key("a.yaml")), Some(&document(GOOD)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn buckets_and_pools_are_unique_across_documents() {
        let store = PolicyStore::new("cluster.local", Vec::new(), None);
        store
            .put(key("a.yaml"), Ok(document(GOOD)))
            .expect("accepted");
        let same_bucket =
            document("datasets:\n  - { name: other, bucket: imagenet, origin: \"s3://d/o/\" }\n");
        let refusal = store
            .put(key("b.yaml"), Ok(same_bucket))
            .expect_err("clash");
        assert!(refusal.message.contains("file a.yaml"), "{refusal}");
        let same_pool =
            document("pools:\n  - { name: workers, members: [{ address: \"w9:4143\" }] }\n");
        assert!(store.put(key("c.yaml"), Ok(same_pool)).is_err());
        store.remove(&key("a.yaml"));
        assert!(store.current().state.documents.is_empty());
    }
}
