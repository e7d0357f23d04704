//! `ferryctl check`: what is wrong with the mesh, and what to do about it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use ferry_config::exposition::Exposition;

use super::{Output, Target};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Works now, will not for long or not everywhere.
    Warn,
    /// Broken.
    Fail,
}

/// One thing `check` looked at.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What it concerns: `control plane <addr>`, `proxy <addr>`, `pool <name>`.
    pub subject: String,
    /// What was found.
    pub message: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Finding {
    fn ok(subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Ok,
            subject: subject.into(),
            message: message.into(),
            advice: None,
        }
    }

    fn bad(
        severity: Severity,
        subject: impl Into<String>,
        message: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            subject: subject.into(),
            message: message.into(),
            advice: Some(advice.into()),
        }
    }
}

/// What `ferryctl check` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Whether nothing failed (warnings allowed).
    pub ok: bool,
    /// Everything looked at, in order.
    pub findings: Vec<Finding>,
}

/// Thresholds and addresses of a check.
pub struct CheckSettings {
    /// The control plane's admin address, unless the mesh runs without one.
    pub control_plane: Option<String>,
    /// A certificate with less left than this is near expiry.
    pub expiry_warning: Duration,
    /// Deadline of each request.
    pub timeout: Duration,
}

const CONTROL_PLANE_ADVICE: &str = "Start it (ferry-control-plane --config-dir DIR), or in a \
    cluster look at its pods and logs (kubectl -n ferry-system get pods; kubectl -n \
    ferry-system logs deploy/ferry-control-plane). Proxies keep serving their last good \
    configuration meanwhile, but cannot renew certificates.";

/// The control plane's state: findings, its version, and the proxies it lists.
pub async fn check_control_plane(
    address: &str,
    timeout: Duration,
    findings: &mut Vec<Finding>,
) -> Option<Vec<Target>> {
    let subject = format!("control plane {address}");
    let policies = match super::http::get(address, "/ready", timeout).await {
        Err(err) => Err(format!("unreachable: {err:#}")),
        Ok((status, _)) if !status.is_success() => {
            Err(format!("not ready (/ready answered {status})"))
        }
        Ok(_) => super::http::get_text(address, "/policies", timeout)
            .await
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).map_err(Into::into))
            .map_err(|err| format!("ready, but /policies failed: {err:#}")),
    };
    let policies = match policies {
        Ok(policies) => policies,
        Err(problem) => {
            findings.push(Finding::bad(
                Severity::Fail,
                subject,
                problem,
                CONTROL_PLANE_ADVICE,
            ));
            return None;
        }
    };
    let proxies = match super::http::get_text(address, "/proxies", timeout).await {
        Ok(text) => super::targets_from_listing(&text).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    findings.push(Finding::ok(
        subject,
        format!(
            "ready; configuration version {}, {} proxies watching",
            policies["version"],
            proxies.len()
        ),
    ));
    for refused in policies["refused"].as_array().into_iter().flatten() {
        findings.push(Finding::bad(
            Severity::Fail,
            format!("policy {}", refused["document"].as_str().unwrap_or("?")),
            format!(
                "refused: {}",
                refused["message"].as_str().unwrap_or("?").trim_end()
            ),
            "Fix the document (the message names the line and field) and save it again; \
             its last good version stays in force until then.",
        ));
    }
    for pool in policies["pools"].as_array().into_iter().flatten() {
        let name = pool["pool"].as_str().unwrap_or("?");
        match pool["members"].as_u64() {
            Some(0) => findings.push(Finding::bad(
                Severity::Fail,
                format!("pool {name}"),
                "has no workers",
                "Sidecars reading its data sets answer 503 (or read the origin, with \
                 on_pool_down: origin). Check the workers: are their pods ready, does their \
                 Service carry the label ferry.dev/cache-pool, or list members in the pool's \
                 policy file.",
            )),
            Some(n) => findings.push(Finding::ok(format!("pool {name}"), format!("{n} workers"))),
            None => {}
        }
    }
    for dataset in policies["datasets_without_pool"]
        .as_array()
        .into_iter()
        .flatten()
    {
        findings.push(Finding::bad(
            Severity::Warn,
            format!("data set {}", dataset["dataset"].as_str().unwrap_or("?")),
            match dataset["pool"].as_str() {
                Some(pool) => format!("reads from pool {pool}, which does not exist"),
                None => "names no pool, and there is not exactly one".to_owned(),
            },
            "Sidecars leave the data set out until its pool exists: define the pool, or set \
             the data set's pool: to one that does.",
        ));
    }
    Some(proxies)
}

