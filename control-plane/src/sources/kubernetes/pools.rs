//! Worker pools from Services labelled `ferry.dev/cache-pool: <pool>`.
//!
//! A Service in the control plane's namespace makes a mesh-wide pool; one in
//! any other namespace a pool for that namespace's sidecars only. Members are
//! the ready endpoints of the Service's EndpointSlices (found by
//! `kubernetes.io/service-name`, whatever labels the slices carry), of the
//! Service's first IP family, on the port named `inbound` (else the first);
//! a port named `admin` gives each member's admin address, so `ferryctl`
//! can follow workers that watch another control-plane replica.
//! A terminating endpoint leaves the pool: sidecars send it no new chunks,
//! and requests already on it finish. Each member must present the identity
//! of its Pod's service account, looked up by the Pod's uid (a Pod re-created
//! under the same name is a new uid, so a new lookup). An endpoint with no
//! Pod (or whose Pod cannot be read) joins only when the Service names the
//! workers' identity in `ferry.dev/worker-identity`; never as "any workload".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use ferry_config::{BalanceSpec, MemberSpec, PoolSpec, SpiffeId, SpiffePattern};

use super::POOL_LABEL;
use super::events::{self, INVALID_POOL};
use crate::policy::{PolicyStore, PoolKey, SourceSync};

/// Label the EndpointSlice controller puts on a slice: its Service's name.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation of a pool Service naming the identity of members without a Pod.
pub const WORKER_IDENTITY_ANNOTATION: &str = "ferry.dev/worker-identity";
/// Name of the slice port sidecars use, when a slice has several.
const INBOUND_PORT: &str = "inbound";
/// Name of the slice port of the workers' admin listener.
const ADMIN_PORT: &str = "admin";
/// How soon a member whose Pod could not be read is looked up again.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(2);
/// Slice events waiting for the pool index at most.
const SLICE_EVENTS: usize = 256;

/// `namespace/name`.
type ObjectKey = String;

/// Objects of one kind as their watcher reports them. A relist (at start,
/// or after 410 Gone) ends by dropping what it did not list, so an object
/// deleted while the watch was down does not linger.
struct Relisted<V> {
    objects: BTreeMap<ObjectKey, V>,
    /// Keys seen so far in a relist under way.
    relisting: Option<BTreeSet<ObjectKey>>,
    /// Whether one list has completed.
    listed: bool,
}

impl<V> Default for Relisted<V> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relisting: None,
            listed: false,
        }
    }
}

impl<V> Relisted<V> {
    /// Applies one watch event, `value` making what is kept of an object.
    fn apply<K: ResourceExt>(&mut self, event: Event<K>, mut value: impl FnMut(&K) -> Option<V>) {
        match event {
            Event::Init => self.relisting = Some(BTreeSet::new()),
            Event::InitApply(object) | Event::Apply(object) => {
                let key = object_key(&object);
                match value(&object) {
                    Some(value) => {
                        self.objects.insert(key.clone(), value);
                    }
                    None => {
                        self.objects.remove(&key);
                    }
                }
                if let Some(listed) = &mut self.relisting {
                    listed.insert(key);
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.take() {
                    self.objects.retain(|key, _| listed.contains(key));
                }
                self.listed = true;
            }
            Event::Delete(object) => {
                self.objects.remove(&object_key(&object));
            }
        }
    }
}

/// What a pool Service says.
#[derive(Clone, Debug, PartialEq)]
struct PoolService {
    pool: PoolKey,
    /// `IPv4` or `IPv6`: the slices of this address type count.
    family: String,
    /// The identity of members without a Pod.
    identity: Option<SpiffeId>,
}

/// One ready endpoint of a slice.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    address: String,
    /// `host:port` of its admin listener, when the slice names that port.
    admin: Option<String>,
    zone: Option<String>,
    /// The Pod behind it: namespace, name, uid.
    pod: Option<(String, String, String)>,
}

/// What a slice says.
#[derive(Clone, Debug, PartialEq)]
struct Slice {
    address_type: String,
    endpoints: Vec<Endpoint>,
}

/// Follows pool Services and their slices until the process ends; `sync`
/// is kept once every pool has been listed and its members looked up.
pub async fn run(
    client: Client,
    store: Arc<PolicyStore>,
    own_namespace: String,
    trust_domain: String,
    sync: SourceSync,
) {
    let config = watcher::Config::default().labels(POOL_LABEL);
    let services = watcher::watcher(Api::<Service>::all(client.clone()), config).default_backoff();
    let mut services = std::pin::pin!(services);
    let (slice_events, mut slice_changes) = mpsc::channel(SLICE_EVENTS);
    let mut index = PoolIndex {
        client,
        store,
        own_namespace,
        trust_domain,
        services: Relisted::default(),
        slices: HashMap::new(),
        watches: HashMap::new(),
        slice_events,
        accounts: HashMap::new(),
        unresolved: false,
        sync: Some(sync),
    };
    let mut retry = tokio::time::interval(RETRY_UNRESOLVED);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = services.next() => match event {
                Some(Ok(event)) => index.service(event).await,
                Some(Err(err)) => tracing::warn!(%err, "watching pool Services"),
                None => return,
            },
            Some((service, event)) = slice_changes.recv() => index.slice(service, event),
            _ = retry.tick(), if index.unresolved => {}
        }
        index.publish().await;
    }
}

