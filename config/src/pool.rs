//! Worker pools: the cache workers a sidecar sends misses to, and how it
//! balances, fails over and hedges across them.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::identity::{SpiffeId, SpiffePattern};
use crate::units::{ByteSize, HumanDuration, parse_duration};

/// A named pool of cache workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPool")]
pub struct PoolSpec {
    /// The pool's name, used by data sets and in metrics.
    pub name: String,
    /// Its workers. None is a valid state (a discovered pool whose workers
    /// are not ready yet): its data sets answer 503 naming the pool, or read
    /// the origin where their policy says so.
    pub members: Vec<MemberSpec>,
    /// Identity every worker must present (unless a member names its own);
    /// absent means any workload of the trust domain.
    pub identity: Option<SpiffePattern>,
    /// How requests are spread and retried.
    pub balance: BalanceSpec,
}

/// One worker of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// `host:port` of the worker's inbound listener.
    pub address: String,
    /// Relative share of chunks it owns (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure domain (informational; shown in metrics and /config).
    #[serde(default)]
    pub zone: Option<String>,
    /// The exact identity this worker must present.
    #[serde(default)]
    pub identity: Option<SpiffeId>,
}

fn default_weight() -> u32 {
    1
}

/// Checks that no two of `pools` share a name; else the field and why.
pub fn check_unique_names(pools: &[PoolSpec]) -> Result<(), (String, String)> {
    for (i, pool) in pools.iter().enumerate() {
        if pools[..i].iter().any(|p| p.name == pool.name) {
            return Err((
                format!("pools[{i}].name"),
                format!("pool name '{}' is used twice", pool.name),
            ));
        }
    }
    Ok(())
}

impl MemberSpec {
    /// A member of weight 1 in no zone.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            weight: 1,
            zone: None,
            identity: None,
        }
    }

    /// Parses `host:port[@weight][/zone]`, the flag form.
    pub fn parse_flag(text: &str) -> Result<Self, String> {
        let (rest, zone) = match text.split_once('/') {
            Some((rest, zone)) => (rest, Some(zone.to_owned())),
            None => (text, None),
        };
        let (address, weight) = match rest.split_once('@') {
            Some((address, weight)) => (
                address,
                weight
                    .parse()
                    .map_err(|_| format!("weight '{weight}' of '{text}' is not a whole number"))?,
            ),
            None => (rest, 1),
        };
        let member = Self {
            address: address.to_owned(),
            weight,
            zone,
            identity: None,
        };
        member.check()?;
        Ok(member)
    }

    fn check(&self) -> Result<(), String> {
        let valid = self.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!(
                "member address '{}' is not host:port (e.g. 10.0.0.7:4143)",
                self.address
            ));
        }
        if self.weight == 0 {
            return Err(format!(
                "member '{}' has weight 0: weights start at 1",
                self.address
            ));
        }
        Ok(())
    }
}

/// When a second request races a slow first one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HedgeSpec {
    /// After the pool's observed p95 time to first byte.
    #[default]
    Auto,
    /// Never.
    Off,
    /// After this long without a response.
    After(Duration),
}

impl std::str::FromStr for HedgeSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            other => parse_duration(other).map(Self::After).map_err(|_| {
                format!(
                    "hedge '{other}' is not allowed: use auto (the pool's p95), off, or a duration like 20ms"
                )
            }),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for HedgeSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for HedgeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Off => f.write_str("off"),
            Self::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// Load balancing, failover and hedging across a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSpec {
    /// A chunk's owner is skipped when its in-flight requests exceed
    /// (1 + load_epsilon) × the pool mean.
    pub load_epsilon: f64,
    /// Second request after this long without a response.
    pub hedge: HedgeSpec,
    /// Deadline of one request to a worker (headers and body).
    pub chunk_timeout: HumanDuration,
    /// Deadline of a connection attempt.
    pub connect_timeout: HumanDuration,
    /// Retries allowed as a fraction of requests.
    pub retry_ratio: f64,
    /// Retries always allowed per second, however few requests there are.
    pub retry_min_per_second: u32,
    /// Consecutive failures that eject a worker.
    pub eject_after_failures: u32,
    /// First ejection's length; each further ejection doubles it.
    pub eject_base: HumanDuration,
    /// Longest ejection.
    pub eject_max: HumanDuration,
    /// HTTP/2 flow-control window per stream to workers.
    pub stream_window: ByteSize,
    /// HTTP/2 flow-control window per connection to workers.
    pub connection_window: ByteSize,
}