/// Findings about one proxy, from its `/metrics`.
pub async fn check_proxy(target: &Target, settings: &CheckSettings, findings: &mut Vec<Finding>) {
    let subject = match &target.identity {
        Some(identity) => format!("proxy {} ({identity})", target.admin),
        None => format!("proxy {}", target.admin),
    };
    let metrics = match super::http::get_text(&target.admin, "/metrics", settings.timeout).await {
        Ok(text) => match Exposition::parse(&text) {
            Ok(metrics) => metrics,
            Err(err) => {
                findings.push(Finding::bad(
                    Severity::Fail,
                    subject,
                    format!("/metrics does not parse: {err}"),
                    "Report this: a proxy must export valid Prometheus text.",
                ));
                return;
            }
        },
        Err(err) => {
            findings.push(Finding::bad(
                Severity::Fail,
                subject,
                format!("unreachable: {err:#}"),
                "Is it running, and is its admin port (default 4191) reachable from here?",
            ));
            return;
        }
    };
    match super::http::get(&target.admin, "/ready", settings.timeout).await {
        Ok((status, _)) if status.is_success() => {
            findings.push(Finding::ok(subject.clone(), "ready"));
        }
        Ok((status, _)) => findings.push(Finding::bad(
            Severity::Fail,
            subject.clone(),
            format!("not ready (/ready answered {status})"),
            "A proxy is ready once it holds its first certificate and, when it watches the \
             control plane, its first configuration: its logs say which it is waiting for.",
        )),
        Err(err) => findings.push(Finding::bad(
            Severity::Fail,
            subject.clone(),
            format!("/ready failed: {err:#}"),
            "Is it running, and is its admin port reachable from here?",
        )),
    }
    let expiry = metrics.sum("identity_cert_expiry_timestamp_seconds", &[]);
    let uses_identity = expiry > 0.0;
    if !uses_identity
        && metrics
            .family("identity_cert_expiry_timestamp_seconds")
            .is_none()
    {
        findings.push(Finding::bad(
            Severity::Warn,
            subject.clone(),
            "identity disabled: traffic between proxies is plaintext and unauthorized",
            "Fine on a laptop; in a cluster run proxies with --identity control-plane.",
        ));
    }
    if uses_identity {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let left = expiry - now;
        let renewal = "The proxy renews at 70% of the lifetime: check that it reaches the control \
                       plane (:8086) and that its token is valid (its logs say why renewal \
                       fails); restart it once fixed.";
        if left <= 0.0 {
            findings.push(Finding::bad(
                Severity::Fail,
                subject.clone(),
                format!("certificate expired {} ago", human(-left)),
                renewal,
            ));
        } else if left < settings.expiry_warning.as_secs_f64() {
            findings.push(Finding::bad(
                Severity::Warn,
                subject.clone(),
                format!("certificate expires in {}", human(left)),
                renewal,
            ));
        } else {
            findings.push(Finding::ok(
                subject.clone(),
                format!("certificate valid for {}", human(left)),
            ));
        }
        let version = metrics.sum("config_version", &[]);
        refused_snapshot(target, settings, &subject, findings).await;
        if metrics.sum("control_plane_connected", &[]) < 1.0 {
            findings.push(Finding::bad(
                Severity::Fail,
                subject.clone(),
                format!(
                    "disconnected from the control plane; serving configuration version {version}"
                ),
                "It keeps serving its last good configuration. Check the control plane \
                 (ferryctl check without --no-control-plane) and the network between them.",
            ));
        } else {
            findings.push(Finding::ok(
                subject.clone(),
                format!("watching the control plane; configuration version {version}"),
            ));
        }
    }
    for sample in metrics
        .family("pool_members")
        .into_iter()
        .flat_map(|f| &f.samples)
    {
        let pool = sample.label("pool").unwrap_or("?");
        if sample.value < 1.0 {
            findings.push(Finding::bad(
                Severity::Fail,
                subject.clone(),
                format!("pool {pool} has no workers here"),
                "Reads of its data sets fail with 503 (or go to the origin, with on_pool_down: \
                 origin). Check that the pool's workers are ready and discovered.",
            ));
        }
    }
    for sample in metrics
        .family("upstream_member_ejected")
        .into_iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.value > 0.0)
    {
        findings.push(Finding::bad(
            Severity::Warn,
            subject.clone(),
            format!(
                "worker {} of pool {} is ejected after repeated failures",
                sample.label("member").unwrap_or("?"),
                sample.label("pool").unwrap_or("?")
            ),
            "It gets no chunks until a probe succeeds; its share goes to the next workers. \
             Look at that worker's /ready and logs.",
        ));
    }
}