struct PoolIndex {
    client: Client,
    store: Arc<PolicyStore>,
    own_namespace: String,
    trust_domain: String,
    /// Pool Services.
    services: Relisted<PoolService>,
    /// Each pool Service's slices.
    slices: HashMap<ObjectKey, Relisted<Slice>>,
    /// The slice watch of each pool Service.
    watches: HashMap<ObjectKey, AbortHandle>,
    slice_events: mpsc::Sender<(ObjectKey, Event<EndpointSlice>)>,
    /// Service account of each Pod looked up, by uid.
    accounts: HashMap<String, String>,
    /// Whether some member's Pod could not be read (then it is retried).
    unresolved: bool,
    sync: Option<SourceSync>,
}

impl PoolIndex {
    async fn service(&mut self, event: Event<Service>) {
        let mut invalid = Vec::new();
        let own_namespace = self.own_namespace.clone();
        self.services.apply(event, |service| {
            let (pool, problem) = pool_service(service, &own_namespace);
            if let Some(problem) = problem {
                invalid.push((events::reference(service), problem));
            }
            pool
        });
        for (reference, problem) in invalid {
            tracing::warn!(service = ?reference.name, %problem, "pool Service");
            events::warn(&self.client, &reference, INVALID_POOL, &problem).await;
        }
        // One slice watch per pool Service, no more, no less.
        let wanted: Vec<ObjectKey> = self.services.objects.keys().cloned().collect();
        self.watches.retain(|service, watch| {
            let keep = wanted.contains(service);
            if !keep {
                watch.abort();
            }
            keep
        });
        self.slices.retain(|service, _| wanted.contains(service));
        for service in wanted {
            if !self.watches.contains_key(&service) {
                let watch = spawn_slice_watch(&self.client, &service, self.slice_events.clone());
                self.watches.insert(service.clone(), watch);
                self.slices.insert(service, Relisted::default());
            }
        }
    }

    fn slice(&mut self, service: ObjectKey, event: Event<EndpointSlice>) {
        // Events of a watch aborted meanwhile find no entry, and are dropped.
        if let Some(slices) = self.slices.get_mut(&service) {
            slices.apply(event, |slice| Some(ready_endpoints(slice)));
        }
    }

    /// Whether everything has been listed once.
    fn listed(&self) -> bool {
        self.services.listed && self.slices.values().all(|s| s.listed)
    }

    /// Looks up the Pods not known yet; puts every pool in the store.
    async fn publish(&mut self) {
        // Until the first full list, a pool would look emptier than it is.
        if self.sync.is_some() && !self.listed() {
            return;
        }
        self.resolve().await;
        let mut pools: BTreeMap<PoolKey, PoolSpec> = BTreeMap::new();
        let mut admins: BTreeMap<String, String> = BTreeMap::new();
        for (key, service) in &self.services.objects {
            let pool = pools
                .entry(service.pool.clone())
                .or_insert_with(|| PoolSpec {
                    name: service.pool.name.clone(),
                    members: Vec::new(),
                    identity: None,
                    balance: BalanceSpec::default(),
                });
            if let Some(identity) = &service.identity
                && pool.identity.is_none()
            {
                pool.identity = identity.as_str().parse::<SpiffePattern>().ok();
            }
            let slices = self
                .slices
                .get(key)
                .into_iter()
                .flat_map(|s| s.objects.values());
            for slice in slices.filter(|s| s.address_type == service.family) {
                for endpoint in &slice.endpoints {
                    let identity = match &endpoint.pod {
                        Some((namespace, _, uid)) => self
                            .accounts
                            .get(uid)
                            .and_then(|account| {
                                SpiffeId::workload(&self.trust_domain, namespace, account).ok()
                            })
                            .or_else(|| service.identity.clone()),
                        None => service.identity.clone(),
                    };
                    // Never "any workload of the trust domain".
                    let Some(identity) = identity else {
                        tracing::debug!(address = %endpoint.address, pool = %service.pool, "member withheld: no Pod identity and no ferry.dev/worker-identity");
                        continue;
                    };
                    if let Some(admin) = &endpoint.admin {
                        admins.insert(endpoint.address.clone(), admin.clone());
                    }
                    pool.members.push(MemberSpec {
                        address: endpoint.address.clone(),
                        weight: 1,
                        zone: endpoint.zone.clone(),
                        identity: Some(identity),
                    });
                }
            }
        }
        for pool in pools.values_mut() {
            pool.members.sort_by(|a, b| a.address.cmp(&b.address));
            pool.members.dedup_by(|a, b| a.address == b.address);
        }
        self.store.set_discovered_pools(pools, admins);
        if let Some(sync) = self.sync.take() {
            sync.listed();
        }
    }

