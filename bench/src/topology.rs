//! The mesh topology as real processes: cache workers in front of an origin
//! and a sidecar whose pool they form. Workers can be killed and restarted
//! on the same address, as a crashed pod comes back.

use std::net::SocketAddr;

use anyhow::Context;

use ferry_config::{ByteSize, CachePolicy};

use crate::child::{ChildProcess, MeshIdentity, ProxyProgram, WorkerSpec};
use crate::client::{scrape, scrape_by};

/// What a pool run is made of.
pub struct PoolSpec<'a> {
    /// Origin URL the workers read.
    pub origin: &'a str,
    /// Bucket (and data set) name.
    pub bucket: &'a str,
    /// Number of workers.
    pub workers: usize,
    /// Memory cache of each worker.
    pub worker_cache: ByteSize,
    /// Memory cache of the sidecar.
    pub sidecar_cache: ByteSize,
    /// Cache policy of every tier.
    pub policy: CachePolicy,
    /// More flags for the sidecar.
    pub sidecar_flags: Vec<String>,
    /// Mutual TLS with certificates from this control plane, or plaintext.
    pub identity: Option<MeshIdentity>,
}

/// Counters of a pool at one moment.
#[derive(Clone, Debug, Default)]
pub struct PoolCounters {
    /// Sidecar memory hits and misses.
    pub sidecar: (f64, f64),
    /// Workers' memory hits and misses, summed.
    pub workers: (f64, f64),
    /// Bytes the workers read from the origin, summed.
    pub origin_bytes: f64,
    /// Requests the sidecar sent to each worker.
    pub per_worker: Vec<(String, f64)>,
}

/// Three (or N) workers and a sidecar.
pub struct PoolTopology {
    /// The sidecar the app reads from.
    pub sidecar: ChildProcess,
    workers: Vec<Option<ChildProcess>>,
    inbound: Vec<SocketAddr>,
    worker_args: Vec<String>,
    program: ProxyProgram,
    bucket: String,
}

impl PoolTopology {
    /// CPU seconds the sidecar and the running workers have used.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let workers: Option<f64> = self
            .workers
            .iter()
            .flatten()
            .map(ChildProcess::cpu_seconds)
            .sum();
        Some(self.sidecar.cpu_seconds()? + workers?)
    }

    /// Starts the workers, then the sidecar over them.
    pub fn start(program: &ProxyProgram, spec: &PoolSpec<'_>) -> anyhow::Result<Self> {
        let mut worker_args = WorkerSpec {
            origin: spec.origin,
            bucket: spec.bucket,
            cache_size: spec.worker_cache,
            cache_policy: spec.policy,
            read_ahead: None,
            extra: Vec::new(),
        }
        .args();
        worker_args.extend(spec.identity.iter().flat_map(MeshIdentity::worker_flags));
        let mut workers = Vec::new();
        let mut inbound = Vec::new();
        for _ in 0..spec.workers.max(1) {
            let worker = ChildProcess::proxy(program, &worker_args)?;
            inbound.push(
                worker
                    .inbound
                    .context("a worker reported no inbound address")?,
            );
            workers.push(Some(worker));
        }
        let pool = inbound
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut sidecar_args: Vec<String> = vec![
            "sidecar".into(),
            "--pool".into(),
            pool,
            "--bucket".into(),
            spec.bucket.into(),
            "--cache-size".into(),
            spec.sidecar_cache.bytes().to_string(),
            "--cache-policy".into(),
            spec.policy.as_str().into(),
        ];
        sidecar_args.extend(spec.sidecar_flags.iter().cloned());
        sidecar_args.extend(spec.identity.iter().flat_map(MeshIdentity::sidecar_flags));
        let sidecar = ChildProcess::proxy(program, &sidecar_args)?;
        Ok(Self {
            sidecar,
            workers,
            inbound,
            worker_args,
            program: program.clone(),
            bucket: spec.bucket.to_owned(),
        })
    }

    /// Kills worker `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        if let Some(slot) = self.workers.get_mut(index) {
            *slot = None;
        }
    }

    /// Starts worker `index` again on its old inbound address.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let address = *self.inbound.get(index).context("no such worker")?;
        let mut args = self.worker_args.clone();
        args.extend(["--inbound".to_owned(), address.to_string()]);
        let worker = ChildProcess::proxy(&self.program, &args)?;
        self.workers[index] = Some(worker);
        Ok(())
    }

    /// Worker `index`, while it runs.
    pub fn worker(&self, index: usize) -> Option<&ChildProcess> {
        self.workers.get(index)?.as_ref()
    }

    /// Admin addresses of the sidecar and the running workers.
    pub fn admins(&self) -> Vec<SocketAddr> {
        std::iter::once(&self.sidecar)
            .chain(self.workers.iter().flatten())
            .filter_map(|p| p.admin)
            .collect()
    }

    /// The inbound address of worker `index`.
    pub fn worker_address(&self, index: usize) -> Option<SocketAddr> {
        self.inbound.get(index).copied()
    }

    /// Reads the counters of every process.
    pub async fn counters(&self) -> anyhow::Result<PoolCounters> {
        let admin = self.sidecar.admin.context("sidecar has no admin address")?;
        let bucket = &self.bucket;
        let mut counters = PoolCounters {
            sidecar: (
                scrape(
                    admin,
                    "cache_hits_total",
                    &[("dataset", bucket), ("tier", "memory")],
                )
                .await?,
                scrape(
                    admin,
                    "cache_misses_total",
                    &[("dataset", bucket), ("tier", "memory")],
                )
                .await?,
            ),
            per_worker: scrape_by(admin, "upstream_requests_total", "member").await?,
            ..PoolCounters::default()
        };
        for worker in self.workers.iter().flatten() {
            let Some(admin) = worker.admin else { continue };
            // A worker may be gone mid-scrape in chaos runs; count what answers.
            let memory = [("dataset", bucket.as_str()), ("tier", "memory")];
            if let (Ok(hits), Ok(misses), Ok(origin)) = (
                scrape(admin, "cache_hits_total", &memory).await,
                scrape(admin, "cache_misses_total", &memory).await,
                scrape(admin, "origin_bytes_total", &[("dataset", bucket)]).await,
            ) {
                counters.workers.0 += hits;
                counters.workers.1 += misses;
                counters.origin_bytes += origin;
            }
        }
        Ok(counters)
    }
}

impl PoolCounters {
    /// What happened between `self` (before) and `after`: (sidecar hit
    /// ratio, workers' hit ratio, origin bytes, max/mean requests per worker).
    pub fn delta(&self, after: &PoolCounters) -> (Option<f64>, Option<f64>, u64, Option<f64>) {
        let ratio = |before: (f64, f64), after: (f64, f64)| {
            let hits = after.0 - before.0;
            let lookups = hits + after.1 - before.1;
            (lookups > 0.0).then(|| hits / lookups)
        };
        let per_worker: Vec<f64> = after
            .per_worker
            .iter()
            .map(|(member, value)| {
                let before = self
                    .per_worker
                    .iter()
                    .find(|(m, _)| m == member)
                    .map_or(0.0, |(_, v)| *v);
                value - before
            })
            .collect();
        let mean = per_worker.iter().sum::<f64>() / per_worker.len().max(1) as f64;
        let max = per_worker.iter().copied().fold(0.0, f64::max);
        (
            ratio(self.sidecar, after.sidecar),
            ratio(self.workers, after.workers),
            (after.origin_bytes - self.origin_bytes).max(0.0) as u64,
            (mean > 0.0).then(|| max / mean),
        )
    }
}
