//! `ferry-bench crypto`: rustls crypto providers and TLS 1.3 cipher suites
//! measured in memory (no sockets), to choose the mesh's by measurement:
//! bulk transfer (encrypt on one side, decrypt on the other) and mutually
//! authenticated P-256 handshakes, each against aws-lc-rs AES-128-GCM run in
//! the same process.
//!
//! ring is measured when ferry-bench is built with `--features ring`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, RootCertStore, ServerConnection};
use serde::Serialize;

use ferry_config::ByteSize;

use crate::report::{self, Table};

/// `ferry-bench crypto` arguments.
#[derive(Args, Clone, Debug)]
pub struct CryptoArgs {
    /// Bytes sent through each cipher suite.
    #[arg(long, default_value = "512MiB")]
    pub bytes: ByteSize,
    /// Handshakes per provider.
    #[arg(long, default_value_t = 500)]
    pub handshakes: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One provider and suite.
#[derive(Debug, Serialize)]
pub struct SuiteRun {
    /// Crypto provider.
    pub provider: &'static str,
    /// Cipher suite.
    pub suite: String,
    /// Encrypt + decrypt throughput, GB/s (one core).
    pub gb_per_second: f64,
    /// Against aws-lc-rs AES-128-GCM in this run.
    pub ratio: f64,
}

/// One provider's handshakes.
#[derive(Debug, Serialize)]
pub struct HandshakeRun {
    /// Crypto provider.
    pub provider: &'static str,
    /// Mutually authenticated P-256 handshakes per second (both sides, one core).
    pub per_second: f64,
}

/// The measurements.
#[derive(Debug, Serialize)]
pub struct CryptoReport {
    /// Bulk transfer per suite.
    pub suites: Vec<SuiteRun>,
    /// Handshakes per provider.
    pub handshakes: Vec<HandshakeRun>,
}

/// The providers compiled into this binary.
fn providers() -> Vec<(&'static str, CryptoProvider)> {
    #[allow(unused_mut)]
    let mut providers = vec![("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider())];
    #[cfg(feature = "ring")]
    providers.push(("ring", rustls::crypto::ring::default_provider()));
    providers
}

/// Runs the measurements (blocking: all in memory, one thread).
pub fn run(args: &CryptoArgs) -> anyhow::Result<CryptoReport> {
    let identity = TestIdentity::new()?;
    let bytes = args.bytes.bytes().max(1 << 20);
    let mut suites = Vec::new();
    let mut handshakes = Vec::new();
    // Page in the buffers and let the clock settle before the first suite.
    bulk_seconds(
        &identity,
        rustls::crypto::aws_lc_rs::default_provider(),
        bytes / 4,
    )?;
    for (name, provider) in providers() {
        for suite in provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
        {
            let single = CryptoProvider {
                cipher_suites: vec![*suite],
                ..provider.clone()
            };
            let seconds = bulk_seconds(&identity, single, bytes)?;
            suites.push(SuiteRun {
                provider: name,
                suite: format!("{:?}", suite.suite()),
                gb_per_second: bytes as f64 / 1e9 / seconds,
                ratio: 0.0,
            });
        }
        let started = Instant::now();
        for _ in 0..args.handshakes.max(1) {
            let (client, server) = connect(&identity, provider.clone())?;
            drop((client, server));
        }
        handshakes.push(HandshakeRun {
            provider: name,
            per_second: args.handshakes.max(1) as f64 / started.elapsed().as_secs_f64(),
        });
    }
    let baseline = suites
        .iter()
        .find(|s| s.provider == "aws-lc-rs" && s.suite.contains("AES_128"))
        .map_or(1.0, |s| s.gb_per_second);
    for suite in &mut suites {
        suite.ratio = suite.gb_per_second / baseline;
    }
    let report = CryptoReport { suites, handshakes };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

/// A self-signed CA and a P-256 leaf it issued, shared by both ends.
struct TestIdentity {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestIdentity {
    fn new() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
            .signed_by(&leaf_key, &issuer)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone())?;
        Ok(Self {
            roots,
            chain: vec![leaf.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        })
    }
}

/// A client and a server that completed a mutually authenticated handshake.
fn connect(
    identity: &TestIdentity,
    provider: CryptoProvider,
) -> anyhow::Result<(ClientConnection, ServerConnection)> {
    let provider = Arc::new(provider);
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(identity.roots.clone()),
        provider.clone(),
    )
    .build()?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            identity.chain.clone(),
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(identity.roots.clone())
        .with_client_auth_cert(
            identity.chain.clone(),
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )?;
    let mut client =
        ClientConnection::new(Arc::new(client_config), ServerName::try_from("localhost")?)?;
    let mut server = ServerConnection::new(Arc::new(server_config))?;
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server, &mut wire)?;
        pump(&mut server, &mut client, &mut wire)?;
    }
    Ok((client, server))
}

/// Moves every TLS byte `from` has to send into `to`.
fn pump<A, B, SA, SB>(from: &mut A, to: &mut B, wire: &mut Vec<u8>) -> anyhow::Result<()>
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<SA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<SB>>,
{
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire)?;
    }
    let mut rest = wire.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest)?;
        to.process_new_packets().context("TLS error")?;
    }
    Ok(())
}

/// Seconds to send `bytes` server → client through one suite, in 1 MiB writes.
fn bulk_seconds(
    identity: &TestIdentity,
    provider: CryptoProvider,
    bytes: u64,
) -> anyhow::Result<f64> {
    let (mut client, mut server) = connect(identity, provider)?;
    server.set_buffer_limit(None);
    let block = vec![0x5au8; 1 << 20];
    let mut received = vec![0u8; 1 << 20];
    let mut wire = Vec::with_capacity(2 << 20);
    let started = Instant::now();
    let (mut sent, mut got) = (0u64, 0u64);
    while sent < bytes {
        server.writer().write_all(&block)?;
        sent += block.len() as u64;
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire)?;
        }
        // The client buffers little plaintext: read it as records arrive.
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            client.read_tls(&mut rest)?;
            client.process_new_packets().context("TLS error")?;
            loop {
                match client.reader().read(&mut received) {
                    Ok(0) => break,
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        std::hint::black_box(&received);
    }
    anyhow::ensure!(got == sent, "sent {sent} bytes, received {got}");
    Ok(started.elapsed().as_secs_f64())
}

fn print(report: &CryptoReport) {
    let mut table = Table::new(&["provider", "cipher suite", "GB/s", "vs aws-lc-rs AES-128"]);
    for suite in &report.suites {
        table.row(vec![
            suite.provider.to_owned(),
            suite.suite.clone(),
            format!("{:.2}", suite.gb_per_second),
            format!("{:.3}", suite.ratio),
        ]);
    }
    println!("\nTLS 1.3 bulk transfer in memory (encrypt + decrypt + copies, one core)");
    table.print();
    let mut table = Table::new(&["provider", "mTLS handshakes/s"]);
    for run in &report.handshakes {
        table.row(vec![
            run.provider.to_owned(),
            format!("{:.0}", run.per_second),
        ]);
    }
    println!("\nmutually authenticated P-256 handshakes (both ends, one core)");
    table.print();
}
