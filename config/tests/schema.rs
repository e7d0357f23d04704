//! The schema as users meet it: examples load, defaults apply, mistakes are located.

use std::path::Path;
use std::time::Duration;

use ferry_config::{
    ByteSize, CachePolicy, ConfigError, MetadataTtl, OriginSpec, PolicyFile, ProxyConfig, Role,
    from_yaml, from_yaml_file,
};

fn proxy_error(text: &str) -> ConfigError {
    from_yaml::<ProxyConfig>(text, "test.yaml").expect_err("config should be refused")
}

#[test]
fn every_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("policy-") {
            let policy: PolicyFile = from_yaml_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!policy.datasets.is_empty(), "{name} defines data sets");
        } else {
            let config: ProxyConfig = from_yaml_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!config.datasets.is_empty(), "{name} defines data sets");
            config.validate(name).unwrap_or_else(|e| panic!("{e}"));
        }
        loaded += 1;
    }
    assert!(loaded >= 6, "only {loaded} examples found");
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config: ProxyConfig = from_yaml(
        "datasets:\n  - name: imagenet\n    origin: synthetic://?count=10\n",
        "t.yaml",
    )
    .expect("config");
    assert_eq!(config.role, Role::Worker);
    assert_eq!(config.listen.to_string(), "127.0.0.1:4140");
    assert_eq!(config.admin.to_string(), "127.0.0.1:4191");
    let dataset = &config.datasets[0];
    assert_eq!(dataset.bucket, "imagenet", "bucket defaults to the name");
    assert_eq!(dataset.chunk_size, ByteSize::mib(4));
    assert_eq!(dataset.metadata_ttl, MetadataTtl::Job);
    assert_eq!(dataset.cache.worker.policy, CachePolicy::Pin);
    assert_eq!(dataset.cache.sidecar.size, ByteSize::gib(1));
}

#[test]
fn written_values_override_defaults() {
    let config: ProxyConfig = from_yaml(
        "role: sidecar\nthreads: 3\ndatasets:\n  - name: imagenet\n    bucket: train\n    \
         origin: s3://b/p/\n    s3: { endpoint: 'http://127.0.0.1:9000', anonymous: true }\n    \
         chunk_size: 8MiB\n    metadata_ttl: 30s\n    read_ahead: 0\n    \
         cache: { sidecar: { size: 512MiB, policy: s3fifo } }\n",
        "t.yaml",
    )
    .expect("config");
    assert_eq!(config.role, Role::Sidecar);
    assert_eq!(config.threads, Some(3));
    let dataset = &config.datasets[0];
    assert_eq!(dataset.bucket, "train");
    assert!(
        matches!(&dataset.origin, Some(OriginSpec::S3 { bucket, prefix }) if bucket == "b" && prefix == "p/")
    );
    assert_eq!(
        dataset.s3.endpoint.as_deref(),
        Some("http://127.0.0.1:9000")
    );
    assert!(dataset.s3.anonymous);
    assert_eq!(dataset.chunk_size, ByteSize::mib(8));
    assert_eq!(
        dataset.metadata_ttl,
        MetadataTtl::After(Duration::from_secs(30))
    );
    assert_eq!(dataset.read_ahead, 0);
    assert_eq!(dataset.cache.sidecar.size, ByteSize::mib(512));
    assert_eq!(dataset.cache.sidecar.policy, CachePolicy::S3fifo);
    assert_eq!(
        dataset.cache.worker.policy,
        CachePolicy::Pin,
        "untouched role keeps defaults"
    );
}

#[test]
fn unknown_fields_are_refused_with_their_location() {
    let err = proxy_error(
        "datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n    colour: red\n",
    );
    assert_eq!((err.file.as_str(), err.line), ("test.yaml", Some(4)));
    assert_eq!(err.field, "datasets[0].colour");
    assert!(
        err.message.contains("expected one of name, bucket, origin"),
        "{err}"
    );
    let err = proxy_error("listen: 127.0.0.1:1\nadmn: 127.0.0.1:2\n");
    assert_eq!((err.line, err.field.as_str()), (Some(2), "admn"));
}

#[test]
fn bad_values_name_line_field_and_what_is_allowed() {
    let cases = [
        ("    chunk_size: 4XB\n", "datasets[0].chunk_size", "4MiB"),
        (
            "    chunk_size: 1KiB\n",
            "datasets[0].chunk_size",
            "allowed 64KiB to 256MiB",
        ),
        (
            "    read_ahead: 1000\n",
            "datasets[0].read_ahead",
            "allowed 0 to 64",
        ),
        (
            "    metadata_ttl: sometimes\n",
            "datasets[0].metadata_ttl",
            "'job'",
        ),
        (
            "    bucket: Bad_Bucket\n",
            "datasets[0].bucket",
            "lowercase letters",
        ),
        (
            "    cache: { worker: { policy: mru } }\n",
            "datasets[0].cache.worker.policy",
            "pin, lru, s3fifo",
        ),
        (
            "    cache: { worker: { size: lots } }\n",
            "datasets[0].cache.worker.size",
            "1GiB",
        ),
    ];
    for (line4, field, allowed) in cases {
        let text =
            format!("datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n{line4}");
        let err = proxy_error(&text);
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(allowed), "{err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with("test.yaml:4:") && shown.contains(field),
            "{shown}"
        );
    }
}

