//! What the control plane streams to each proxy over `GET /v1/watch/proxy`:
//! one JSON event per line.

use serde::{Deserialize, Serialize};

use crate::policy::DatasetPolicy;
use crate::pool::PoolSpec;

/// One line of the watch stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Everything the proxy needs, replacing what the last one said.
    Snapshot(ProxySnapshot),
    /// Nothing changed for this proxy; the stream is alive.
    Heartbeat {
        /// The mesh's version now.
        version: u64,
    },
}

/// A proxy's share of the mesh's configuration at one version.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySnapshot {
    /// Grows with every accepted change anywhere in the mesh.
    pub version: u64,
    /// The data sets this proxy serves.
    pub datasets: Vec<DatasetPolicy>,
    /// The worker pools those data sets read from (for workers: the
    /// mesh-wide pools, to rank chunks for warm-ups).
    pub pools: Vec<PoolSpec>,
    /// PEM trust anchors for peers.
    pub trust_bundle: Vec<String>,
    /// Warm-ups an operator asked the control plane for (workers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_orders: Vec<WarmOrder>,
}

/// A warm-up of one data set asked of every worker of its pool
/// (`ferryctl warm` through the control plane).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarmOrder {
    /// The data set's name.
    pub dataset: String,
    /// Grows with every order: a worker starts each one once.
    pub id: u64,
    /// Only keys under this prefix.
    #[serde(default)]
    pub prefix: String,
    /// Origin fetches at once, per worker.
    pub concurrency: usize,
    /// Origin bytes per second for the whole pool, split by weight.
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
}

impl ProxySnapshot {
    /// One watch-stream line: the event as JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        WatchEvent::Snapshot(self.clone()).to_line()
    }
}

impl WatchEvent {
    /// The event as one line of JSON.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing plain data to JSON cannot fail; an empty object keeps
        // the stream parseable even if it ever did.
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::from_yaml;
    use crate::policy::PolicyFile;

    #[test]
    fn snapshots_survive_the_wire() {
        let file: PolicyFile = from_yaml(
            "datasets:\n  - name: imagenet\n    bucket: imagenet\n    origin: s3://data/imagenet/\n    \
             allow: [\"spiffe://cluster.local/ns/train/sa/*\"]\n    chunk_size: 8MiB\n    \
             metadata_ttl: 30s\n    cache: { sidecar: { size: 1GiB, policy: lru } }\n  \
             - { name: synthetic, bucket: synthetic, origin: \"synthetic://?count=5\", on_pool_down: origin }\n  \
             - { name: files, bucket: files, origin: \"file:///data/x\", read_ahead: 0, warm_metadata: false }\n\
             pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
             members: [{ address: \"w0:4143\", weight: 2, zone: a }]\n    balance: { hedge: 20ms }\n",
            "policy.yaml",
        )
        .expect("policy");
        let snapshot = ProxySnapshot {
            version: 7,
            datasets: file.datasets.0.clone(),
            pools: file.pools.clone(),
            trust_bundle: vec!["-----BEGIN CERTIFICATE-----\n...".into()],
            warm_orders: vec![WarmOrder {
                dataset: "files".into(),
                id: 3,
                prefix: "a/".into(),
                concurrency: 8,
                bytes_per_second: Some(1 << 20),
            }],
        };
        let line = snapshot.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        let back: WatchEvent = serde_json::from_slice(&line).expect("parses");
        assert_eq!(back, WatchEvent::Snapshot(snapshot));
        let beat: WatchEvent =
            serde_json::from_slice(&WatchEvent::Heartbeat { version: 7 }.to_line())
                .expect("heartbeat parses");
        assert_eq!(beat, WatchEvent::Heartbeat { version: 7 });
    }
}
