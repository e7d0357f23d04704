//! Warm-up orders shared by the control plane's replicas through one
//! ConfigMap of its namespace (`ferry-warm-orders`, one key per data set,
//! each the order's YAML). `ferryctl warm` reaches one replica (a
//! port-forward picks one), while the workers of a pool watch whichever
//! replica their connection landed on: each replica writes the orders it
//! took into the ConfigMap and takes up those the others wrote, the newer
//! order of a data set winning everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use ferry_config::{WarmOrder, from_yaml, to_yaml};

use crate::policy::PolicyStore;

/// The ConfigMap holding the orders, in the control plane's namespace.
pub const WARM_ORDERS_CONFIGMAP: &str = "ferry-warm-orders";

/// Shares `store`'s warm-up orders through the ConfigMap until the process ends.
pub async fn run(client: Client, store: Arc<PolicyStore>, namespace: String) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config =
        watcher::Config::default().fields(&format!("metadata.name={WARM_ORDERS_CONFIGMAP}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut published = store.subscribe();
    // What the ConfigMap held when last seen; nothing is written before
    // the first list, so a replica never writes over what it has not read.
    let mut shared: BTreeMap<String, WarmOrder> = BTreeMap::new();
    let mut listed = false;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Init)) => listed = false,
                Some(Ok(Event::InitApply(map) | Event::Apply(map))) => {
                    shared = orders_in(&map);
                    store.adopt_warm_orders(shared.values().cloned());
                }
                Some(Ok(Event::InitDone)) => listed = true,
                Some(Ok(Event::Delete(_))) => shared.clear(),
                // The watcher retries with backoff.
                Some(Err(err)) => tracing::warn!(%err, "watching the warm-up orders' ConfigMap"),
                None => return,
            },
            changed = published.changed() => if changed.is_err() {
                return;
            },
        }
        if !listed {
            continue;
        }
        let newer: Vec<WarmOrder> = store
            .current()
            .state
            .warm_orders
            .values()
            .filter(|order| {
                shared
                    .get(&order.dataset)
                    .is_none_or(|seen| seen.id < order.id)
            })
            .cloned()
            .collect();
        if newer.is_empty() {
            continue;
        }
        match write(&api, &newer).await {
            Ok(()) => {
                tracing::info!(
                    orders = newer.len(),
                    "warm-up orders shared with the other replicas"
                );
                shared.extend(newer.into_iter().map(|o| (o.dataset.clone(), o)));
            }
            Err(err) => tracing::warn!(
                configmap = %format!("{namespace}/{WARM_ORDERS_CONFIGMAP}"),
                %err,
                "cannot share warm-up orders with the other replicas; workers watching them will not see these"
            ),
        }
    }
}

/// The well-formed orders in `map`; a key that is not one is logged and skipped.
fn orders_in(map: &ConfigMap) -> BTreeMap<String, WarmOrder> {
    let mut orders = BTreeMap::new();
    for (key, text) in map.data.iter().flatten() {
        match from_yaml::<WarmOrder>(text, key) {
            Ok(order) if &order.dataset == key => {
                orders.insert(key.clone(), order);
            }
            Ok(order) => {
                tracing::warn!(key, dataset = %order.dataset, "a warm-up order under another data set's key; skipped")
            }
            Err(err) => tracing::warn!(%err, "an unreadable warm-up order; skipped"),
        }
    }
    orders
}

/// Writes `orders` into the ConfigMap (a merge patch: other data sets'
/// keys stay), creating it when it does not exist.
async fn write(api: &Api<ConfigMap>, orders: &[WarmOrder]) -> anyhow::Result<()> {
    let mut data = BTreeMap::new();
    for order in orders {
        data.insert(
            order.dataset.clone(),
            to_yaml(order).map_err(anyhow::Error::msg)?,
        );
    }
    let patch = serde_json::json!({ "data": data });
    // Patch, else create; a replica that loses the race to create patches
    // what the winner created.
    let mut created_by_another = false;
    loop {
        let patched = api
            .patch(
                WARM_ORDERS_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        match patched {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 && !created_by_another => {}
            Err(err) => return Err(err.into()),
        }
        let map = ConfigMap {
            metadata: crate::managed::metadata(WARM_ORDERS_CONFIGMAP, None),
            data: Some(data.clone()),
            ..ConfigMap::default()
        };
        match api.create(&PostParams::default(), &map).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => created_by_another = true,
            Err(err) => return Err(err.into()),
        }
    }
}
