//! What a namespace's own policy document may say (DESIGN.md, "Tenancy and
//! trust"): data sets for its own sidecars, reading only the origins the
//! mesh admin's `tenants` table allows that namespace — never `file://` —
//! and readable only by identities of that namespace. The mesh admin's
//! documents (namespace `None`) may say anything.

use std::collections::BTreeMap;

use ferry_config::{OriginPrefix, OriginSpec};

use super::store::{MeshState, PolicyDocument};

/// The mesh admin's `tenants` tables, merged: namespace → allowed prefixes.
pub fn allowances(state: &MeshState) -> BTreeMap<&str, Vec<&OriginPrefix>> {
    let mut table: BTreeMap<&str, Vec<&OriginPrefix>> = BTreeMap::new();
    for document in state.documents.values() {
        if document.namespace.is_some() {
            continue;
        }
        for tenant in &document.policy.tenants {
            table
                .entry(tenant.namespace.as_str())
                .or_default()
                .extend(tenant.origins.iter());
        }
    }
    table
}

/// Whether `document` stays within what its namespace may do, given the
/// mesh admin's documents in `state`; else what it oversteps.
pub fn check(document: &PolicyDocument, state: &MeshState) -> Result<(), String> {
    let Some(namespace) = &document.namespace else {
        return Ok(());
    };
    if !document.policy.tenants.is_empty() {
        return Err(format!(
            "`tenants` belongs to the mesh admin's policies (the control plane's namespace), \
             not to namespace '{namespace}'"
        ));
    }
    let table = allowances(state);
    let allowed = table.get(namespace.as_str()).cloned().unwrap_or_default();
    for (i, dataset) in document.policy.datasets.iter().enumerate() {
        let at = format!("datasets[{i}] ('{}')", dataset.name);
        if let Some(other) = &dataset.namespace
            && other != namespace
        {
            return Err(format!(
                "{at}: namespace '{other}' is not this document's: a namespace's data sets \
                 belong to '{namespace}'"
            ));
        }
        let Some(origin) = &dataset.origin else {
            continue; // PolicyFile::check refuses it already
        };
        if matches!(origin, OriginSpec::File { .. }) {
            return Err(format!(
                "{at}: origin {origin} is refused: file:// origins are the mesh admin's alone \
                 (they read the workers' own disks)"
            ));
        }
        if !allowed.iter().any(|prefix| prefix.covers(origin)) {
            let listed: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
            return Err(if listed.is_empty() {
                format!(
                    "{at}: origin {origin} is refused: the mesh admin allows namespace \
                     '{namespace}' no origins (add it to `tenants` in a policy of the control \
                     plane's namespace)"
                )
            } else {
                format!(
                    "{at}: origin {origin} is refused: namespace '{namespace}' may use origins \
                     starting with {listed:?}"
                )
            });
        }
        for pattern in &dataset.allow {
            if pattern.trust_domain() != state.trust_domain
                || pattern.namespace() != Some(namespace.as_str())
            {
                return Err(format!(
                    "{at}: allow pattern '{}' is refused: a namespace's data set may be read \
                     only by identities of its namespace, spiffe://{}/ns/{namespace}/sa/...",
                    pattern.as_str(),
                    state.trust_domain
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DocumentKey;
    use crate::policy::testing::document;

    fn state(tenants: &str) -> MeshState {
        let mut state = MeshState {
            trust_domain: "cluster.local".into(),
            ..MeshState::default()
        };
        state.documents.insert(
            DocumentKey {
                source: "configmap",
                name: "ferry-system/mesh".into(),
            },
            document(None, tenants),
        );
        state
    }

    const TENANTS: &str = "tenants:\n  - namespace: train\n    origins: [\"s3://data/train/\", \"https://files.example.com/train/\"]\n";

    fn dataset(origin: &str, extra: &str) -> String {
        format!("datasets:\n  - {{ name: dset, bucket: dset, origin: \"{origin}\"{extra} }}\n")
    }

    #[test]
    fn a_namespace_reads_only_what_the_mesh_admin_allows_it() {
        let state = state(TENANTS);
        let ok = |origin: &str| check(&document(Some("train"), &dataset(origin, "")), &state);
        ok("s3://data/train/imagenet/").expect("allowed prefix");
        ok("https://files.example.com/train/x/").expect("allowed prefix");
        for (origin, why) in [
            (
                "file:///var/run/secrets/",
                "file:// origins are the mesh admin's alone",
            ),
            ("s3://data/eval/", "may use origins starting with"),
            (
                "http://169.254.169.254/latest/",
                "may use origins starting with",
            ),
            (
                "https://files.example.com/train/../secrets/",
                "may use origins starting with",
            ),
        ] {
            let err = ok(origin).expect_err(origin);
            assert!(err.contains(why), "{origin}: {err}");
        }
        let other = check(
            &document(Some("eval"), &dataset("s3://data/train/", "")),
            &state,
        )
        .expect_err("eval has no allowance");
        assert!(
            other.contains("allows namespace 'eval' no origins"),
            "{other}"
        );
        let mesh = check(&document(None, &dataset("file:///data/", "")), &state);
        assert!(mesh.is_ok(), "the mesh admin may read files");
    }

    #[test]
    fn a_namespace_cannot_widen_who_reads_or_claim_another_namespace() {
        let state = state(TENANTS);
        let err = check(
            &document(
                Some("train"),
                &dataset(
                    "s3://data/train/",
                    ", allow: [\"spiffe://cluster.local/ns/*/sa/*\"]",
                ),
            ),
            &state,
        )
        .expect_err("any namespace");
        assert!(err.contains("only by identities of its namespace"), "{err}");
        check(
            &document(
                Some("train"),
                &dataset(
                    "s3://data/train/",
                    ", allow: [\"spiffe://cluster.local/ns/train/sa/job\"]",
                ),
            ),
            &state,
        )
        .expect("its own namespace");
        let err = check(
            &document(
                Some("train"),
                &dataset("s3://data/train/", ", namespace: eval"),
            ),
            &state,
        )
        .expect_err("claims eval");
        assert!(err.contains("belong to 'train'"), "{err}");
        let err = check(&document(Some("train"), TENANTS), &state).expect_err("tenants");
        assert!(err.contains("belongs to the mesh admin"), "{err}");
    }
}