impl Default for BalanceSpec {
    fn default() -> Self {
        Self {
            load_epsilon: 0.25,
            hedge: HedgeSpec::Auto,
            chunk_timeout: HumanDuration(Duration::from_secs(10)),
            connect_timeout: HumanDuration(Duration::from_secs(2)),
            retry_ratio: 0.2,
            retry_min_per_second: 10,
            eject_after_failures: 5,
            eject_base: HumanDuration(Duration::from_secs(1)),
            eject_max: HumanDuration(Duration::from_secs(60)),
            // Measured with ferry-bench epochs --shards through the pool
            // (4 MiB chunks): 64 KiB windows (the HTTP/2 default) 1.5 GB/s,
            // 1 MiB / 4 MiB 2.7 GB/s, 8 MiB / 32 MiB 2.7 GB/s. The smaller
            // pair buffers 8x less per connection for the same speed.
            stream_window: ByteSize::mib(1),
            connection_window: ByteSize::mib(4),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    members: Vec<MemberSpec>,
    #[serde(default)]
    identity: Option<SpiffePattern>,
    #[serde(default)]
    balance: BalanceSpec,
}

impl TryFrom<RawPool> for PoolSpec {
    type Error = String;
    fn try_from(raw: RawPool) -> Result<Self, String> {
        let pool = Self {
            name: raw.name,
            members: raw.members,
            identity: raw.identity,
            balance: raw.balance,
        };
        pool.validate().map_err(|(_, message)| message)?;
        Ok(pool)
    }
}

impl PoolSpec {
    /// A pool `name` of `members` with default balancing and no identity.
    pub fn new(name: &str, members: Vec<MemberSpec>) -> Self {
        Self {
            name: name.to_owned(),
            members,
            identity: None,
            balance: BalanceSpec::default(),
        }
    }

    /// Checks every field's range (a file's parser checks the same): else
    /// the field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() {
            return Err(("name", "a pool needs a name".to_owned()));
        }
        let mut seen = HashSet::new();
        for member in &self.members {
            member.check().map_err(|m| ("members", m))?;
            if !seen.insert(member.address.as_str()) {
                return Err((
                    "members",
                    format!(
                        "pool '{}' lists member '{}' twice",
                        self.name, member.address
                    ),
                ));
            }
        }
        let balance = &self.balance;
        if !(0.0..=10.0).contains(&balance.load_epsilon) {
            return Err((
                "balance.load_epsilon",
                format!(
                    "load_epsilon {} is out of range: allowed 0 to 10",
                    balance.load_epsilon
                ),
            ));
        }
        if !(0.0..=1.0).contains(&balance.retry_ratio) {
            return Err((
                "balance.retry_ratio",
                format!(
                    "retry_ratio {} is out of range: allowed 0 to 1",
                    balance.retry_ratio
                ),
            ));
        }
        if balance.eject_after_failures == 0 {
            return Err((
                "balance.eject_after_failures",
                "eject_after_failures must be at least 1".to_owned(),
            ));
        }
        if balance.stream_window < ByteSize::kib(64)
            || balance.connection_window < balance.stream_window
        {
            return Err((
                "balance.stream_window",
                format!(
                    "windows too small: stream_window ({}) must be at least 64KiB and connection_window ({}) at least stream_window",
                    balance.stream_window, balance.connection_window
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_form_carries_weight_and_zone() {
        let member = MemberSpec::parse_flag("10.0.0.1:4143@3/zone-a").expect("member");
        assert_eq!(member.address, "10.0.0.1:4143");
        assert_eq!(member.weight, 3);
        assert_eq!(member.zone.as_deref(), Some("zone-a"));
        assert_eq!(MemberSpec::parse_flag("w1:4143").expect("member").weight, 1);
        for bad in ["nohost", "h:0", "h:99999", ":4143", "h:1@0", "h:1@x"] {
            assert!(MemberSpec::parse_flag(bad).is_err(), "{bad}");
        }
    }
}
