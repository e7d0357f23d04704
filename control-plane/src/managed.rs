//! What the control plane writes to Kubernetes carries its managed-by
//! label, so an operator can tell its objects from the chart's.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The metadata of an object named `name` that the control plane creates.
pub fn metadata(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            "ferry-control-plane".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}
