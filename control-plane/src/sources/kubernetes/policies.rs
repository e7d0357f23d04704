//! Policy ConfigMaps (`ferry.dev/policy: "true"`, key `policy.yaml`) into
//! the store. A refused one gets an `InvalidPolicy` Event; its last good
//! version stays in force.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use ferry_config::{ConfigError, PolicyFile, from_yaml};

use super::events::{self, INVALID_POLICY};
use super::{POLICY_KEY, POLICY_LABEL};
use crate::policy::{DocumentKey, PolicyDocument, PolicyStore};

/// Source name in document keys and metrics.
const SOURCE: &str = "configmap";

/// Follows policy ConfigMaps of every namespace until the process ends.
pub async fn run(client: Client, store: Arc<PolicyStore>, own_namespace: String) {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let selector = format!("{POLICY_LABEL}=true");
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut follower = Follower {
        client,
        store,
        own_namespace,
        listed: None,
        reported: HashMap::new(),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => follower.handle(event).await,
            // The watcher retries with backoff (and relists after 410 Gone).
            Err(err) => tracing::warn!(%err, "watching policy ConfigMaps"),
        }
    }
}

struct Follower {
    client: Client,
    store: Arc<PolicyStore>,
    own_namespace: String,
    /// ConfigMaps seen during a (re)list, to forget the ones that are gone.
    listed: Option<BTreeSet<DocumentKey>>,
    /// Content last reported as refused, per ConfigMap: one Event per bad
    /// version, not one per relist.
    reported: HashMap<DocumentKey, String>,
}

impl Follower {
    async fn handle(&mut self, event: Event<ConfigMap>) {
        match event {
            Event::Init => self.listed = Some(BTreeSet::new()),
            Event::InitApply(map) => {
                let key = self.apply(&map).await;
                if let Some(listed) = &mut self.listed {
                    listed.insert(key);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.listed.take() {
                    for key in self.store.keys(SOURCE) {
                        if !listed.contains(&key) {
                            self.store.remove(&key);
                            self.reported.remove(&key);
                        }
                    }
                }
            }
            Event::Apply(map) => {
                self.apply(&map).await;
            }
            Event::Delete(map) => {
                let key = key_of(&map);
                self.store.remove(&key);
                self.reported.remove(&key);
            }
        }
    }

    async fn apply(&mut self, map: &ConfigMap) -> DocumentKey {
        let key = key_of(map);
        let namespace = map.namespace().unwrap_or_default();
        let scope = (namespace != self.own_namespace).then_some(namespace);
        let file = format!("ConfigMap {} key {POLICY_KEY}", key.name);
        let text = map.data.as_ref().and_then(|d| d.get(POLICY_KEY));
        let document = match text {
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
        match self.store.put(key.clone(), document) {
            Ok(()) => {
                self.reported.remove(&key);
            }
            Err(refusal) => {
                let content = text.cloned().unwrap_or_default();
                if self.reported.get(&key) != Some(&content) {
                    events::warn(&self.client, map, INVALID_POLICY, &refusal.message).await;
                    self.reported.insert(key.clone(), content);
                }
            }
        }
        key
    }
}

fn key_of(map: &ConfigMap) -> DocumentKey {
    DocumentKey {
        source: SOURCE,
        name: format!("{}/{}", map.namespace().unwrap_or_default(), map.name_any()),
    }
}