/// A failure when the proxy refused the control plane's last snapshot (its
/// `/config` says why); it then serves the one before.
async fn refused_snapshot(
    target: &Target,
    settings: &CheckSettings,
    subject: &str,
    findings: &mut Vec<Finding>,
) {
    let Ok(text) = super::http::get_text(&target.admin, "/config", settings.timeout).await else {
        return; // unreachable or not ready: reported above
    };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let status = &config["control_plane"];
    if let Some(error) = status["last_error"].as_str() {
        let version = status["refused_version"].as_u64().map_or_else(
            || "a snapshot".to_owned(),
            |v| format!("snapshot version {v}"),
        );
        findings.push(Finding::bad(
            Severity::Fail,
            subject.to_owned(),
            format!("refused the control plane's {version}: {error}"),
            "It keeps serving the configuration before. A control plane never streams what its \
             proxies would refuse, so this proxy is likely older or newer than the control \
             plane: run matching versions, and look at the proxy's logs.",
        ));
    }
}

/// Runs every check; `targets` are the proxies given on the command line
/// (when empty, those the control plane lists).
pub async fn run(targets: &[Target], settings: &CheckSettings) -> CheckReport {
    let mut findings = Vec::new();
    let listed = match &settings.control_plane {
        Some(address) => check_control_plane(address, settings.timeout, &mut findings).await,
        None => None,
    };
    let proxies: Vec<Target> = if targets.is_empty() {
        listed.unwrap_or_default()
    } else {
        targets.to_vec()
    };
    if proxies.is_empty() {
        findings.push(Finding::bad(
            Severity::Warn,
            "proxies",
            "none to check",
            "Name them with --admin HOST:PORT, or check the control plane that lists them.",
        ));
    }
    for target in &proxies {
        check_proxy(target, settings, &mut findings).await;
    }
    CheckReport {
        ok: findings.iter().all(|f| f.severity != Severity::Fail),
        findings,
    }
}

/// Prints `report` as lines or JSON.
pub fn print(
    report: &CheckReport,
    output: Output,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if output == Output::Json {
        return super::write_json(report, out);
    }
    for finding in &report.findings {
        let mark = match finding.severity {
            Severity::Ok => "ok  ",
            Severity::Warn => "WARN",
            Severity::Fail => "FAIL",
        };
        writeln!(out, "{mark}  {}: {}", finding.subject, finding.message)?;
        if let Some(advice) = &finding.advice {
            writeln!(out, "      -> {advice}")?;
        }
    }
    let failed = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Fail)
        .count();
    let warned = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warn)
        .count();
    writeln!(out, "\n{failed} failed, {warned} warnings")
}

/// A duration as people read it: to the minute past an hour, else the second.
fn human(seconds: f64) -> String {
    let mut seconds = seconds.max(0.0).round() as u64;
    if seconds >= 3600 {
        seconds -= seconds % 60;
    }
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}
