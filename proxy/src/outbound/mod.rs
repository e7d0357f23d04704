//! The sidecar's side of the mesh: the worker pool and its balancing, the
//! connections to workers, and the upstream that sends each chunk to the
//! worker that owns it.

pub mod balance;
pub mod connection;
pub mod upstream;

pub use upstream::PoolUpstream;