#[test]
fn bad_origins_are_located() {
    let err = proxy_error("datasets:\n  - name: imagenet\n    origin: ftp://host/data\n");
    assert_eq!(
        (err.line, err.field.as_str()),
        (Some(3), "datasets[0].origin")
    );
    assert!(err.message.contains("unknown scheme 'ftp'"), "{err}");
    assert!(err.message.contains("s3://bucket/prefix"), "{err}");
}

#[test]
fn duplicate_names_and_buckets_are_refused() {
    let err = proxy_error(
        "datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n  \
         - name: imagenet\n    origin: synthetic://?count=2\n",
    );
    assert!(
        err.message.contains("line 4 reuses the name 'imagenet'"),
        "{err}"
    );
    let err = proxy_error(
        "datasets:\n  - name: one-set\n    bucket: shared\n    origin: synthetic://?count=1\n  \
         - name: two-set\n    bucket: shared\n    origin: synthetic://?count=2\n",
    );
    assert!(err.message.contains("reuses bucket 'shared'"), "{err}");
}

#[test]
fn s3_settings_need_an_s3_origin() {
    let err = proxy_error(
        "datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n    s3: { region: x }\n",
    );
    assert!(err.message.contains("only to an s3:// origin"), "{err}");
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    let err = proxy_error("datasets: [\n");
    assert_eq!(err.line, Some(1));
    let err = from_yaml_file::<ProxyConfig>(Path::new("/nonexistent/ferry.yaml"))
        .expect_err("missing file");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/ferry.yaml: cannot read"),
        "{err}"
    );
    let err = proxy_error("datasets:\n  - origin: synthetic://?count=1\n");
    assert!(
        err.message.contains("name"),
        "missing field is named: {err}"
    );
}

const SIDECAR: &str = "role: sidecar\npools:\n  - name: workers\n    members:\n      - { address: 'w1:4143' }\n      - { address: 'w2:4143', weight: 3, zone: b }\n    balance: { hedge: 15ms, load_epsilon: 0.5 }\ndatasets:\n  - name: imagenet\n";

#[test]
fn sidecar_pools_parse_and_resolve() {
    let config: ProxyConfig = from_yaml(SIDECAR, "s.yaml").expect("config");
    config.validate("s.yaml").expect("valid");
    let pool = config.datasets[0]
        .pool_in(&config.pools)
        .expect("the only pool");
    assert_eq!(pool.name, "workers");
    assert_eq!(pool.members[1].weight, 3);
    assert_eq!(pool.members[1].zone.as_deref(), Some("b"));
    assert_eq!(
        pool.balance.hedge,
        ferry_config::HedgeSpec::After(Duration::from_millis(15))
    );
    assert_eq!(pool.balance.load_epsilon, 0.5);
    assert_eq!(pool.balance.retry_ratio, 0.2, "defaults fill the rest");
    assert!(
        config.datasets[0].origin.is_none(),
        "a sidecar needs no origin"
    );
}

#[test]
fn bad_pools_are_refused_with_their_location() {
    // No members is a valid state: a discovered pool's workers may not be
    // ready yet, and its data sets answer 503 naming the pool meanwhile.
    let empty: ProxyConfig = from_yaml(
        "role: sidecar\npools:\n  - name: workers\n    members: []\ndatasets:\n  - name: imagenet\n",
        "t.yaml",
    )
    .expect("an empty pool parses");
    empty.validate("t.yaml").expect("and is valid");
    let err = proxy_error(
        "pools:\n  - name: workers\n    members: [{ address: 'a:1' }, { address: 'a:1' }]\n",
    );
    assert_eq!((err.line, err.field.as_str()), (Some(2), "pools[0]"));
    assert!(err.message.contains("lists member 'a:1' twice"), "{err}");
    let err = proxy_error("pools:\n  - name: workers\n    members: [{ address: 'no-port' }]\n");
    assert!(err.message.contains("not host:port"), "{err}");
    let err = proxy_error(
        "pools:\n  - name: w\n    members: [{ address: 'a:1' }]\n    balance: { hedge: soon }\n",
    );
    assert_eq!(err.field, "pools[0].balance.hedge");
    assert!(err.message.contains("auto"), "{err}");
}

