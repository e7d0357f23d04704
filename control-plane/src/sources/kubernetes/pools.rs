//! Worker pools from Services labelled `ferry.dev/cache-pool: <pool>`: the
//! members are the ready endpoints of their EndpointSlices (a terminating
//! endpoint leaves the pool: sidecars send it no new chunks, and requests
//! already on it finish), each expected to present the identity of its
//! Pod's service account. The EndpointSlice controller copies a Service's
//! labels to its slices, so both watches filter on the same label.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use ferry_config::{BalanceSpec, MemberSpec, PoolSpec, SpiffeId};

use super::POOL_LABEL;
use crate::policy::PolicyStore;

/// Label the EndpointSlice controller puts on a slice: its Service's name.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Name of the slice port sidecars use, when a slice has several.
const INBOUND_PORT: &str = "inbound";

/// Pods whose service account is remembered at most.
const MAX_ACCOUNTS: usize = 4096;

/// `namespace/name`.
type ObjectKey = String;

/// Changes of either watched kind.
enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
}

/// Follows pool Services and their slices until the process ends.
pub async fn run(client: Client, store: Arc<PolicyStore>, trust_domain: String) {
    let config = watcher::Config::default().labels(POOL_LABEL);
    let services = watcher::watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Service(Box::new(e))));
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), config)
        .default_backoff()
        .map(|e| e.map(|e| Change::Slice(Box::new(e))));
    let mut changes = std::pin::pin!(futures::stream::select(services, slices));
    let mut index = PoolIndex {
        client,
        store,
        trust_domain,
        services: BTreeMap::new(),
        slices: BTreeMap::new(),
        accounts: HashMap::new(),
        listed_services: None,
        listed_slices: None,
        published: BTreeSet::new(),
    };
    while let Some(change) = changes.next().await {
        match change {
            Ok(Change::Service(event)) => index.service(*event),
            Ok(Change::Slice(event)) => index.slice(*event).await,
            Err(err) => tracing::warn!(%err, "watching pool Services and EndpointSlices"),
        }
        index.publish();
    }
}

struct PoolIndex {
    client: Client,
    store: Arc<PolicyStore>,
    trust_domain: String,
    /// Pool Services and the pool each names.
    services: BTreeMap<ObjectKey, String>,
    /// Slices: their Service and their ready members.
    slices: BTreeMap<ObjectKey, (ObjectKey, Vec<MemberSpec>)>,
    /// Service account of each Pod looked up (`namespace/name` → account).
    accounts: HashMap<ObjectKey, String>,
    listed_services: Option<BTreeSet<ObjectKey>>,
    listed_slices: Option<BTreeSet<ObjectKey>>,
    /// Pools this source has put in the store.
    published: BTreeSet<String>,
}

impl PoolIndex {
    fn service(&mut self, event: Event<Service>) {
        match event {
            Event::Init => self.listed_services = Some(BTreeSet::new()),
            Event::InitApply(service) | Event::Apply(service) => {
                let key = object_key(&service);
                if let Some(pool) = service.labels().get(POOL_LABEL) {
                    self.services.insert(key.clone(), pool.clone());
                }
                if let Some(listed) = &mut self.listed_services {
                    listed.insert(key);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.listed_services.take() {
                    self.services.retain(|key, _| listed.contains(key));
                }
            }
            Event::Delete(service) => {
                self.services.remove(&object_key(&service));
            }
        }
    }

    async fn slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => self.listed_slices = Some(BTreeSet::new()),
            Event::InitApply(slice) | Event::Apply(slice) => {
                let key = object_key(&slice);
                let namespace = slice.namespace().unwrap_or_default();
                let service = slice
                    .labels()
                    .get(SERVICE_NAME_LABEL)
                    .map(|name| format!("{namespace}/{name}"))
                    .unwrap_or_default();
                let members = self.members(&slice).await;
                self.slices.insert(key.clone(), (service, members));
                if let Some(listed) = &mut self.listed_slices {
                    listed.insert(key);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.listed_slices.take() {
                    self.slices.retain(|key, _| listed.contains(key));
                }
            }
            Event::Delete(slice) => {
                self.slices.remove(&object_key(&slice));
            }
        }
    }

    /// The ready endpoints of `slice`, with their expected identities.
    async fn members(&mut self, slice: &EndpointSlice) -> Vec<MemberSpec> {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(INBOUND_PORT))
            .or_else(|| ports.first())
            .and_then(|p| p.port);
        let Some(port) = port else {
            return Vec::new();
        };
        let mut members = Vec::new();
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // Unset `ready` means ready; terminating endpoints are never ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready {
                continue;
            }
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let identity = match &endpoint.target_ref {
                Some(pod) if pod.kind.as_deref() == Some("Pod") => self.identity_of(pod).await,
                _ => None,
            };
            let host = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            members.push(MemberSpec {
                address: format!("{host}:{port}"),
                weight: 1,
                zone: endpoint.zone.clone(),
                identity,
            });
        }
        members
    }

    /// The SPIFFE ID of a Pod's service account, looked up once per Pod.
    async fn identity_of(
        &mut self,
        pod: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Option<SpiffeId> {
        let namespace = pod.namespace.clone()?;
        let name = pod.name.clone()?;
        let key = format!("{namespace}/{name}");
        if !self.accounts.contains_key(&key) {
            if self.accounts.len() >= MAX_ACCOUNTS {
                // Pods come and go; looking some up again is cheap.
                self.accounts.clear();
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            match api.get(&name).await {
                Ok(found) => {
                    let account = found
                        .spec
                        .and_then(|s| s.service_account_name)
                        .unwrap_or_else(|| "default".to_owned());
                    self.accounts.insert(key.clone(), account);
                }
                Err(err) => {
                    tracing::warn!(pod = %key, %err, "cannot read a worker Pod: its identity is not pinned");
                    return None;
                }
            }
        }
        let account = self.accounts.get(&key)?;
        SpiffeId::workload(&self.trust_domain, &namespace, account).ok()
    }

    /// Puts every pool's members in the store; pools no Service names any
    /// more are removed.
    fn publish(&mut self) {
        let mut pools: BTreeMap<&str, Vec<MemberSpec>> = BTreeMap::new();
        for pool in self.services.values() {
            pools.entry(pool.as_str()).or_default();
        }
        for (service, members) in self.slices.values() {
            if let Some(pool) = self.services.get(service) {
                pools
                    .entry(pool.as_str())
                    .or_default()
                    .extend(members.iter().cloned());
            }
        }
        for (name, mut members) in pools.clone() {
            members.sort_by(|a, b| a.address.cmp(&b.address));
            members.dedup_by(|a, b| a.address == b.address);
            self.store.set_discovered_pool(
                name,
                Some(PoolSpec {
                    name: name.to_owned(),
                    members,
                    identity: None,
                    balance: BalanceSpec::default(),
                }),
            );
        }
        let current: BTreeSet<String> = pools.keys().map(|p| (*p).to_owned()).collect();
        for gone in self.published.difference(&current) {
            self.store.set_discovered_pool(gone, None);
        }
        self.published = current;
    }
}

fn object_key<K: ResourceExt>(object: &K) -> ObjectKey {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}
