//! Ferry's configuration schema: data set policies and proxy settings, parsed
//! from YAML with defaults, validated with errors that name file, line and field.

pub mod control_plane;
pub mod exposition;
pub mod identity;
pub mod injection;
pub mod load;
pub mod origin;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod snapshot;
pub mod synthetic;
pub mod telemetry;
pub mod tenancy;
pub mod units;
pub mod warm;

pub use control_plane::ControlPlaneConfig;
pub use identity::{
    BootstrapToken, BootstrapTokens, IdentityMode, IdentitySpec, SpiffeId, SpiffePattern,
};
pub use injection::{
    AppMountPath, InjectionConfig, LogLevel, NativeSidecars, PodSettings, Quantity,
};
pub use load::{ConfigError, from_yaml, from_yaml_file, to_yaml};
pub use origin::OriginSpec;
pub use policy::{
    CachePolicy, CacheSpec, DatasetPolicy, Datasets, PolicyFile, PoolDownPolicy, RoleCaches,
    S3Options, WarmLimits, WarmPolicy, check_namespace_name,
};
pub use pool::{BalanceSpec, HedgeSpec, MemberSpec, PoolSpec};
pub use proxy::{CacheOverride, DiskCacheSpec, Limits, MountSpec, ProxyConfig, Role};
pub use snapshot::{ProxySnapshot, WarmOrder, WatchEvent};
pub use synthetic::{SizeDistribution, SyntheticSpec};
pub use tenancy::{OriginPrefix, TenantSpec, off_limits_to_tenants};
pub use units::{ByteSize, HumanDuration, MetadataTtl};
