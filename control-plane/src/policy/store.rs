//! Accepted documents, refusals, versions, publication.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::sync::watch;

use serde::{Deserialize, Serialize};

use ferry_config::{ConfigError, PolicyFile, PoolSpec, WarmOrder, from_yaml, to_yaml};

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

/// A worker pool's name in its scope: mesh-wide (`namespace: None`) or one
/// namespace's own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolKey {
    /// `None`: usable by every sidecar; else only by that namespace's.
    pub namespace: Option<String>,
    /// The pool's name, as data sets name it.
    pub name: String,
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => write!(f, "{} (mesh-wide)", self.name),
        }
    }
}

/// Why a warm-up could not be ordered.
#[derive(Debug, thiserror::Error)]
pub enum WarmOrderError {
    /// No policy defines the data set.
    #[error("no policy defines a data set named '{0}'")]
    UnknownDataset(String),
    /// A bound is out of range.
    #[error("{0}")]
    Bad(String),
}

/// Everything accepted, at one version.
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    /// Accepted documents.
    pub documents: BTreeMap<DocumentKey, PolicyDocument>,
    /// Pools discovered from Kubernetes Services, by scope and name.
    pub discovered_pools: BTreeMap<PoolKey, PoolSpec>,
    /// Admin addresses of discovered members that have one, by member
    /// address (kept out of the pools: proxies are not sent them).
    pub member_admins: BTreeMap<String, String>,
    /// PEM trust anchors.
    pub trust_bundle: Vec<String>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The last warm-up asked for each data set, by name.
    pub warm_orders: BTreeMap<String, WarmOrder>,
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
    /// What proxies of `key` are streamed at this version.
    pub fn snapshot_for(&self, key: &ViewKey) -> ferry_config::ProxySnapshot {
        super::view::snapshot(&self.state, self.version, key)
    }

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
    /// Well-formed content refused because it clashed with another document
    /// or overstepped its namespace: retried after every change, since what
    /// stood in its way may be gone.
    held: BTreeMap<DocumentKey, PolicyDocument>,
    /// Documents accepted by this run or an earlier one (saved in `saved_to`):
    /// a document refused on sight falls back to its version here, so a
    /// restart with a broken file or ConfigMap changes nothing either.
    last_good: BTreeMap<DocumentKey, PolicyDocument>,
    saved_to: Option<PathBuf>,
    /// The id of the last warm-up ordered.
    last_warm_id: u64,
}

/// The last good documents as saved on disk.
#[derive(Default, Deserialize, Serialize)]
struct Saved {
    /// The last version published, so the next run starts above it.
    #[serde(default)]
    version: u64,
    documents: Vec<SavedDocument>,
    /// The last warm-up ordered for each data set, so workers that start
    /// after a restart still take their share of it.
    #[serde(default)]
    warm_orders: Vec<WarmOrder>,
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
    /// Bumped whenever the refusals change, for sources that report them.
    refusals_changed: watch::Sender<u64>,
    /// Sources that have not listed everything once yet.
    unsynced: watch::Sender<BTreeSet<&'static str>>,
}

/// A source's promise to list once; [`SourceSync::listed`] keeps it.
#[must_use = "a source that never says it listed keeps the control plane unready"]
pub struct SourceSync {
    store: Arc<PolicyStore>,
    name: &'static str,
}

impl SourceSync {
    /// The source has listed (and applied) everything once.
    pub fn listed(self) {
        self.store.unsynced.send_if_modified(|pending| {
            let removed = pending.remove(self.name);
            if removed && pending.is_empty() {
                tracing::info!("every source has listed once: serving watches");
            }
            removed
        });
    }
}

