//! Kubernetes Events on the objects whose policies are refused, so
//! `kubectl describe configmap` says what is wrong.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};

/// Reason of the Event for a refused policy.
pub const INVALID_POLICY: &str = "InvalidPolicy";
/// Reason of the Event for a pool Service that cannot be used as written.
pub const INVALID_POOL: &str = "InvalidPool";
/// Who reports.
const COMPONENT: &str = "ferry-control-plane";

/// A reference to `object` for an Event's `involvedObject`.
pub fn reference<K>(object: &K) -> ObjectReference
where
    K: Resource<DynamicType = ()>,
{
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: Some(object.name_any()),
        namespace: object.namespace(),
        uid: object.uid(),
        resource_version: object.resource_version(),
        ..ObjectReference::default()
    }
}

/// Posts a Warning Event with `reason` and `message` about `object`.
pub async fn warn(client: &Client, object: &ObjectReference, reason: &str, message: &str) {
    let namespace = object
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = object.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            namespace: Some(namespace.clone()),
            ..object.clone()
        },
        reason: Some(reason.to_owned()),
        // The API server refuses longer messages.
        message: Some(message.chars().take(1000).collect()),
        type_: Some("Warning".to_owned()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(COMPONENT.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(err) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(%err, object = %name, "cannot post a Kubernetes Event");
    }
}
