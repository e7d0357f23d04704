//! Policy ConfigMaps (`ferry.dev/policy: "true"`, key `policy.yaml`) into
//! the store. A refused one gets an `InvalidPolicy` Event — also when it is
//! refused later, because the mesh admin withdrew what it relied on; its
//! last good version stays in force where it still fits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use ferry_config::{ConfigError, PolicyFile, from_yaml};

use super::events::{self, INVALID_POLICY};
use super::{POLICY_KEY, POLICY_LABEL};
use crate::policy::{DocumentKey, PolicyDocument, PolicyStore, SourceSync};

/// Source name in document keys and metrics.
const SOURCE: &str = "configmap";

/// Follows policy ConfigMaps of every namespace until the process ends;
/// `sync` is kept once the first list is applied.
pub async fn run(client: Client, store: Arc<PolicyStore>, own_namespace: String, sync: SourceSync) {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let selector = format!("{POLICY_LABEL}=true");
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut refusals = store.subscribe_refusals();
    let mut follower = Follower {
        client,
        store,
        own_namespace,
        relist: None,
        references: HashMap::new(),
        reported: HashMap::new(),
        sync: Some(sync),
    };
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(event)) => follower.handle(event),
                // The watcher retries with backoff (and relists after 410 Gone).
                Some(Err(err)) => tracing::warn!(%err, "watching policy ConfigMaps"),
                None => return,
            },
            changed = refusals.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        follower.report().await;
    }
}

struct Follower {
    client: Client,
    store: Arc<PolicyStore>,
    own_namespace: String,
    /// ConfigMaps of a (re)list under way: applied together when it ends.
    relist: Option<Vec<ConfigMap>>,
    /// What each ConfigMap's Events refer to.
    references: HashMap<DocumentKey, ObjectReference>,
    /// The refusal last reported per ConfigMap: one Event per refusal, not
    /// one per relist.
    reported: HashMap<DocumentKey, String>,
    sync: Option<SourceSync>,
}

impl Follower {
    fn handle(&mut self, event: Event<ConfigMap>) {
        match event {
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(map) => match &mut self.relist {
                Some(listed) => listed.push(map),
                None => self.apply(&map),
            },
            Event::InitDone => {
                let mut listed = self.relist.take().unwrap_or_default();
                // The mesh admin's first: a namespace's document is judged by
                // the tenants table, which must be in force before it.
                listed.sort_by_key(|map| map.namespace().as_deref() != Some(&self.own_namespace));
                let mut seen = BTreeSet::new();
                for map in &listed {
                    self.apply(map);
                    seen.insert(key_of(map));
                }
                for key in self.store.keys(SOURCE) {
                    if !seen.contains(&key) {
                        self.forget(&key);
                    }
                }
                if let Some(sync) = self.sync.take() {
                    sync.listed();
                }
            }
            Event::Apply(map) => self.apply(&map),
            Event::Delete(map) => self.forget(&key_of(&map)),
        }
    }

    fn apply(&mut self, map: &ConfigMap) {
        let key = key_of(map);
        let namespace = map.namespace().unwrap_or_default();
        let scope = (namespace != self.own_namespace).then_some(namespace);
        let file = format!("ConfigMap {} key {POLICY_KEY}", key.name);
        let document = match map.data.as_ref().and_then(|d| d.get(POLICY_KEY)) {
            None => Err(ConfigError::in_file(
                &file,
                "",
                format!("the ConfigMap has no {POLICY_KEY} key"),
            )),
            Some(text) => from_yaml::<PolicyFile>(text, &file)
                .and_then(|policy| policy.check(&file).map(|()| policy))
                .map(|policy| PolicyDocument {
                    namespace: scope,
                    policy,
                }),
        };
        self.references.insert(key.clone(), events::reference(map));
        // A refusal is reported by `report`, with the ones settling causes.
        let _ = self.store.put(key, document);
    }

    fn forget(&mut self, key: &DocumentKey) {
        self.store.remove(key);
        self.references.remove(key);
        self.reported.remove(key);
    }

    /// Posts an `InvalidPolicy` Event for each ConfigMap refused since the
    /// last report, for whatever reason.
    async fn report(&mut self) {
        let refusals: Vec<_> = self
            .store
            .refusals()
            .into_iter()
            .filter(|r| r.key.source == SOURCE)
            .collect();
        self.reported
            .retain(|key, _| refusals.iter().any(|r| &r.key == key));
        for refusal in refusals {
            if self.reported.get(&refusal.key) == Some(&refusal.message) {
                continue;
            }
            if let Some(reference) = self.references.get(&refusal.key) {
                events::warn(&self.client, reference, INVALID_POLICY, &refusal.message).await;
            }
            self.reported.insert(refusal.key, refusal.message);
        }
    }
}

fn key_of(map: &ConfigMap) -> DocumentKey {
    DocumentKey {
        source: SOURCE,
        name: format!("{}/{}", map.namespace().unwrap_or_default(), map.name_any()),
    }
}
