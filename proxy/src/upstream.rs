//! Where a data set's misses go: the origin itself (a worker's, or a
//! single-node proxy's) or the pool of workers (a sidecar's). Both answer
//! the same questions — metadata, a chunk, a listing — so the chunk and
//! metadata layers need not know which it is; the data set does.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::origin::{ListPage, ObjectMeta, Origin, OriginError};
use crate::outbound::PoolUpstream;
use crate::outbound::balance::Pool;

/// A data set's upstream.
#[derive(Clone)]
pub enum Upstream {
    /// The origin: `file://`, `http(s)://`, `s3://`, `synthetic://`.
    Origin(Arc<dyn Origin>),
    /// A pool of workers, each chunk read from the worker that owns it.
    Pool(Arc<PoolUpstream>),
}

impl Upstream {
    fn source(&self) -> &dyn Origin {
        match self {
            Self::Origin(origin) => origin.as_ref(),
            Self::Pool(pool) => pool.as_ref(),
        }
    }

    /// The upstream as configured, for messages.
    pub fn describe(&self) -> &str {
        self.source().describe()
    }

    /// The pool, for a sidecar's data set.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        match self {
            Self::Origin(_) => None,
            Self::Pool(upstream) => Some(upstream.pool()),
        }
    }

    /// Size, ETag and modification time of `key`.
    pub fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        self.source().head(key)
    }

    /// Exactly `range` of version `etag` of `key`.
    pub fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        self.source().read(key, range, etag)
    }

    /// Refuses keys this upstream would never serve.
    pub fn check_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), OriginError>> {
        self.source().check_key(key)
    }

    /// Up to `max` objects under `prefix` after `start_after`, in key order.
    pub fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        self.source().list(prefix, start_after, max)
    }
}