#[test]
fn roles_get_what_they_need() {
    let config: ProxyConfig =
        from_yaml("role: sidecar\ndatasets:\n  - name: imagenet\n", "t.yaml").expect("parses");
    let err = config.validate("t.yaml").expect_err("no pool");
    assert_eq!(err.field, "datasets[0].pool");
    assert!(err.message.contains("define one under `pools:`"), "{err}");
    let text = SIDECAR.replace(
        "  - name: imagenet\n",
        "  - name: imagenet\n    pool: other\n",
    );
    let config: ProxyConfig = from_yaml(&text, "t.yaml").expect("parses");
    let err = config.validate("t.yaml").expect_err("unknown pool");
    assert!(err.message.contains("names pool 'other'"), "{err}");
    let config: ProxyConfig =
        from_yaml("datasets:\n  - name: imagenet\n", "t.yaml").expect("parses");
    let err = config
        .validate("t.yaml")
        .expect_err("worker without origin");
    assert_eq!(err.field, "datasets[0].origin");
    let err = proxy_error("datasets:\n  - name: imagenet\n    on_pool_down: origin\n");
    assert!(err.message.contains("needs an origin"), "{err}");
}

#[test]
fn identity_settings_and_allow_lists_are_validated_where_written() {
    let err = proxy_error(
        "datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n    allow:\n      - 'spiffe://cluster.local/ns/tr*in/sa/job'\n",
    );
    assert_eq!(
        (err.line, err.field.as_str()),
        (Some(5), "datasets[0].allow[0]")
    );
    assert!(err.message.contains("whole-segment '*'"), "{err}");
    let config: ProxyConfig = from_yaml(
        "identity:\n  mode: control-plane\n  control_plane: https://cp:8086\n  token_file: /t\n  trust_bundle: /b.pem\n\
         datasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n    allow: ['spiffe://cluster.local/ns/train/sa/*']\n",
        "t.yaml",
    )
    .expect("config");
    config.validate("t.yaml").expect("valid");
    let id: ferry_config::SpiffeId = "spiffe://cluster.local/ns/train/sa/job"
        .parse()
        .expect("id");
    assert!(config.datasets[0].allow[0].matches(&id));
    let config: ProxyConfig = from_yaml(
        "identity: { mode: control-plane }\ndatasets:\n  - name: imagenet\n    origin: synthetic://?count=1\n",
        "t.yaml",
    )
    .expect("parses");
    let err = config.validate("t.yaml").expect_err("incomplete identity");
    assert_eq!(err.field, "identity.control_plane");
    let err = proxy_error("identity: { mode: sometimes }\n");
    assert!(
        err.message.contains("disabled") || err.message.contains("control-plane"),
        "{err}"
    );
}

#[test]
fn every_example_survives_the_wire_and_the_saved_state() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let datasets = if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("policy-"))
        {
            let policy: PolicyFile = from_yaml_file(&path).expect("policy");
            let yaml = ferry_config::to_yaml(&policy).expect("yaml");
            let again: PolicyFile =
                ferry_config::from_yaml(&yaml, "saved").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(again, policy, "{}", path.display());
            policy.datasets.0
        } else {
            let config: ProxyConfig = from_yaml_file(&path).expect("config");
            let yaml = ferry_config::to_yaml(&config).expect("yaml");
            let again: ProxyConfig =
                ferry_config::from_yaml(&yaml, "saved").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(again, config, "{}", path.display());
            config.datasets.0
        };
        let json = serde_json::to_string(&datasets).expect("json");
        let back: Vec<ferry_config::DatasetPolicy> =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(back, datasets, "{}", path.display());
    }
}

#[test]
fn policies_built_in_code_are_checked_as_files_are() {
    use ferry_config::{ByteSize, DatasetPolicy, PoolSpec, ProxyConfig};
    let mut config = ProxyConfig::default();
    let mut policy = DatasetPolicy::new("imagenet", "imagenet");
    policy.origin = Some("synthetic://?count=3".parse().expect("origin"));
    config.datasets.0.push(policy.clone());
    config.validate("flags").expect("a default policy is valid");

    let mut tiny = policy.clone();
    tiny.chunk_size = ByteSize::kib(1);
    let err = ProxyConfig {
        datasets: ferry_config::Datasets(vec![tiny]),
        ..ProxyConfig::default()
    }
    .validate("flags")
    .expect_err("tiny chunks");
    assert_eq!(err.field, "datasets[0].chunk_size");
    assert!(err.message.contains("out of range"), "{err}");

    let err = ProxyConfig {
        datasets: ferry_config::Datasets(vec![policy.clone(), policy.clone()]),
        ..ProxyConfig::default()
    }
    .validate("flags")
    .expect_err("twice");
    assert!(err.message.contains("reuses the name or bucket"), "{err}");

    let mut pool = PoolSpec::new("workers", Vec::new());
    pool.balance.load_epsilon = 11.0;
    let err = ProxyConfig {
        role: ferry_config::Role::Sidecar,
        pools: vec![pool],
        ..ProxyConfig::default()
    }
    .validate("flags")
    .expect_err("epsilon");
    assert_eq!(err.field, "pools[0].balance.load_epsilon");
}
