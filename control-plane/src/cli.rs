//! The `ferry-control-plane` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use ferry_config::{ControlPlaneConfig, from_yaml_file};

/// Ferry's control plane.
#[derive(Parser, Debug)]
#[command(
    name = "ferry-control-plane",
    version,
    about = "Ferry's control plane: the mesh CA and identity API"
)]
pub struct Cli {
    /// YAML configuration (ControlPlaneConfig in ferry-config); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Proxy API address (TLS).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin address.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The mesh's trust domain.
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Where a generated CA and the trust bundle are kept.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Issuer certificate (PEM); with --ca-key, instead of a generated CA.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Issuer key (PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// More trust anchors to publish (PEM), e.g. the previous CA while rotating.
    #[arg(long)]
    pub extra_anchors: Option<PathBuf>,
    /// Bootstrap tokens (YAML).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Lifetime of issued certificates, e.g. 24h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cert_lifetime: Option<std::time::Duration>,
    /// Names the API's certificate covers (repeatable); default localhost and 127.0.0.1.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// File source: policy files here apply to the whole mesh, those in
    /// DIR/<namespace>/ to that namespace; watched for changes.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Kubernetes source: policy ConfigMaps, pool Services, TokenReview.
    #[arg(long)]
    pub kubernetes: bool,
    /// The control plane's own namespace (its policies apply to the whole
    /// mesh); in a Pod, set POD_NAMESPACE from the downward API.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Heartbeat of quiet watches, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub watch_heartbeat: Option<std::time::Duration>,
    /// Keep the CA in this Secret of the control plane's namespace, created
    /// by the first replica that finds none (needs --kubernetes).
    #[arg(long)]
    pub ca_secret: Option<String>,
    /// Publish the trust bundle in this ConfigMap of the control plane's
    /// namespace, for the workers there (needs --kubernetes).
    #[arg(long)]
    pub trust_bundle_configmap: Option<String>,
    /// Serve the sidecar injection webhook (needs --kubernetes).
    #[arg(long)]
    pub inject: bool,
    /// The webhook's HTTPS listener (default 0.0.0.0:8443).
    #[arg(long)]
    pub webhook_listen: Option<SocketAddr>,
    /// The MutatingWebhookConfiguration whose caBundle is kept equal to the trust bundle.
    #[arg(long)]
    pub webhook_configuration: Option<String>,
    /// Image of the injected ferry-proxy container.
    #[arg(long)]
    pub sidecar_image: Option<String>,
    /// The control plane's Service name (webhook certificate, sidecars' URL).
    #[arg(long)]
    pub service: Option<String>,
    /// Native sidecars in injected pods: auto (from the API server's version), always or never.
    #[arg(long)]
    pub native_sidecars: Option<ferry_config::NativeSidecars>,
    /// Let pods ask for the POSIX mount (config.ferry.dev/mount); their
    /// sidecar then runs privileged.
    #[arg(long)]
    pub allow_mount: bool,
}

impl Cli {
    /// The configuration these arguments describe.
    pub fn into_config(self) -> anyhow::Result<ControlPlaneConfig> {
        let mut config = match &self.config {
            Some(path) => from_yaml_file::<ControlPlaneConfig>(path)?,
            None => ControlPlaneConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin {
            config.admin = admin;
        }
        if let Some(domain) = self.trust_domain {
            config.trust_domain = domain;
        }
        if let Some(dir) = self.state_dir {
            config.state_dir = dir;
        }
        if self.ca_cert.is_some() {
            config.ca_cert = self.ca_cert;
            config.ca_key = self.ca_key;
        }
        if self.extra_anchors.is_some() {
            config.extra_anchors = self.extra_anchors;
        }
        if self.tokens.is_some() {
            config.tokens = self.tokens;
        }
        if let Some(lifetime) = self.cert_lifetime {
            anyhow::ensure!(
                lifetime.as_secs() >= 1,
                "--cert-lifetime must be at least 1s"
            );
            config.cert_lifetime = ferry_config::HumanDuration(lifetime);
        }
        if !self.server_names.is_empty() {
            config.server_names = self.server_names;
        }
        if self.config_dir.is_some() {
            config.config_dir = self.config_dir;
        }
        config.kubernetes |= self.kubernetes;
        if let Some(namespace) = self.namespace {
            config.namespace = namespace;
        }
        if self.ca_secret.is_some() {
            config.ca_secret = self.ca_secret;
        }
        if self.trust_bundle_configmap.is_some() {
            config.trust_bundle_configmap = self.trust_bundle_configmap;
        }
        let injection = &mut config.injection;
        injection.enabled |= self.inject;
        if let Some(listen) = self.webhook_listen {
            injection.listen = listen;
        }
        if let Some(name) = self.webhook_configuration {
            injection.webhook_configuration = name;
        }
        if let Some(image) = self.sidecar_image {
            injection.image = image;
        }
        if let Some(service) = self.service {
            injection.service = service;
        }
        if let Some(native) = self.native_sidecars {
            injection.native_sidecars = native;
        }
        injection.allow_mount |= self.allow_mount;
        if let Some(heartbeat) = self.watch_heartbeat {
            anyhow::ensure!(
                heartbeat >= std::time::Duration::from_millis(100),
                "--watch-heartbeat must be at least 100ms"
            );
            config.watch_heartbeat = ferry_config::HumanDuration(heartbeat);
        }
        config.injection.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let prometheus = crate::api_metrics::install_recorder();
        crate::describe_metrics();
        let running = crate::server::start(config, prometheus).await?;
        let announcement = serde_json::json!({
            "event": "ready",
            "listen": running.listen.to_string(),
            "admin": running.admin.to_string(),
            "trust_bundle": running.trust_bundle.display().to_string(),
            "webhook": running.webhook.map(|a| a.to_string()),
        });
        if let Some(what) = crate::server::waiting_for(&running.store) {
            // Where it listens, already: its admin port says what it waits for.
            let mut waiting = announcement.clone();
            waiting["event"] = "waiting".into();
            waiting["for"] = what.into();
            println!("{waiting}");
        }
        let store = running.store.clone();
        tokio::spawn(async move {
            store.synced().await;
            println!("{announcement}");
        });
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}
