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
    WarmOrderError,
};
pub use view::ViewKey;

/// What the policy modules' tests build documents with.
#[cfg(test)]
pub(crate) mod testing {
    use super::PolicyDocument;
    use ferry_config::{PolicyFile, from_yaml};

    /// A document of `namespace` (`None`: the mesh admin's) from YAML.
    pub fn document(namespace: Option<&str>, yaml: &str) -> PolicyDocument {
        PolicyDocument {
            namespace: namespace.map(str::to_owned),
            policy: from_yaml::<PolicyFile>(yaml, "test.yaml").expect("policy"),
        }
    }
}
