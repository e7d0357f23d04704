//! The Grafana dashboard and the Prometheus alert rules in `charts/ferry/`
//! only use metrics (and label names) that a running mesh exports: a
//! control plane, a worker with a disk tier and a sidecar, with identity and
//! tracing on, each scraped after some reads. Every expression must parse as
//! PromQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::otlp::OtlpReceiver;
use common::plane::ControlPlane;
use common::{ProxyProcess, TempDir};
use ferry_config::exposition::{Exposition, Kind};
use promql_parser::parser::{self, Expr};

const SPEC: &str = "count=20&size=20KiB&seed=5";

/// Metric families a process exports: name → label names seen.
type Exported = BTreeMap<String, (Kind, BTreeSet<String>)>;

fn collect(text: &str, into: &mut Exported) {
    let exposition = Exposition::parse(text).expect("valid exposition");
    for family in exposition.families {
        let entry = into
            .entry(family.name.clone())
            .or_insert((family.kind, BTreeSet::new()));
        for sample in &family.samples {
            entry.1.extend(sample.labels.iter().map(|(k, _)| k.clone()));
        }
    }
}

/// Every selector in `expr`: (metric name, label names it matches on).
fn selectors(expr: &Expr, out: &mut Vec<(String, Vec<String>)>) {
    match expr {
        Expr::Aggregate(e) => {
            selectors(&e.expr, out);
            if let Some(param) = &e.param {
                selectors(param, out);
            }
        }
        Expr::Unary(e) => selectors(&e.expr, out),
        Expr::Binary(e) => {
            selectors(&e.lhs, out);
            selectors(&e.rhs, out);
        }
        Expr::Paren(e) => selectors(&e.expr, out),
        Expr::Subquery(e) => selectors(&e.expr, out),
        Expr::VectorSelector(vs) => out.push(selector(vs)),
        Expr::MatrixSelector(ms) => out.push(selector(&ms.vs)),
        Expr::Call(call) => call.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &promql_parser::parser::VectorSelector) -> (String, Vec<String>) {
    let name = vs.name.clone().expect("every selector names its metric");
    let labels = vs
        .matchers
        .matchers
        .iter()
        .map(|m| m.name.clone())
        .filter(|n| n != "__name__")
        .collect();
    (name, labels)
}

/// Checks one expression; returns the metric names it uses.
fn check_expression(source: &str, expr: &str, exported: &Exported) -> Vec<String> {
    // What Grafana substitutes before sending a query.
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$dataset", ".*");
    let parsed =
        parser::parse(&expr).unwrap_or_else(|e| panic!("{source}: not PromQL ({e}): {expr}"));
    let mut found = Vec::new();
    selectors(&parsed, &mut found);
    assert!(!found.is_empty(), "{source}: uses no metric: {expr}");
    let mut names = Vec::new();
    for (name, labels) in found {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                exported
                    .get(base)
                    .filter(|(kind, _)| *kind == Kind::Histogram)
                    .map(|f| (base.to_owned(), f))
            })
            .or_else(|| exported.get(&name).map(|f| (name.clone(), f)));
        let Some((family, (_, known))) = family else {
            panic!(
                "{source}: metric {name} is not exported by the control plane, a worker or a sidecar"
            );
        };
        for label in labels {
            assert!(
                known.contains(&label) || label == "le",
                "{source}: {family} has no label {label} (it has {known:?})"
            );
        }
        names.push(family);
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let charts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry");
    let dir = TempDir::new("dashboards");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    std::fs::write(
        policies.join("datasets.yaml"),
        format!(
            "datasets:\n  - name: imagenet\n    bucket: imagenet\n    origin: \"synthetic://?{SPEC}\"\n    \
             pool: workers\n    allow: [\"spiffe://cluster.local/ns/train/sa/*\"]\n"
        ),
    )
    .expect("write");
    let config_dir = policies.to_str().expect("path").to_owned();
    let plane = ControlPlane::start(dir.path(), &["--config-dir", &config_dir]);
    let receiver = OtlpReceiver::start().await;
    let tracing = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str())];
    let disk = dir.path().join("disk");
    let mut args: Vec<String> = vec!["worker".into()];
    args.extend(plane.flags("worker-token"));
    args.extend([
        "--disk-cache".into(),
        disk.display().to_string(),
        "--disk-cache-size".into(),
        "64MiB".into(),
    ]);
    let worker = ProxyProcess::start_with_env(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &tracing,
    );
    std::fs::write(
        policies.join("pools.yaml"),
        format!(
            "pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
             members: [{{ address: \"{}\" }}]\n",
            worker.inbound.expect("inbound")
        ),
    )
    .expect("write");
    let mut args: Vec<String> = vec!["sidecar".into()];
    args.extend(plane.flags("train-token"));
    let sidecar = ProxyProcess::start_with_env(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &tracing,
    );
    let spec = ferry_config::SyntheticSpec::from_query(SPEC).expect("spec");
    let client = reqwest::Client::new();
    for round in 0..2 {
        for index in 0..5 {
            let response = client
                .get(sidecar.url(&format!("/imagenet/{}", spec.key(index))))
                .send()
                .await
                .expect("get");
            assert_eq!(
                response.status().as_u16(),
                200,
                "round {round} read {index}"
            );
            let _ = response.bytes().await.expect("body");
        }
    }

    let mut exported = Exported::new();
    for admin in [
        plane.admin.clone(),
        worker.admin.to_string(),
        sidecar.admin.to_string(),
    ] {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        collect(&text, &mut exported);
    }

    let mut used = BTreeSet::new();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(charts.join("dashboards/ferry.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let source = format!("dashboard panel {:?}", panel["title"]);
            used.extend(check_expression(&source, expr, &exported));
            queries += 1;
        }
    }
    assert!(
        queries >= 20,
        "the dashboard has its panels: {queries} queries"
    );
    // The data-set picker: label_values(request_total, dataset).
    let (_, labels) = exported.get("request_total").expect("request_total");
    assert!(labels.contains("dataset"));

    let rules: serde_json::Value = ferry_config::from_yaml(
        &std::fs::read_to_string(charts.join("alerts/ferry.rules.yaml")).expect("rules"),
        "ferry.rules.yaml",
    )
    .expect("rules YAML");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("an alerting rule").to_owned();
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name} has a summary"
            );
            used.extend(check_expression(&format!("alert {name}"), expr, &exported));
            alerts.insert(name);
        }
    }
    for wanted in [
        "FerrySuccessRateLow",
        "FerryLatencyP99High",
        "FerryHitRatioCollapse",
        "FerryPoolMemberEjected",
        "FerryCertificateNearExpiry",
        "FerryControlPlaneDisconnected",
    ] {
        assert!(alerts.contains(wanted), "alert {wanted} is defined");
    }
    eprintln!(
        "{} metrics used by {queries} dashboard queries and {} alerts: {used:?}",
        used.len(),
        alerts.len()
    );
}
