//! Ferry's data plane: one binary, two roles. The worker serves data sets
//! from their origins through a chunk cache behind an S3 front door.

pub mod admin;
pub mod admission;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod dataset;
pub mod flight;
pub mod identity;
pub mod mesh;
pub mod metadata;
pub mod mount;
pub mod origin;
pub mod outbound;
pub mod prefetch;
pub mod readiness;
pub mod runtime;
pub mod s3;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod warm;
