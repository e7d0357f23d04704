//! Origins: where a data set's bytes really live. A worker fetches each missing
//! chunk from its origin once; everything else is served from cache.

mod file;
mod http;
mod s3;
mod synthetic;
pub mod wire;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;

use ferry_config::{DatasetPolicy, OriginSpec};

pub use file::FileOrigin;
pub use http::{HttpOrigin, TenantResolver};
pub use s3::S3Origin;
pub use synthetic::SyntheticOrigin;

/// What an origin knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the data set.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag without quotes; identifies this version of the object.
    pub etag: String,
    /// Last modification time.
    pub modified: SystemTime,
}

/// One page of a sorted listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Objects in ascending key order.
    pub objects: Vec<ObjectMeta>,
    /// Whether objects after the last one exist.
    pub truncated: bool,
}

/// Why an origin could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The object does not exist.
    #[error("object '{key}' does not exist at the origin")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The object changed at the origin since its metadata was read.
    #[error("object '{key}' changed at the origin while it was being read")]
    Changed {
        /// The key asked for.
        key: String,
    },
    /// The key is not acceptable for this origin (e.g. it escapes a directory).
    #[error("key '{key}' is refused: {why}")]
    InvalidKey {
        /// The key asked for.
        key: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// The origin refused access.
    #[error("origin {origin} denied access: {detail}")]
    Denied {
        /// The origin, as configured.
        origin: String,
        /// What it said.
        detail: String,
    },
    /// The origin cannot do this at all.
    #[error("origin {origin} does not support {what}")]
    Unsupported {
        /// The origin, as configured.
        origin: String,
        /// The operation.
        what: &'static str,
    },
    /// What was read does not fit the object (a chunk of the wrong length).
    #[error("object '{key}' came back inconsistent: {detail}")]
    Corrupt {
        /// The key read.
        key: String,
        /// What did not fit.
        detail: String,
    },
    /// The upstream is overloaded and asked for a slower pace (`SlowDown`):
    /// back-pressure, not a failure.
    #[error("{origin} is busy: {detail}")]
    Busy {
        /// The upstream that said so.
        origin: String,
        /// What it said.
        detail: String,
    },
    /// The origin is down, slow or answered nonsense.
    #[error("origin {origin} is unavailable: {detail}")]
    Unavailable {
        /// The origin, as configured.
        origin: String,
        /// What went wrong.
        detail: String,
    },
}

impl OriginError {
    /// Builds an [`OriginError::Unavailable`] for `origin`.
    pub fn unavailable(origin: &(impl fmt::Display + ?Sized), detail: impl fmt::Display) -> Self {
        Self::Unavailable {
            origin: origin.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// A source of objects.
pub trait Origin: Send + Sync + 'static {
    /// The origin as configured, for messages.
    fn describe(&self) -> &str;

    /// Size, ETag and modification time of `key`.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>>;

    /// Exactly the bytes of `range` of version `etag` of `key`; a different version
    /// is [`OriginError::Changed`], fewer bytes is an error, never a short result.
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>>;

    /// Refuses keys this origin would never serve (e.g. ones that escape a
    /// directory), before any cache or listing answers for them.
    fn check_key<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<(), OriginError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Up to `max` objects whose keys start with `prefix` and sort after
    /// `start_after`, in ascending key order.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>>;
}

/// What every origin of a proxy is built with.
#[derive(Clone, Debug)]
pub struct OriginSettings {
    /// Deadline of one request to an HTTP or S3 origin.
    pub timeout: std::time::Duration,
    /// The control plane's host, which a namespace's origins never reach.
    pub control_plane_host: Option<String>,
}

/// Builds the origin a data set policy names. A namespace's data set
/// (`namespace` set) never reads a file, and its HTTP origin never connects
/// to loopback, link-local or control-plane addresses by name.
pub fn from_policy(
    policy: &DatasetPolicy,
    settings: &OriginSettings,
) -> anyhow::Result<Arc<dyn Origin>> {
    let spec = policy
        .origin
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no origin is configured"))?;
    let tenant = policy.namespace.as_ref();
    Ok(match spec {
        OriginSpec::File { .. } if tenant.is_some() => anyhow::bail!(
            "origin {spec} is refused: a namespace's data set never reads the worker's files"
        ),
        OriginSpec::File { root } => Arc::new(FileOrigin::new(root)?),
        OriginSpec::Http { base } => {
            let guard = tenant.map(|_| TenantResolver::new(settings.control_plane_host.clone()));
            Arc::new(HttpOrigin::new(base, settings.timeout, guard)?)
        }
        OriginSpec::S3 { bucket, prefix } => {
            Arc::new(S3Origin::new(bucket, prefix, &policy.s3, settings.timeout)?)
        }
        OriginSpec::Synthetic(spec) => Arc::new(SyntheticOrigin::new(spec.clone())),
    })
}

/// Checks that a read returned exactly the bytes asked for.
pub fn check_length(
    origin: &str,
    key: &str,
    range: &Range<u64>,
    got: usize,
) -> Result<(), OriginError> {
    let want = range.end - range.start;
    if got as u64 == want {
        Ok(())
    } else {
        Err(OriginError::Unavailable {
            origin: origin.to_owned(),
            detail: format!("returned {got} bytes of '{key}' where {want} were asked for"),
        })
    }
}
