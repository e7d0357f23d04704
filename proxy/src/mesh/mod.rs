//! The configuration in force: the proxy's own settings (flags, file) with
//! the control plane's latest snapshot on top, and the data sets built from
//! it. A change is built aside and swapped in whole: a request sees the old
//! data sets or the new ones, never half of each. While the control plane is
//! away the last good snapshot stays in force.

pub mod watch;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, counter, gauge};
use serde::Serialize;

use ferry_config::{ProxyConfig, ProxySnapshot};

use crate::dataset::Datasets;
use crate::tls::TlsState;

/// `address` as other pods reach it: an unspecified address becomes the
/// pod's (`POD_IP`, set by the chart), when there is one.
pub fn reachable(mut address: std::net::SocketAddr) -> std::net::SocketAddr {
    if address.ip().is_unspecified()
        && let Some(ip) = std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok())
    {
        address.set_ip(ip);
    }
    address
}

/// Where the control plane's configuration stands, for `/config`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlPlaneStatus {
    /// Whether a watch is open now.
    pub connected: bool,
    /// Version of the snapshot in force, if one was ever applied.
    pub version: Option<u64>,
    /// When it was applied (seconds since the epoch).
    pub applied_at: Option<u64>,
    /// Why the last snapshot could not be applied, if it could not.
    pub last_error: Option<String>,
    /// The version of that snapshot, when it could be read.
    pub refused_version: Option<u64>,
}

/// The configuration in force and the data sets built from it.
pub struct Mesh {
    local: ProxyConfig,
    tls: Option<Arc<TlsState>>,
    datasets: ArcSwap<Datasets>,
    effective: ArcSwap<ProxyConfig>,
    snapshot: ArcSwap<Option<ProxySnapshot>>,
    status: Mutex<ControlPlaneStatus>,
    /// One change at a time.
    applying: Mutex<()>,
    metrics: MeshMetrics,
    /// A worker's address in its pool, once its listener is bound.
    advertised: OnceLock<String>,
}

struct MeshMetrics {
    version: Gauge,
    last_update: Gauge,
    connected: Gauge,
    rejected: Counter,
}

impl Mesh {
    /// The mesh as `local` alone describes it (no snapshot yet).
    pub fn new(local: ProxyConfig, tls: Option<Arc<TlsState>>) -> anyhow::Result<Arc<Self>> {
        let datasets = Datasets::from_config(&local, tls.as_ref())?;
        Ok(Arc::new(Self {
            datasets: ArcSwap::from_pointee(datasets),
            effective: ArcSwap::from_pointee(local.clone()),
            snapshot: ArcSwap::from_pointee(None),
            local,
            tls,
            status: Mutex::new(ControlPlaneStatus::default()),
            applying: Mutex::new(()),
            advertised: OnceLock::new(),
            metrics: MeshMetrics {
                version: gauge!("config_version"),
                last_update: gauge!("config_last_update_timestamp_seconds"),
                connected: gauge!("control_plane_connected"),
                rejected: counter!("config_rejected_total"),
            },
        }))
    }

    /// This proxy's own mesh identity, once it has a certificate.
    pub fn own_id(&self) -> Option<ferry_config::SpiffeId> {
        self.tls.as_ref()?.own_id()
    }

    /// The data sets in force.
    pub fn datasets(&self) -> Arc<Datasets> {
        self.datasets.load_full()
    }

