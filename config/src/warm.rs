//! A worker's warm-up progress, as its admin port's `/warm` reports it and
//! `ferryctl warm` reads it: one type on both sides.

use serde::{Deserialize, Serialize};

/// Where a warm-up stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmState {
    /// Listing and fetching.
    #[default]
    Running,
    /// Every object listed was reached.
    Done,
    /// Stopped before it was done.
    Stopped,
    /// The listing failed; what was listed before was warmed.
    Failed,
}

impl WarmState {
    /// Its name, as the JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for WarmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object a warm-up could not load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ObjectError {
    /// Its key.
    pub key: String,
    /// Why.
    pub message: String,
}

/// A warm-up's progress, as `/warm` reports it (fields a worker leaves
/// out read as their defaults).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WarmStatus {
    /// The data set.
    pub dataset: String,
    /// The prefix warmed ("" for all of it).
    pub prefix: String,
    /// This worker's address in the pool.
    pub member: String,
    /// Workers of the pool that share the data set out (this one included).
    pub pool_members: usize,
    /// Where it stands.
    pub state: WarmState,
    /// Whether the whole listing has been read.
    pub listing_done: bool,
    /// Objects whose first chunk this worker owns, listed so far: each
    /// object counts on one worker, so the pool's sum is the data set's.
    pub objects_total: u64,
    /// Of those, objects whose chunks this worker owns are all held now.
    pub objects_done: u64,
    /// Objects with a chunk this worker could not fetch (an object whose
    /// chunks failed on several workers counts on each).
    pub objects_failed: u64,
    /// Bytes of the chunks this worker owns, listed so far.
    pub bytes_total: u64,
    /// Of those, bytes held now: fetched by this warm-up or held already.
    pub bytes_done: u64,
    /// Bytes fetched from the origin by this warm-up.
    pub bytes_fetched: u64,
    /// Bytes left out because the cache was full.
    pub bytes_not_warmed: u64,
    /// Chunks fetched from the origin.
    pub chunks_fetched: u64,
    /// Chunks skipped because a tier already held them.
    pub chunks_held: u64,
    /// What the data set's tiers can hold (the disk tier's, else memory's).
    pub capacity_bytes: u64,
    /// Whether the cache filled up (or refused a chunk) before every owned
    /// chunk was in it.
    pub capacity_reached: bool,
    /// Origin fetches at once.
    pub concurrency: usize,
    /// The bound on origin bytes per second, if any.
    pub bytes_per_second: Option<u64>,
    /// The control plane's order it carries out, if it was ordered there.
    pub order: Option<u64>,
    /// When it started (seconds since the epoch).
    pub started_at: u64,
    /// Seconds it has run (until it ended).
    pub elapsed_seconds: f64,
    /// Objects that failed, with why (the first 1,000).
    pub errors: Vec<ObjectError>,
    /// Why the listing failed, if it did.
    pub failure: Option<String>,
}
