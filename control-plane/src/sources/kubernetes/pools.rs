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

/// Objects of one kind as their watcher reports them. A relist (at start,
/// or after 410 Gone) ends by dropping what it did not list, so an object
/// deleted while the watch was down does not linger.
struct Relisted<V> {
    objects: BTreeMap<ObjectKey, V>,
    /// Keys seen so far in a relist under way.
    relisting: Option<BTreeSet<ObjectKey>>,
}

impl<V> Default for Relisted<V> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relisting: None,
        }
    }
}

impl<V> Relisted<V> {
    /// A relist starts (`Event::Init`).
    fn begin(&mut self) {
        self.relisting = Some(BTreeSet::new());
    }

    /// An object listed or changed, with what is kept of it (if anything).
    fn seen(&mut self, key: ObjectKey, value: Option<V>) {
        if let Some(value) = value {
            self.objects.insert(key.clone(), value);
        }
        if let Some(listed) = &mut self.relisting {
            listed.insert(key);
        }
    }

    /// The relist is complete (`Event::InitDone`).
    fn end(&mut self) {
        if let Some(listed) = self.relisting.take() {
            self.objects.retain(|key, _| listed.contains(key));
        }
    }

    /// An object deleted (`Event::Delete`).
    fn remove(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }
}

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
        services: Relisted::default(),
        slices: Relisted::default(),
        accounts: HashMap::new(),
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
    services: Relisted<String>,
    /// Slices: their Service and their ready members.
    slices: Relisted<(ObjectKey, Vec<MemberSpec>)>,
    /// Service account of each Pod looked up (`namespace/name` → account).
    accounts: HashMap<ObjectKey, String>,
    /// Pools this source has put in the store.
    published: BTreeSet<String>,
}

impl PoolIndex {
    fn service(&mut self, event: Event<Service>) {
        match event {
            Event::Init => self.services.begin(),
            Event::InitApply(service) | Event::Apply(service) => {
                let pool = service.labels().get(POOL_LABEL).cloned();
                self.services.seen(object_key(&service), pool);
            }
            Event::InitDone => self.services.end(),
            Event::Delete(service) => self.services.remove(&object_key(&service)),
        }
    }

    async fn slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Init => self.slices.begin(),
            Event::InitApply(slice) | Event::Apply(slice) => {
                let namespace = slice.namespace().unwrap_or_default();
                let service = slice
                    .labels()
                    .get(SERVICE_NAME_LABEL)
                    .map(|name| format!("{namespace}/{name}"))
                    .unwrap_or_default();
                let members = self.members(&slice).await;
                self.slices
                    .seen(object_key(&slice), Some((service, members)));
            }
            Event::InitDone => self.slices.end(),
            Event::Delete(slice) => self.slices.remove(&object_key(&slice)),
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
        for pool in self.services.objects.values() {
            pools.entry(pool.as_str()).or_default();
        }
        for (service, members) in self.slices.objects.values() {
            if let Some(pool) = self.services.objects.get(service) {
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
