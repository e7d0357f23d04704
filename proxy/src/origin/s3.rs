//! `s3://`: any S3-compatible store, through the `object_store` client (its
//! SigV4 signing, retries and credential chain), never hand-written requests.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};

use ferry_config::S3Options;

use super::{ListPage, ObjectMeta, Origin, OriginError, check_length};

/// Reads objects under a prefix of one bucket.
pub struct S3Origin {
    store: AmazonS3,
    prefix: String,
    url: String,
}

impl S3Origin {
    /// An origin for `s3://bucket/prefix`; endpoint, region and credentials come
    /// from `options` or the standard AWS environment variables.
    pub fn new(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // Client options first: `with_client_options` replaces them whole,
        // including the allow-http flag set below.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(timeout.min(Duration::from_secs(10))),
            );
        let endpoint = options.endpoint.clone().or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|name| std::env::var(name).ok())
        });
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let region = options
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder
            .with_region(region)
            .with_skip_signature(options.anonymous)
            // A few quick retries; a cache in front of a sick store should fail
            // fast and let the client retry, not hold connections for minutes.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: timeout,
                ..RetryConfig::default()
            });
        Ok(Self {
            store: builder.build()?,
            prefix: prefix.to_owned(),
            url: format!("s3://{bucket}/{prefix}"),
        })
    }

    fn path_of(&self, key: &str) -> Result<Path, OriginError> {
        Path::parse(format!("{}{key}", self.prefix)).map_err(|_| OriginError::InvalidKey {
            key: key.to_owned(),
            why: "it is not a valid object path (empty, '.' or '..' segments)",
        })
    }

    fn error(&self, key: &str, err: object_store::Error) -> OriginError {
        match err {
            object_store::Error::NotFound { .. } => OriginError::NotFound {
                key: key.to_owned(),
            },
            object_store::Error::Precondition { .. } => OriginError::Changed {
                key: key.to_owned(),
            },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => OriginError::Denied {
                origin: self.url.clone(),
                detail: source.to_string(),
            },
            other => OriginError::unavailable(&self.url, other),
        }
    }

    fn meta_of(&self, meta: object_store::ObjectMeta) -> Option<ObjectMeta> {
        let full = meta.location.as_ref();
        let key = full.strip_prefix(self.prefix.as_str())?;
        Some(ObjectMeta {
            key: key.to_owned(),
            size: meta.size,
            etag: meta
                .e_tag
                .as_deref()
                .map(|tag| tag.trim_matches('"').to_owned())
                .unwrap_or_default(),
            modified: SystemTime::from(meta.last_modified),
        })
    }

    async fn list_inner(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, OriginError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        // object_store lists by whole path segments: list the directory that
        // holds the prefix and filter the rest by string prefix.
        let dir = full_prefix.rfind('/').map_or("", |at| &full_prefix[..at]);
        let dir = (!dir.is_empty()).then(|| Path::from(dir));
        let offset = start_after.map(|after| Path::from(format!("{}{after}", self.prefix)));
        let mut stream = match &offset {
            Some(offset) => self.store.list_with_offset(dir.as_ref(), offset),
            None => self.store.list(dir.as_ref()),
        };
        let mut page = ListPage::default();
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| self.error(prefix, e))?;
            let location = item.location.as_ref();
            if !location.starts_with(&full_prefix) {
                if location > full_prefix.as_str() {
                    break; // sorted: nothing further can match
                }
                continue;
            }
            if page.objects.len() == max {
                page.truncated = true;
                break;
            }
            if let Some(meta) = self.meta_of(item) {
                page.objects.push(meta);
            }
        }
        Ok(page)
    }
}

impl Origin for S3Origin {
    fn describe(&self) -> &str {
        &self.url
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            let meta = self
                .store
                .head(&path)
                .await
                .map_err(|e| self.error(key, e))?;
            self.meta_of(meta).ok_or_else(|| OriginError::NotFound {
                key: key.to_owned(),
            })
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: (!etag.is_empty()).then(|| format!("\"{etag}\"")),
                ..GetOptions::default()
            };
            let result = self
                .store
                .get_opts(&path, options)
                .await
                .map_err(|e| self.error(key, e))?;
            let bytes = result.bytes().await.map_err(|e| self.error(key, e))?;
            check_length(&self.url, key, &range, bytes.len())?;
            Ok(bytes)
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        Box::pin(self.list_inner(prefix, start_after, max))
    }
}
