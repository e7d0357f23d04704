//! What one proxy gets: its data sets, the pools they read from, the bundle.

use ferry_config::{
    DatasetPolicy, Datasets, PoolSpec, ProxyConfig, ProxySnapshot, Role, SpiffePattern, WarmPolicy,
};

use super::store::MeshState;

/// Proxies that see the same snapshot: a role and a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewKey {
    /// Sidecar or worker.
    pub role: Role,
    /// The proxy's namespace, from its SPIFFE ID.
    pub namespace: String,
}

/// The snapshot proxies of `key` get from `state` at `version`.
///
/// Sidecars get the mesh-wide data sets and their own namespace's, and the
/// pools they may use: mesh-wide ones and their namespace's (a namespace's
/// pool named like a mesh-wide one is not used: mesh-wide names win). A data
/// set whose pool is not (yet) known is left out until it is. Workers get
/// every data set, each namespace's marked with it, and the mesh-wide pools
/// (to rank chunks for warm-ups). A
/// namespace's data set with no `allow` list is readable by that namespace
/// only. Nothing a proxy would refuse is streamed: what fails the proxies'
/// own validation is withheld and logged.
pub fn snapshot(state: &MeshState, version: u64, key: &ViewKey) -> ProxySnapshot {
    let (pools, mesh_pools) = match key.role {
        Role::Sidecar => (
            usable_pools(state, Some(&key.namespace)),
            usable_pools(state, None),
        ),
        // Workers get the mesh-wide pools: a warm-up ranks chunks by its pool.
        Role::Worker => (usable_pools(state, None), Vec::new()),
    };
    let mut datasets = Vec::new();
    for document in state.documents.values() {
        let visible = match (&key.role, &document.namespace) {
            (Role::Worker, _) | (Role::Sidecar, None) => true,
            (Role::Sidecar, Some(namespace)) => *namespace == key.namespace,
        };
        if !visible {
            continue;
        }
        for dataset in document.policy.datasets.iter() {
            let mut dataset = dataset.clone();
            if key.role == Role::Sidecar {
                // Named outright, so a namespace's own pools never make a
                // mesh-wide data set's choice ambiguous.
                let choices = match document.namespace {
                    None => mesh_pools.as_slice(),
                    Some(_) => pools.as_slice(),
                };
                match dataset.pool_in(choices) {
                    Ok(pool) => dataset.pool = Some(pool.name.clone()),
                    Err(_) => continue,
                }
            }
            if key.role == Role::Worker
                && (dataset.warm != WarmPolicy::Never
                    || state.warm_orders.contains_key(&dataset.name))
            {
                resolve_for_worker(state, document.namespace.as_deref(), &pools, &mut dataset);
            }
            if let Some(namespace) = &document.namespace {
                dataset.namespace = Some(namespace.clone());
                if dataset.allow.is_empty() {
                    let own = format!("spiffe://{}/ns/{namespace}/sa/*", state.trust_domain);
                    dataset.allow = own.parse::<SpiffePattern>().into_iter().collect();
                }
            }
            datasets.push(dataset);
        }
    }
    // Workers get the warm-ups asked of the data sets they serve.
    let warm_orders = match key.role {
        Role::Worker => state
            .warm_orders
            .values()
            .filter(|o| {
                datasets
                    .iter()
                    .any(|d| d.name == o.dataset && d.pool.is_some())
            })
            .cloned()
            .collect(),
        Role::Sidecar => Vec::new(),
    };
    withhold_refusable(
        ProxySnapshot {
            version,
            datasets,
            pools,
            trust_bundle: state.trust_bundle.clone(),
            warm_orders,
        },
        key,
    )
}

/// Names on a worker's copy of `dataset` (one it may be asked to warm) the
/// pool its sidecars read it from, when that is one of the mesh-wide `pools`
/// the worker has; else a worker cannot rank its chunks and does not warm
/// it: its pool is left unnamed and `warm` is `never`.
fn resolve_for_worker(
    state: &MeshState,
    namespace: Option<&str>,
    pools: &[PoolSpec],
    dataset: &mut DatasetPolicy,
) {
    let choices = usable_pools(state, namespace);
    let resolved = dataset
        .pool_in(&choices)
        .ok()
        .filter(|pool| pools.iter().any(|p| p == *pool))
        .map(|pool| pool.name.clone());
    match resolved {
        Some(name) => dataset.pool = Some(name),
        None => {
            tracing::warn!(
                dataset = %dataset.name,
                "a warm-up needs the data set's pool to be mesh-wide; workers will not warm it"
            );
            dataset.warm = WarmPolicy::Never;
            dataset.pool = None;
        }
    }
}