    /// The configuration in force: local settings with the snapshot on top.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.effective.load_full()
    }

    /// The snapshot in force, if any.
    pub fn snapshot(&self) -> Arc<Option<ProxySnapshot>> {
        self.snapshot.load_full()
    }

    /// Where the control plane's configuration stands.
    pub fn status(&self) -> ControlPlaneStatus {
        self.lock_status().clone()
    }

    /// Records whether a watch is open.
    pub fn set_connected(&self, connected: bool) {
        self.lock_status().connected = connected;
        self.metrics
            .connected
            .set(if connected { 1.0 } else { 0.0 });
    }

    /// Puts `snapshot` in force. A snapshot that does not make a valid
    /// configuration with the local settings is refused, and the one in
    /// force stays.
    pub fn apply(&self, snapshot: &ProxySnapshot) -> anyhow::Result<()> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let merged = merged(&self.local, snapshot);
        let current = self.effective.load();
        if merged.datasets != current.datasets || merged.pools != current.pools {
            let built = self.datasets.load().reconcile(&merged, self.tls.as_ref());
            let datasets = match built {
                Ok(datasets) => datasets,
                Err(err) => {
                    self.refused(Some(snapshot.version), format!("{err:#}"));
                    return Err(err);
                }
            };
            self.datasets.store(Arc::new(datasets));
            self.effective.store(Arc::new(merged));
            tracing::info!(
                version = snapshot.version,
                "configuration from the control plane applied"
            );
        }
        self.snapshot.store(Arc::new(Some(snapshot.clone())));
        self.start_configured_warm_ups();
        if let Some(datasets) = self.datasets.load().without_expired() {
            self.datasets.store(Arc::new(datasets));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut status = self.lock_status();
        status.version = Some(snapshot.version);
        status.applied_at = Some(now);
        status.last_error = None;
        status.refused_version = None;
        self.metrics.version.set(snapshot.version as f64);
        self.metrics.last_update.set(now as f64);
        Ok(())
    }

    /// Records this worker's address in its pool (once) and starts the
    /// warm-ups its data sets' policies ask for.
    pub fn set_advertised(&self, address: String) {
        let _ = self.advertised.set(address);
        self.start_configured_warm_ups();
    }

    /// Starts every warm-up this worker takes part in that the
    /// configuration asks for: the control plane's orders, and `warm:
    /// on_start` (restarted when the pool changed).
    fn start_configured_warm_ups(&self) {
        let Some(me) = self.advertised.get() else {
            return;
        };
        let config = self.config();
        if config.role != ferry_config::Role::Worker {
            return;
        }
        let snapshot = self.snapshot();
        let orders = snapshot
            .as_ref()
            .as_ref()
            .map(|s| s.warm_orders.as_slice())
            .unwrap_or_default();
        for dataset in self.datasets().iter() {
            let order = orders.iter().find(|o| o.dataset == dataset.policy.name);
            dataset.warm_as_configured(&config.pools, me, order);
        }
    }

    /// Records a snapshot that was not put in force (`version` if it could
    /// be read): counted, logged and shown in `/config`.
    pub fn refused(&self, version: Option<u64>, message: String) {
        self.metrics.rejected.increment(1);
        tracing::error!(?version, error = %message, "configuration from the control plane refused; keeping the one in force");
        let mut status = self.lock_status();
        status.last_error = Some(message);
        status.refused_version = version;
    }

    /// Drops the caches of removed data sets whose grace period is over.
    pub fn prune(&self) {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(datasets) = self.datasets.load().without_expired() {
            self.datasets.store(Arc::new(datasets));
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ControlPlaneStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `local` with the snapshot's data sets and pools on top: a snapshot data
/// set replaces a local one of the same name or bucket, a snapshot pool one
/// of the same name. This proxy's own cache settings apply to every one.
fn merged(local: &ProxyConfig, snapshot: &ProxySnapshot) -> ProxyConfig {
    let mut config = local.clone();
    for dataset in &snapshot.datasets {
        config
            .datasets
            .0
            .retain(|d| d.name != dataset.name && d.bucket != dataset.bucket);
        let mut dataset = dataset.clone();
        local.cache.apply(local.role, &mut dataset);
        config.datasets.0.push(dataset);
    }
    for pool in &snapshot.pools {
        config.pools.retain(|p| p.name != pool.name);
        config.pools.push(pool.clone());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::from_yaml;

    fn config(yaml: &str) -> ProxyConfig {
        from_yaml(yaml, "test.yaml").expect("config")
    }

    #[test]
    fn the_snapshot_replaces_what_it_names_and_keeps_the_rest() {
        let local = config(
            "role: worker\ndatasets:\n  - { name: set-a, bucket: a-bucket, origin: \"synthetic://?count=1\" }\n  \
             - { name: set-b, bucket: b-bucket, origin: \"synthetic://?count=1\" }\n",
        );
        let remote = config(
            "role: worker\ndatasets:\n  - { name: set-b2, bucket: b-bucket, origin: \"synthetic://?count=2\" }\n  \
             - { name: set-c, bucket: c-bucket, origin: \"synthetic://?count=3\" }\n",
        );
        let snapshot = ProxySnapshot {
            version: 4,
            datasets: remote.datasets.0.clone(),
            ..ProxySnapshot::default()
        };
        let names: Vec<String> = merged(&local, &snapshot)
            .datasets
            .iter()
            .map(|d| d.name.clone())
            .collect();
        assert_eq!(names, ["set-a", "set-b2", "set-c"]);
    }

    #[test]
    fn the_proxy_s_own_cache_settings_apply_to_the_control_plane_s_data_sets() {
        let local = config("role: sidecar\ncache: { size: 1MiB, policy: lru }\n");
        let remote = config(
            "datasets:\n  - { name: set-a, bucket: a-bucket, origin: \"synthetic://?count=1\", \
             cache: { sidecar: { size: 8GiB, policy: pin }, worker: { size: 2GiB } } }\n",
        );
        let snapshot = ProxySnapshot {
            version: 2,
            datasets: remote.datasets.0.clone(),
            ..ProxySnapshot::default()
        };
        let merged = merged(&local, &snapshot);
        let cache = &merged.datasets[0].cache;
        assert_eq!(cache.sidecar.size, ferry_config::ByteSize::mib(1));
        assert_eq!(cache.sidecar.policy, ferry_config::CachePolicy::Lru);
        assert_eq!(
            cache.worker.size,
            ferry_config::ByteSize::gib(2),
            "not this proxy's role"
        );
    }

    #[test]
    fn a_snapshot_that_breaks_the_configuration_is_refused_and_changes_nothing() {
        let local = config(
            "role: sidecar\npools:\n  - { name: pool-p, members: [{ address: \"127.0.0.1:1\" }] }\n\
             datasets:\n  - { name: set-a, bucket: a-bucket }\n",
        );
        let mesh = Mesh::new(local, None).expect("mesh");
        let before = mesh.datasets();
        // A second pool leaves data set `a` (which names none) ambiguous.
        let bad = ProxySnapshot {
            version: 2,
            pools: vec![
                config("role: sidecar\npools:\n  - { name: pool-q, members: [{ address: \"127.0.0.1:2\" }] }\n")
                    .pools[0]
                    .clone(),
            ],
            ..ProxySnapshot::default()
        };
        assert!(mesh.apply(&bad).is_err());
        assert!(
            Arc::ptr_eq(&before, &mesh.datasets()),
            "the data sets in force stay"
        );
        assert!(mesh.status().last_error.is_some());
        assert_eq!(mesh.status().version, None);
    }

    #[test]
    fn an_allow_list_change_keeps_the_data_set_caches() {
        let local = config(
            "role: worker\ndatasets:\n  - { name: set-a, bucket: a-bucket, origin: \"synthetic://?count=1\" }\n",
        );
        let mesh = Mesh::new(local.clone(), None).expect("mesh");
        let before = mesh.datasets().get("a-bucket").cloned().expect("a");
        let mut policy = local.datasets[0].clone();
        policy.allow = vec![
            "spiffe://cluster.local/ns/train/sa/*"
                .parse()
                .expect("pattern"),
        ];
        mesh.apply(&ProxySnapshot {
            version: 2,
            datasets: vec![policy],
            ..ProxySnapshot::default()
        })
        .expect("applies");
        let after = mesh.datasets().get("a-bucket").cloned().expect("a");
        assert_eq!(
            after.policy.allow.len(),
            1,
            "the new allow list is in force"
        );
        assert!(
            Arc::ptr_eq(&before.chunks, &after.chunks),
            "same chunk cache"
        );
        let mut other = local.datasets[0].clone();
        other.chunk_size = ferry_config::ByteSize::mib(8);
        mesh.apply(&ProxySnapshot {
            version: 3,
            datasets: vec![other],
            ..ProxySnapshot::default()
        })
        .expect("applies");
        let rebuilt = mesh.datasets().get("a-bucket").cloned().expect("a");
        assert!(
            !Arc::ptr_eq(&after.chunks, &rebuilt.chunks),
            "a new chunk size: new caches"
        );
        assert_eq!(mesh.status().version, Some(3));
    }

    #[test]
    fn a_removed_data_set_comes_back_warm_within_its_grace_period() {
        let snapshot = |version: u64, names: &[&str]| {
            ProxySnapshot {
            version,
            datasets: names
                .iter()
                .map(|n| {
                    config(&format!(
                        "datasets:\n  - {{ name: {n}, bucket: {n}, origin: \"synthetic://?count=1\" }}\n"
                    ))
                    .datasets[0]
                    .clone()
                })
                .collect(),
            ..ProxySnapshot::default()
        }
        };
        let mesh = Mesh::new(config("role: worker\n"), None).expect("mesh");
        mesh.apply(&snapshot(2, &["set-a", "set-b"]))
            .expect("applies");
        let before = mesh.datasets().get("set-a").cloned().expect("a");
        mesh.apply(&snapshot(3, &["set-b"])).expect("applies");
        assert!(
            mesh.datasets().get("set-a").is_none(),
            "not served once removed"
        );
        assert_eq!(mesh.datasets().retired().collect::<Vec<_>>(), ["set-a"]);
        mesh.prune();
        assert_eq!(
            mesh.datasets().retired().count(),
            1,
            "kept through its grace"
        );
        mesh.apply(&snapshot(4, &["set-a", "set-b"]))
            .expect("applies");
        let after = mesh.datasets().get("set-a").cloned().expect("a");
        assert!(
            Arc::ptr_eq(&before.chunks, &after.chunks),
            "the same caches came back"
        );
        assert_eq!(mesh.datasets().retired().count(), 0);

        let forgetful = Mesh::new(
            config("role: worker\nlimits: { removed_dataset_grace: 0s }\n"),
            None,
        )
        .expect("mesh");
        forgetful.apply(&snapshot(2, &["set-a"])).expect("applies");
        forgetful.apply(&snapshot(3, &[])).expect("applies");
        assert_eq!(
            forgetful.datasets().retired().count(),
            0,
            "no grace: dropped at once"
        );
    }

    #[test]
    fn a_refused_snapshot_is_counted_and_shown_until_one_applies() {
        let mesh = Mesh::new(config("role: worker\n"), None).expect("mesh");
        mesh.refused(Some(9), "unreadable".into());
        let status = mesh.status();
        assert_eq!(status.refused_version, Some(9));
        assert_eq!(status.last_error.as_deref(), Some("unreadable"));
        mesh.apply(&ProxySnapshot {
            version: 10,
            ..ProxySnapshot::default()
        })
        .expect("applies");
        assert_eq!(mesh.status().refused_version, None);
        assert_eq!(mesh.status().last_error, None);
    }
}
