//! Where policies come from: a directory of YAML files (local runs), or the
//! Kubernetes API (a cluster).

pub mod file;
pub mod kubernetes;
