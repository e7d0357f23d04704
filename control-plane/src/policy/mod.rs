//! The mesh's policies as the control plane holds them: documents accepted
//! from its sources (policy files, ConfigMaps), worker pools discovered in
//! Kubernetes, and the trust bundle. Every accepted change gets a new
//! version and is published to the watch API; a refused document leaves the
//! last good one in force.

mod store;
pub mod tenancy;
mod view;

pub use store::{
    DocumentKey, MeshState, PolicyDocument, PolicyStore, PoolKey, Published, Refusal, SourceSync,
};
pub use view::ViewKey;
