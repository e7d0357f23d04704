//! What one proxy gets: its data sets, the pools they read from, the bundle.

use ferry_config::{PoolSpec, ProxySnapshot, Role, SpiffePattern};

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
/// pools those read from; a data set whose pool is not (yet) known is left
/// out until it is. Workers get every data set and no pools. A namespace's
/// data set with no `allow` list is readable by that namespace only.
pub fn snapshot(state: &MeshState, version: u64, key: &ViewKey) -> ProxySnapshot {
    let pools: Vec<PoolSpec> = state
        .documents
        .values()
        .flat_map(|d| d.policy.pools.iter().cloned())
        .chain(state.discovered_pools.values().cloned())
        .collect();
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
            if key.role == Role::Sidecar && dataset.pool_in(&pools).is_err() {
                continue;
            }
            let mut dataset = dataset.clone();
            if let Some(namespace) = &document.namespace
                && dataset.allow.is_empty()
            {
                let own = format!("spiffe://{}/ns/{namespace}/sa/*", state.trust_domain);
                dataset.allow = own.parse::<SpiffePattern>().into_iter().collect();
            }
            datasets.push(dataset);
        }
    }
    let mut pools = match key.role {
        Role::Sidecar => pools,
        Role::Worker => Vec::new(),
    };
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    ProxySnapshot {
        version,
        datasets,
        pools,
        trust_bundle: state.trust_bundle.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DocumentKey, PolicyDocument};
    use ferry_config::{PolicyFile, from_yaml};

    fn document(namespace: Option<&str>, yaml: &str) -> PolicyDocument {
        PolicyDocument {
            namespace: namespace.map(str::to_owned),
            policy: from_yaml::<PolicyFile>(yaml, "test.yaml").expect("policy"),
        }
    }

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
    fn workers_see_every_data_set_and_no_pools() {
        let worker = snapshot(
            &state(),
            3,
            &ViewKey {
                role: Role::Worker,
                namespace: "ferry".into(),
            },
        );
        assert_eq!(names(&worker), ["imagenet", "laion", "orphan"]);
        assert!(worker.pools.is_empty());
    }
}