/// The pools a sidecar of `namespace` may use, by name: mesh-wide first
/// (policy documents, then discovered), then its namespace's whose names are
/// not taken. Without a namespace, the mesh-wide ones alone.
fn usable_pools(state: &MeshState, namespace: Option<&str>) -> Vec<PoolSpec> {
    let mut pools: Vec<PoolSpec> = Vec::new();
    let scopes = std::iter::once(None).chain(namespace.map(Some));
    for scope in scopes {
        let documents = state
            .documents
            .values()
            .filter(|d| d.namespace.as_deref() == scope)
            .flat_map(|d| d.policy.pools.iter());
        let discovered = state
            .discovered_pools
            .iter()
            .filter(|(k, _)| k.namespace.as_deref() == scope)
            .map(|(_, pool)| pool);
        for pool in documents.chain(discovered) {
            if !pools.iter().any(|p| p.name == pool.name) {
                pools.push(pool.clone());
            }
        }
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    pools
}

/// `snapshot` less any data set the proxies' own validation would refuse,
/// so one bad entry never makes a proxy refuse the whole snapshot.
fn withhold_refusable(mut snapshot: ProxySnapshot, key: &ViewKey) -> ProxySnapshot {
    let pools = snapshot.pools.clone();
    let config = |datasets: Vec<DatasetPolicy>| ProxyConfig {
        role: key.role,
        pools: pools.clone(),
        datasets: Datasets(datasets),
        ..ProxyConfig::default()
    };
    if config(Vec::new()).validate("snapshot").is_err() {
        tracing::error!(
            ?key,
            "the pools of a snapshot do not validate; streaming it without pools"
        );
        snapshot.pools.clear();
    }
    let datasets = std::mem::take(&mut snapshot.datasets);
    for dataset in datasets {
        match config(vec![dataset.clone()]).validate("snapshot") {
            Ok(()) => snapshot.datasets.push(dataset),
            Err(err) => tracing::error!(
                ?key,
                dataset = %dataset.name,
                %err,
                "withheld from a snapshot: the proxy would refuse it"
            ),
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DocumentKey;
    use crate::policy::testing::document;

    fn state() -> MeshState {
        let mut state = MeshState {
            trust_domain: "cluster.local".into(),
            ..MeshState::default()
        };
        let key = |name: &str| DocumentKey {
            source: "file",
            name: name.into(),
        };
        state.documents.insert(
            key("mesh.yaml"),
            document(
                None,
                "pools:\n  - name: workers\n    members: [{ address: \"w0:4143\" }]\n\
                 datasets:\n  - { name: imagenet, bucket: imagenet, origin: \"s3://d/i/\" }\n",
            ),
        );
        state.documents.insert(
            key("train/job.yaml"),
            document(
                Some("train"),
                "datasets:\n  - { name: laion, bucket: laion, origin: \"s3://d/l/\" }\n  \
                 - { name: orphan, bucket: orphan, origin: \"s3://d/o/\", pool: missing }\n",
            ),
        );
        state
    }

    fn names(snapshot: &ProxySnapshot) -> Vec<&str> {
        snapshot.datasets.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn sidecars_see_the_mesh_and_their_namespace() {
        let state = state();
        let train = snapshot(
            &state,
            3,
            &ViewKey {
                role: Role::Sidecar,
                namespace: "train".into(),
            },
        );
        assert_eq!(
            names(&train),
            ["imagenet", "laion"],
            "orphan's pool is unknown"
        );
        assert_eq!(train.pools.len(), 1);
        assert_eq!(train.version, 3);
        let laion = &train.datasets[1];
        assert_eq!(
            laion
                .allow
                .iter()
                .map(SpiffePattern::as_str)
                .collect::<Vec<_>>(),
            ["spiffe://cluster.local/ns/train/sa/*"],
            "a namespace's data set defaults to that namespace"
        );
        assert!(
            train.datasets[0].allow.is_empty(),
            "mesh-wide: the trust domain"
        );
        let other = snapshot(
            &state,
            3,
            &ViewKey {
                role: Role::Sidecar,
                namespace: "eval".into(),
            },
        );
        assert_eq!(names(&other), ["imagenet"]);
    }

    #[test]
    fn workers_see_every_data_set_and_the_mesh_wide_pools() {
        let mut state = state();
        state.documents.insert(
            DocumentKey {
                source: "file",
                name: "train/warm.yaml".into(),
            },
            document(
                Some("train"),
                "pools:\n  - name: own\n    members: [{ address: \"t0:4143\" }]\n\
                 datasets:\n  - { name: coco, origin: \"s3://d/c/\", pool: workers, warm: on_start }\n  \
                 - { name: mine, origin: \"s3://d/m/\", pool: own, warm: on_start }\n",
            ),
        );
        for dataset in ["imagenet", "mine"] {
            state.warm_orders.insert(
                dataset.into(),
                ferry_config::WarmOrder {
                    dataset: dataset.into(),
                    id: 9,
                    prefix: String::new(),
                    concurrency: 8,
                    bytes_per_second: None,
                },
            );
        }
        let worker = snapshot(
            &state,
            3,
            &ViewKey {
                role: Role::Worker,
                namespace: "ferry".into(),
            },
        );
        let ordered: Vec<&str> = worker
            .warm_orders
            .iter()
            .map(|o| o.dataset.as_str())
            .collect();
        assert_eq!(
            ordered,
            ["imagenet"],
            "only data sets whose pool workers can rank by"
        );
        assert_eq!(worker.datasets[0].pool.as_deref(), Some("workers"));
        let sidecar = ViewKey {
            role: Role::Sidecar,
            namespace: "train".into(),
        };
        assert!(snapshot(&state, 3, &sidecar).warm_orders.is_empty());
        assert_eq!(
            names(&worker),
            ["imagenet", "laion", "orphan", "coco", "mine"]
        );
        let pools: Vec<&str> = worker.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pools, ["workers"], "mesh-wide pools only");
        let coco = &worker.datasets[3];
        assert_eq!(
            (coco.warm, coco.pool.as_deref()),
            (WarmPolicy::OnStart, Some("workers")),
            "named as its sidecars resolve it"
        );
        let mine = &worker.datasets[4];
        assert_eq!(
            mine.warm,
            WarmPolicy::Never,
            "a namespace's own pool is not the workers' to rank by"
        );
    }
}