impl PolicyStore {
    /// An empty store for `trust_domain`, publishing `trust_bundle`; with
    /// `saved_to`, the last good documents are kept in that file across runs.
    pub fn new(
        trust_domain: &str,
        trust_bundle: Vec<String>,
        saved_to: Option<PathBuf>,
    ) -> Arc<Self> {
        let saved = saved_to.as_deref().map(load_saved).unwrap_or_default();
        let last_good = saved_documents(saved.documents);
        let version = next_version(saved.version);
        let last_warm_id = saved.warm_orders.iter().map(|o| o.id).max().unwrap_or(0);
        let state = MeshState {
            trust_bundle,
            trust_domain: trust_domain.to_owned(),
            warm_orders: saved
                .warm_orders
                .into_iter()
                .map(|order| (order.dataset.clone(), order))
                .collect(),
            ..MeshState::default()
        };
        // Exported from the start: 0 refused is an answer, not a gap.
        gauge!("policy_documents_refused").set(0.0);
        gauge!("config_version").set(version as f64);
        let first = Arc::new(Published {
            version,
            state: Arc::new(state.clone()),
            rendered: Mutex::new(HashMap::new()),
        });
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state,
                version,
                refusals: BTreeMap::new(),
                held: BTreeMap::new(),
                last_good,
                saved_to,
                last_warm_id,
            }),
            published: watch::Sender::new(first),
            refusals_changed: watch::Sender::new(0),
            unsynced: watch::Sender::new(BTreeSet::new()),
        })
    }

    /// Registers a source that must list once before watches are served.
    pub fn expect_source(self: &Arc<Self>, name: &'static str) -> SourceSync {
        self.unsynced.send_modify(|pending| {
            pending.insert(name);
        });
        SourceSync {
            store: self.clone(),
            name,
        }
    }

    /// The sources still to list once (empty: ready).
    pub fn unsynced(&self) -> BTreeSet<&'static str> {
        self.unsynced.borrow().clone()
    }

    /// Waits until every registered source has listed once.
    pub async fn synced(&self) {
        let mut pending = self.unsynced.subscribe();
        let _ = pending.wait_for(BTreeSet::is_empty).await;
    }

    /// Follows every published version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// Follows changes of the refusals (their content is [`PolicyStore::refusals`]).
    pub fn subscribe_refusals(&self) -> watch::Receiver<u64> {
        self.refusals_changed.subscribe()
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
    /// as `Err`). A document that is malformed, clashes with another or
    /// oversteps its namespace is refused, and the last good content of
    /// `key` stays in force where it still fits.
    pub fn put(
        &self,
        key: DocumentKey,
        document: Result<PolicyDocument, ConfigError>,
    ) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let before = inner.refusals.clone();
        let outcome = match document {
            Err(err) => {
                inner.held.remove(&key);
                let refusal = refuse(&mut inner, key, err.to_string());
                self.restore_last_good(&mut inner, &refusal.key);
                Err(refusal)
            }
            Ok(document) => match admissible(&inner.state, &key, &document) {
                Err(message) => {
                    inner.held.insert(key.clone(), document);
                    let refusal = refuse(&mut inner, key, message);
                    self.restore_last_good(&mut inner, &refusal.key);
                    Err(refusal)
                }
                Ok(()) => {
                    inner.held.remove(&key);
                    inner.refusals.remove(&key);
                    if inner.state.documents.get(&key) != Some(&document) {
                        inner.state.documents.insert(key.clone(), document.clone());
                        inner.last_good.insert(key.clone(), document);
                        tracing::info!(document = %key, "policy accepted");
                        settle(&mut inner);
                        self.publish(&mut inner);
                        save(&inner);
                    }
                    Ok(())
                }
            },
        };
        self.refusals_updated(&inner, &before);
        outcome
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
        if admissible(&inner.state, key, &document).is_ok() {
            tracing::warn!(document = %key, "using its last good version, saved earlier");
            inner.state.documents.insert(key.clone(), document);
            settle(inner);
            self.publish(inner);
        }
    }

    /// Forgets `key` (its file or ConfigMap was deleted).
    pub fn remove(&self, key: &DocumentKey) {
        let mut inner = self.lock();
        let before = inner.refusals.clone();
        inner.refusals.remove(key);
        inner.held.remove(key);
        inner.last_good.remove(key);
        if inner.state.documents.remove(key).is_some() {
            tracing::info!(document = %key, "policy removed");
            settle(&mut inner);
            self.publish(&mut inner);
            save(&inner);
        }
        self.refusals_updated(&inner, &before);
    }

    /// Keys of the accepted or refused documents from `source`.
    pub fn keys(&self, source: &str) -> Vec<DocumentKey> {
        let inner = self.lock();
        let mut keys: Vec<DocumentKey> = inner
            .state
            .documents
            .keys()
            .chain(inner.refusals.keys())
            .filter(|k| k.source == source)
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Sets the members of the discovered pools: exactly `pools`, with
    /// the admin addresses of those that have one.
    pub fn set_discovered_pools(
        &self,
        pools: BTreeMap<PoolKey, PoolSpec>,
        admins: BTreeMap<String, String>,
    ) {
        let mut inner = self.lock();
        if inner.state.discovered_pools != pools || inner.state.member_admins != admins {
            inner.state.discovered_pools = pools;
            inner.state.member_admins = admins;
            self.publish(&mut inner);
        }
    }

    /// Asks every worker of `dataset`'s pool to warm it (they see the order
    /// in their next snapshot and start it once); the order, or why not.
    pub fn order_warm(
        &self,
        dataset: &str,
        prefix: String,
        concurrency: usize,
        bytes_per_second: Option<u64>,
    ) -> Result<WarmOrder, WarmOrderError> {
        let bad = |why: String| Err(WarmOrderError::Bad(why));
        if !(1..=256).contains(&concurrency) {
            return bad(format!("concurrency must be 1 to 256, not {concurrency}"));
        }
        if bytes_per_second == Some(0) {
            return bad("bytes_per_second must be more than 0".to_owned());
        }
        if prefix.len() > 1024 {
            return bad("the prefix is longer than 1024 bytes".to_owned());
        }
        let mut inner = self.lock();
        let known = inner
            .state
            .documents
            .values()
            .any(|d| d.policy.datasets.iter().any(|p| p.name == dataset));
        if !known {
            return Err(WarmOrderError::UnknownDataset(dataset.to_owned()));
        }
        // Above any earlier order's, across restarts too (the clock).
        let id = next_version(inner.last_warm_id);
        inner.last_warm_id = id;
        let order = WarmOrder {
            dataset: dataset.to_owned(),
            id,
            prefix,
            concurrency,
            bytes_per_second,
        };
        inner
            .state
            .warm_orders
            .insert(dataset.to_owned(), order.clone());
        self.publish(&mut inner);
        save(&inner);
        Ok(order)
    }

    /// Takes up orders another replica took (shared through the Kubernetes
    /// source): a data set's order is replaced only by a newer one.
    pub fn adopt_warm_orders(&self, orders: impl IntoIterator<Item = WarmOrder>) {
        let mut inner = self.lock();
        let mut changed = false;
        for order in orders {
            if inner
                .state
                .warm_orders
                .get(&order.dataset)
                .is_some_and(|held| held.id >= order.id)
            {
                continue;
            }
            tracing::info!(dataset = %order.dataset, id = order.id, "warm-up ordered through another replica");
            inner.last_warm_id = inner.last_warm_id.max(order.id);
            inner.state.warm_orders.insert(order.dataset.clone(), order);
            changed = true;
        }
        if changed {
            self.publish(&mut inner);
            save(&inner);
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
        inner.version = next_version(inner.version);
        gauge!("config_version").set(inner.version as f64);
        let published = Arc::new(Published {
            version: inner.version,
            state: Arc::new(inner.state.clone()),
            rendered: Mutex::new(HashMap::new()),
        });
        self.published.send_replace(published);
    }

    fn refusals_updated(&self, inner: &Inner, before: &BTreeMap<DocumentKey, Refusal>) {
        if inner.refusals != *before {
            gauge!("policy_documents_refused").set(inner.refusals.len() as f64);
            self.refusals_changed.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The version after `previous`: higher, and at least the wall clock in
/// milliseconds, so a restarted control plane (or another replica) never
/// streams a version lower than one proxies already hold.
fn next_version(previous: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    (previous + 1).max(now)
}

/// Brings the documents in force back in line after a change: a namespace's
/// document the mesh admin no longer allows is withdrawn (and held), and a
/// held document that fits now is accepted.
fn settle(inner: &mut Inner) {
    // Each round accepts or withdraws at least one document, so this ends.
    for _ in 0..=inner.state.documents.len() + inner.held.len() {
        let overstepping: Vec<(DocumentKey, String)> = inner
            .state
            .documents
            .iter()
            .filter_map(|(key, document)| {
                super::tenancy::check(document, &inner.state)
                    .err()
                    .map(|why| (key.clone(), why))
            })
            .collect();
        let mut changed = false;
        for (key, why) in overstepping {
            if let Some(document) = inner.state.documents.remove(&key) {
                tracing::warn!(document = %key, "withdrawn: the mesh admin no longer allows it");
                inner.held.entry(key.clone()).or_insert(document);
                refuse(inner, key, why);
                changed = true;
            }
        }
        let fitting: Vec<(DocumentKey, PolicyDocument)> = inner
            .held
            .iter()
            .filter(|(key, document)| admissible(&inner.state, key, document).is_ok())
            .map(|(key, document)| (key.clone(), document.clone()))
            .collect();
        // One at a time: two held documents may fit alone but clash together.
        if let Some((key, document)) = fitting.into_iter().next() {
            tracing::info!(document = %key, "policy accepted: what stood in its way is gone");
            inner.held.remove(&key);
            inner.refusals.remove(&key);
            inner.last_good.insert(key.clone(), document.clone());
            inner.state.documents.insert(key, document);
            changed = true;
        }
        if !changed {
            return;
        }
    }
}

/// Whether `document` can be the content of `key` next to the others in force.
fn admissible(
    state: &MeshState,
    key: &DocumentKey,
    document: &PolicyDocument,
) -> Result<(), String> {
    clashes(state, key, document)?;
    super::tenancy::check(document, state)
}

fn load_saved(path: &Path) -> Saved {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Saved::default(),
        Err(err) => {
            tracing::error!(path = %path.display(), %err, "cannot read the saved policies");
            return Saved::default();
        }
    };
    match from_yaml(&text, &path.display().to_string()) {
        Ok(saved) => saved,
        Err(err) => {
            tracing::error!(%err, "the saved policies are unreadable; starting without them");
            Saved::default()
        }
    }
}

fn saved_documents(documents: Vec<SavedDocument>) -> BTreeMap<DocumentKey, PolicyDocument> {
    documents
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

/// Writes the last good documents and the warm-up orders beside the CA
/// (temporary file, then rename).
fn save(inner: &Inner) {
    let Some(path) = &inner.saved_to else {
        return;
    };
    let saved = Saved {
        version: inner.version,
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
        warm_orders: inner.state.warm_orders.values().cloned().collect(),
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
    if inner.refusals.get(&refusal.key) != Some(&refusal) {
        tracing::error!(%refusal, "policy refused; the last good version stays in force where it fits");
        counter!("policy_refused_total", "source" => refusal.key.source).increment(1);
    }
    inner.refusals.insert(refusal.key.clone(), refusal.clone());
    refusal
}

/// Names that must be unique across the mesh: a data set's name and bucket
/// (workers serve every data set), and a pool's name within its scope.
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
        if other.namespace != document.namespace {
            continue;
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
        let key = PoolKey {
            namespace: document.namespace.clone(),
            name: pool.name.clone(),
        };
        if state.discovered_pools.contains_key(&key) {
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

    /// A fresh directory and the saved-policies file in it.
    fn saved_file(label: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let saved = dir.join("policies.yaml");
        (dir, saved)
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
        let (dir, saved) = saved_file("ferry-store");
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
    fn a_warm_order_outlives_a_restart() {
        let (dir, saved) = saved_file("ferry-warm-orders");
        let store = PolicyStore::new("cluster.local", Vec::new(), Some(saved.clone()));
        store
            .put(key("a.yaml"), Ok(document(GOOD)))
            .expect("accepted");
        let order = store
            .order_warm("imagenet", "train/".into(), 8, Some(1 << 20))
            .expect("ordered");

        // Workers that start after the restart still find it in their snapshot.
        let restarted = PolicyStore::new("cluster.local", Vec::new(), Some(saved));
        let state = restarted.current().state.clone();
        assert_eq!(state.warm_orders.get("imagenet"), Some(&order));
        restarted
            .put(key("a.yaml"), Ok(document(GOOD)))
            .expect("accepted");
        let next = restarted
            .order_warm("imagenet", String::new(), 8, None)
            .expect("ordered");
        assert!(
            next.id > order.id,
            "a new order is a new one after a restart too"
        );
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
        assert_eq!(store.refusals().len(), 2);
        // What stood in their way goes: both are accepted, no edit needed.
        store.remove(&key("a.yaml"));
        let documents: Vec<String> = store
            .current()
            .state
            .documents
            .keys()
            .map(|k| k.name.clone())
            .collect();
        assert_eq!(documents, ["b.yaml", "c.yaml"]);
        assert!(store.refusals().is_empty());
    }

    #[test]
    fn versions_grow_across_restarts_even_when_the_clock_does_not() {
        let (dir, saved) = saved_file("ferry-versions");
        let store = PolicyStore::new("cluster.local", Vec::new(), Some(saved.clone()));
        store
            .put(key("a.yaml"), Ok(document(GOOD)))
            .expect("accepted");
        let before = store.current().version;
        // A version far ahead of this machine's clock (another replica's, or
        // a clock set back since): the next run still goes above it.
        let ahead = before + 3_600_000;
        let text = std::fs::read_to_string(&saved).expect("saved");
        std::fs::write(
            &saved,
            text.replace(&format!("version: {before}"), &format!("version: {ahead}")),
        )
        .expect("rewrite");
        let restarted = PolicyStore::new("cluster.local", Vec::new(), Some(saved));
        assert!(restarted.current().version > ahead);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_namespace_document_waits_for_its_allowance_and_leaves_with_it() {
        let store = PolicyStore::new("cluster.local", Vec::new(), None);
        let job = DocumentKey {
            source: "configmap",
            name: "train/job".into(),
        };
        let mesh = DocumentKey {
            source: "configmap",
            name: "ferry-system/mesh".into(),
        };
        let laion = PolicyDocument {
            namespace: Some("train".into()),
            policy: from_yaml(
                "datasets:\n  - { name: laion, bucket: laion, origin: \"s3://d/train/l/\" }\n",
                "job",
            )
            .expect("policy"),
        };
        let tenants = |origins: &str| {
            document(&format!(
                "tenants:\n  - {{ namespace: train, origins: [{origins}] }}\n"
            ))
        };
        assert!(
            store.put(job.clone(), Ok(laion)).is_err(),
            "no allowance yet"
        );
        store
            .put(mesh.clone(), Ok(tenants("\"s3://d/train/\"")))
            .expect("tenants");
        assert!(
            store.current().state.documents.contains_key(&job),
            "accepted once allowed"
        );
        store.put(mesh, Ok(tenants(""))).expect("tenants");
        assert!(!store.current().state.documents.contains_key(&job));
        let refusal = store.refusals().pop().expect("refused again");
        assert!(refusal.message.contains("no origins"), "{refusal}");
    }
}
