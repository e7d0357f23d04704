//! The body of `POST /warm/{dataset}`: what to warm, the pool to rank
//! chunks by, and the bounds on the origin.

use serde::Deserialize;

use super::WarmPlan;
use crate::outbound::balance::rendezvous::member_hash;

/// Most members a pool may name.
const MAX_MEMBERS: usize = 4096;
/// Most origin fetches at once one warm-up may ask for.
pub const MAX_CONCURRENCY: usize = 256;
/// Origin fetches at once when the request does not say.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// A warm-up as asked for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// Only keys under this prefix ("" for the whole data set).
    #[serde(default)]
    pub prefix: String,
    /// The pool's members as sidecars rank them.
    pub members: Vec<WarmMember>,
    /// Which member this worker is (its address in `members`).
    pub member: String,
    /// Origin fetches at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Bound on origin bytes per second.
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
    /// The control plane's order this carries out, if any.
    #[serde(default)]
    pub order: Option<u64>,
}

/// One member of the pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmMember {
    /// `host:port`, exactly as the pool names it.
    pub address: String,
    /// Its share of chunks.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

fn default_weight() -> u32 {
    1
}

/// Why a warm-up request was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadWarmUp(pub String);

impl WarmRequest {
    /// The checked plan, or what is wrong with the request.
    pub fn plan(self) -> Result<WarmPlan, BadWarmUp> {
        let bad = |why: String| Err(BadWarmUp(why));
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return bad(format!(
                "'members' must name 1 to {MAX_MEMBERS} workers, not {}",
                self.members.len()
            ));
        }
        if let Some(m) = self.members.iter().find(|m| m.weight == 0) {
            return bad(format!("member {} has weight 0", m.address));
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|o| o.address == m.address) {
                return bad(format!("member {} is named twice", m.address));
            }
        }
        let Some(me) = self.members.iter().position(|m| m.address == self.member) else {
            return bad(format!("'member' {} is not one of 'members'", self.member));
        };
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return bad(format!(
                "'concurrency' must be 1 to {MAX_CONCURRENCY}, not {}",
                self.concurrency
            ));
        }
        if self.bytes_per_second == Some(0) {
            return bad("'bytes_per_second' must be more than 0".to_owned());
        }
        if self.prefix.len() > 1024 {
            return bad("'prefix' is longer than 1024 bytes".to_owned());
        }
        Ok(WarmPlan {
            members: self
                .members
                .iter()
                .map(|m| (member_hash(&m.address), m.weight))
                .collect(),
            addresses: self.members.into_iter().map(|m| m.address).collect(),
            me,
            prefix: self.prefix,
            member: self.member,
            concurrency: self.concurrency,
            bytes_per_second: self.bytes_per_second,
            order: self.order,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<WarmPlan, String> {
        let request: WarmRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        request.plan().map_err(|e| e.0)
    }

    #[test]
    fn a_plan_finds_this_worker_among_the_members() {
        let plan = request(
            r#"{"members": [{"address": "a:1"}, {"address": "b:1", "weight": 3}], "member": "b:1"}"#,
        )
        .expect("valid");
        assert_eq!(plan.me, 1);
        assert_eq!(plan.members[1], (member_hash("b:1"), 3));
        assert_eq!(plan.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(plan.prefix, "");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (json, says) in [
            (r#"{"members": [], "member": "a:1"}"#, "1 to"),
            (
                r#"{"members": [{"address": "a:1"}], "member": "b:1"}"#,
                "not one of",
            ),
            (
                r#"{"members": [{"address": "a:1", "weight": 0}], "member": "a:1"}"#,
                "weight 0",
            ),
            (
                r#"{"members": [{"address": "a:1"}, {"address": "a:1"}], "member": "a:1"}"#,
                "twice",
            ),
            (
                r#"{"members": [{"address": "a:1"}], "member": "a:1", "concurrency": 0}"#,
                "'concurrency'",
            ),
            (
                r#"{"members": [{"address": "a:1"}], "member": "a:1", "bytes_per_second": 0}"#,
                "bytes_per_second",
            ),
            (
                r#"{"members": [{"address": "a:1"}], "member": "a:1", "x": 1}"#,
                "unknown field",
            ),
        ] {
            let err = request(json).expect_err(json);
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}