    /// Reads the service account of every member's Pod not known yet, and
    /// forgets Pods no slice names any more.
    async fn resolve(&mut self) {
        let mut named: BTreeMap<String, (String, String)> = BTreeMap::new();
        for slices in self.slices.values() {
            for slice in slices.objects.values() {
                for endpoint in &slice.endpoints {
                    if let Some((namespace, name, uid)) = &endpoint.pod {
                        named.insert(uid.clone(), (namespace.clone(), name.clone()));
                    }
                }
            }
        }
        self.accounts.retain(|uid, _| named.contains_key(uid));
        self.unresolved = false;
        for (uid, (namespace, name)) in named {
            if self.accounts.contains_key(&uid) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            match api.get_opt(&name).await {
                Ok(Some(pod)) if pod.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    let account = pod
                        .spec
                        .and_then(|s| s.service_account_name)
                        .unwrap_or_else(|| "default".to_owned());
                    self.accounts.insert(uid, account);
                }
                Ok(_) => {
                    // Not there yet, or another incarnation: the slice will
                    // say which Pod it means; look again shortly.
                    tracing::debug!(pod = %format!("{namespace}/{name}"), %uid, "a worker Pod is not readable under the slice's uid yet");
                    self.unresolved = true;
                }
                Err(err) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), %err, "cannot read a worker Pod: its member waits");
                    self.unresolved = true;
                }
            }
        }
    }
}

/// The pool a Service makes, and what is wrong with it if anything.
fn pool_service(service: &Service, own_namespace: &str) -> (Option<PoolService>, Option<String>) {
    let Some(name) = service.labels().get(POOL_LABEL) else {
        return (None, None);
    };
    let namespace = service.namespace().unwrap_or_default();
    let family = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first().cloned())
        .unwrap_or_else(|| "IPv4".to_owned());
    let mut problem = None;
    let identity = match service.annotations().get(WORKER_IDENTITY_ANNOTATION) {
        None => None,
        Some(text) => match text.parse::<SpiffeId>() {
            Ok(id) => Some(id),
            Err(err) => {
                problem = Some(format!(
                    "annotation {WORKER_IDENTITY_ANNOTATION}: {err}; members without a Pod are left out"
                ));
                None
            }
        },
    };
    let pool = PoolService {
        pool: PoolKey {
            namespace: (namespace != own_namespace).then_some(namespace),
            name: name.clone(),
        },
        family,
        identity,
    };
    (Some(pool), problem)
}

/// Watches the slices of `service` (`namespace/name`) into `events`.
fn spawn_slice_watch(
    client: &Client,
    service: &ObjectKey,
    events: mpsc::Sender<(ObjectKey, Event<EndpointSlice>)>,
) -> AbortHandle {
    let (namespace, name) = service.split_once('/').unwrap_or(("", service));
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
    let service = service.clone();
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if events.send((service.clone(), event)).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(%service, %err, "watching a pool's EndpointSlices"),
            }
        }
    })
    .abort_handle()
}

/// The ready endpoints of `slice` with their addresses on the inbound port.
fn ready_endpoints(slice: &EndpointSlice) -> Slice {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(INBOUND_PORT))
        .or_else(|| ports.first())
        .and_then(|p| p.port);
    let admin_port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT))
        .and_then(|p| p.port);
    let mut endpoints = Vec::new();
    for endpoint in slice.endpoints.iter().flatten() {
        let conditions = endpoint.conditions.as_ref();
        // Unset `ready` means ready; terminating endpoints are never ready.
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
            && !conditions.and_then(|c| c.terminating).unwrap_or(false);
        let (Some(address), Some(port)) = (endpoint.addresses.first(), port) else {
            continue;
        };
        if !ready {
            continue;
        }
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        };
        let pod = endpoint.target_ref.as_ref().and_then(|pod| {
            (pod.kind.as_deref() == Some("Pod")).then_some(())?;
            Some((
                pod.namespace.clone().or_else(|| slice.namespace())?,
                pod.name.clone()?,
                pod.uid.clone()?,
            ))
        });
        endpoints.push(Endpoint {
            address: format!("{host}:{port}"),
            admin: admin_port.map(|admin| format!("{host}:{admin}")),
            zone: endpoint.zone.clone(),
            pod,
        });
    }
    Slice {
        address_type: slice.address_type.clone(),
        endpoints,
    }
}

fn object_key<K: ResourceExt>(object: &K) -> ObjectKey {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}
