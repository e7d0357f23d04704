//! Where a warm-up's listing comes from. One worker of the pool lists the
//! data set from the origin: the one sidecars send the prefix's LIST to
//! (the owner of `list:{prefix}` under the pool's ranking). The others page
//! through its listing over the mesh, which it answers from the one
//! listing it is reading (see [`crate::metadata`]), so a pool of N workers
//! lists the origin once, not N times. A worker that cannot reach that one
//! lists the origin itself from where it was.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;

use super::WarmPlan;
use crate::metadata::MetadataCache;
use crate::origin::wire::{self, LIST_PAGE};
use crate::origin::{ListPage, OriginError};
use crate::outbound::balance::rendezvous::{self, chunk_route};
use crate::outbound::connection::{Connection, ConnectionSettings};
use crate::tls::TlsState;

/// Tries of a page from the worker that lists before listing here.
const PEER_TRIES: u32 = 3;
/// Wait before the second try (twice that before the third).
const PEER_RETRY: Duration = Duration::from_millis(200);

/// How a worker reaches the other workers of its pool.
#[derive(Clone)]
pub struct Peers {
    /// Its mesh identity, when the pool speaks mutual TLS: a peer must
    /// present the same identity.
    pub tls: Option<Arc<TlsState>>,
    /// How connections are made.
    pub settings: ConnectionSettings,
    /// Deadline of one page.
    pub timeout: Duration,
}

/// Where the next page comes from.
pub enum Lister {
    /// This worker lists (through its metadata cache).
    Here,
    /// The worker that lists, over the mesh.
    Peer {
        /// The connection to it.
        connection: Connection,
        /// The data set's bucket on it.
        bucket: String,
        /// Deadline of one page.
        timeout: Duration,
    },
}

impl Lister {
    /// The lister for `plan`: here when this worker is the one that lists
    /// (or has no way to reach the one that does).
    pub fn for_plan(plan: &WarmPlan, peers: Option<&Peers>, bucket: &str) -> Self {
        let route = format!("list:{}", plan.prefix);
        let lister = rendezvous::owner(&plan.members, chunk_route(&route, 0));
        let (Some(lister), Some(peers)) = (lister, peers) else {
            return Self::Here;
        };
        if lister == plan.me {
            return Self::Here;
        }
        let address = &plan.addresses[lister];
        let tls = match &peers.tls {
            None => None,
            Some(state) => {
                let Some(expected) = state.own_id().and_then(|id| id.as_str().parse().ok()) else {
                    tracing::debug!("no identity yet to reach a peer with: listing here");
                    return Self::Here;
                };
                let mismatches = counter!(
                    "upstream_identity_mismatches_total",
                    "pool" => "warm-up",
                    "member" => address.clone()
                );
                Some(Arc::new(state.client_config(expected, mismatches)))
            }
        };
        Self::Peer {
            connection: Connection::new(address, peers.settings, tls),
            bucket: bucket.to_owned(),
            timeout: peers.timeout,
        }
    }

    /// The page of `prefix` after `after` ("" for the first).
    pub async fn page(
        &mut self,
        metadata: &Arc<MetadataCache>,
        prefix: &str,
        after: &str,
    ) -> Result<ListPage, OriginError> {
        if let Self::Peer {
            connection,
            bucket,
            timeout,
        } = self
        {
            let mut tries = 0;
            let why = loop {
                let from_peer =
                    tokio::time::timeout(*timeout, peer_page(connection, bucket, prefix, after))
                        .await
                        .unwrap_or_else(|_| Err(format!("no page within {timeout:?}")));
                match from_peer {
                    Ok(page) => return Ok(page),
                    // A worker starting or restarting answers again shortly.
                    Err(_) if tries + 1 < PEER_TRIES => {
                        tries += 1;
                        tokio::time::sleep(PEER_RETRY * tries).await;
                    }
                    Err(why) => break why,
                }
            };
            tracing::warn!(
                peer = connection.address(),
                %why,
                "the worker that lists this data set did not answer: listing the origin here"
            );
            *self = Self::Here;
        }
        metadata.page(prefix, after, LIST_PAGE).await
    }
}

/// One page of the listing from the worker that lists it.
async fn peer_page(
    connection: &Connection,
    bucket: &str,
    prefix: &str,
    after: &str,
) -> Result<ListPage, String> {
    let fetch = |query: String| async move {
        let request =
            wire::list_request(bucket, connection.address(), &query).map_err(|e| e.to_string())?;
        let response = connection.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = wire::list_xml(response.into_body()).await?;
        if !status.is_success() {
            let start: String = body.chars().take(200).collect();
            return Err(format!("{status}: {start}"));
        }
        Ok(body)
    };
    let after = (!after.is_empty()).then_some(after);
    wire::list_pages(prefix, after, LIST_PAGE, fetch, || {
        "it sent a listing that is not S3 XML".to_owned()
    })
    .await
}
