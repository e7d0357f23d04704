//! The S3 front door: routing, ranges, preconditions, listings, XML, errors.

mod body;
mod conditional;
mod error;
mod handler;
mod prefetch;
mod range;
mod route;
mod token;
mod xml;

pub use body::{BodyError, ProxyBody};
pub use error::S3Error;
pub use handler::FrontDoor;
