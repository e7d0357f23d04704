//! Partitions made by the kernel, on loopback: nftables rules that drop
//! every packet of one worker (a black hole: no RST, the sidecar has to time
//! out) or a share of them (`numgen random`). Every read must succeed with
//! the right bytes; the black-holed worker is ejected and, once the rule is
//! gone, probed back into rotation. A sidecar cut off from the control plane
//! alone reads on and catches up afterwards. Needs root and `nft` (CI
//! installs it); without them the tests say so and pass.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::plane::{ControlPlane, datasets_yaml, write_policy};
use common::{ProxyProcess, TempDir};

const SPEC: &str = "count=120&size=16KiB&seed=11";

fn worker() -> ProxyProcess {
    let origin = format!("synthetic://?{SPEC}");
    ProxyProcess::start(&[
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "data",
        "--cache-size",
        "64MiB",
    ])
}

fn sidecar(workers: &[&ProxyProcess]) -> ProxyProcess {
    let pool = workers
        .iter()
        .map(|w| w.inbound.expect("inbound").to_string())
        .collect::<Vec<_>>()
        .join(",");
    ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "data",
        "--cache-size",
        "0",
        "--hedge",
        "100ms",
        "--chunk-timeout",
        "1s",
    ])
}

/// An nftables table of its own that drops packets to and from one port;
/// removed when dropped.
struct PacketDrop {
    table: String,
}

impl PacketDrop {
    /// Drops `percent` % of the packets to and from `port` (100: all).
    fn port(port: u16, percent: u32) -> Option<Self> {
        let table = format!("ferry_test_{}_{port}", std::process::id());
        let matcher = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let script = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             tcp dport {port} {matcher}drop\n    tcp sport {port} {matcher}drop\n  }}\n}}\n"
        );
        let applied = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                if let Some(stdin) = child.stdin.as_mut() {
                    stdin.write_all(script.as_bytes())?;
                }
                child.wait()
            });
        match applied {
            Ok(status) if status.success() => Some(Self { table }),
            other => {
                eprintln!("skipped: cannot add nftables rules (root and nft needed): {other:?}");
                None
            }
        }
    }
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn key(index: u64) -> String {
    ferry_config::SyntheticSpec::from_query(SPEC)
        .expect("spec")
        .key(index)
}

/// Reads every object once; returns the latencies, sorted. Every read must
/// be a 200 with the right bytes.
async fn read_all(client: &reqwest::Client, proxy: &ProxyProcess) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let count = ferry_config::SyntheticSpec::from_query(SPEC)
        .expect("spec")
        .count;
    for index in 0..count {
        let begun = Instant::now();
        let body = client
            .get(proxy.url(&format!("/data/{}", key(index))))
            .send()
            .await
            .expect("get")
            .error_for_status()
            .unwrap_or_else(|err| panic!("object {index}: {err}"))
            .bytes()
            .await
            .expect("body");
        assert!(
            body[..] == common::synthetic_object(SPEC, index)[..],
            "object {index}: wrong bytes"
        );
        latencies.push(begun.elapsed());
    }
    latencies.sort();
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100).saturating_sub(1)]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_worker_is_timed_out_ejected_and_probed_back() {
    let healthy = worker();
    let holed = worker();
    let proxy = sidecar(&[&healthy, &holed]);
    let client = reqwest::Client::new();
    let before = read_all(&client, &proxy).await;
    let member = holed.inbound.expect("inbound").to_string();
    let member_label = [("member", member.as_str())];
    let Some(rule) = PacketDrop::port(holed.inbound.expect("inbound").port(), 100) else {
        return;
    };
    let holed_at = Instant::now();
    let ejection = async {
        while holed_at.elapsed() < Duration::from_secs(30) {
            if proxy.metric("upstream_member_ejected", &member_label).await == 1.0 {
                return Some(holed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let (during, ejected_after) = tokio::join!(read_all(&client, &proxy), ejection);
    let ejections = proxy
        .metric("upstream_ejections_total", &member_label)
        .await;
    assert!(ejections >= 1.0, "the black-holed worker was ejected");
    eprintln!(
        "black hole: p99 {:?} before, {:?} during ({} reads, every one right); \
         ejected {ejected_after:?} after the rule (chunk timeout 1 s, hedge 100 ms)",
        p99(&before),
        p99(&during),
        during.len()
    );
    drop(rule);
    // Probed back: requests reach it again once its ejection runs out
    // (1 s, doubling per ejection), bounded here at 30 s.
    let sent_before = proxy.metric("upstream_requests_total", &member_label).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        read_all(&client, &proxy).await;
        let sent = proxy.metric("upstream_requests_total", &member_label).await;
        let ejected = proxy.metric("upstream_member_ejected", &member_label).await;
        if sent > sent_before && ejected == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker came back but was not probed back within 30 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_percent_loss_on_a_worker_loses_no_read() {
    let lossy = worker();
    let other = worker();
    let proxy = sidecar(&[&lossy, &other]);
    let client = reqwest::Client::new();
    read_all(&client, &proxy).await;
    let Some(_rule) = PacketDrop::port(lossy.inbound.expect("inbound").port(), 5) else {
        return;
    };
    let mut reads = 0;
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let pass = read_all(&client, &proxy).await;
        reads += pass.len();
        latencies.extend(pass);
    }
    latencies.sort();
    eprintln!(
        "5 % loss: {reads} reads, every one right, p99 {:?}",
        p99(&latencies)
    );
}

/// A TCP relay to `target` that delays every byte by `delay` each way (this
/// kernel has no netem): a delay line per direction, so throughput is kept
/// and only latency is added.
async fn delaying_relay(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(server_read) as _, Box::new(client_write) as _),
            ] {
                let (line, mut due) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0
                            || line
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((at, bytes)) = due.recv().await {
                        tokio::time::sleep_until(at.into()).await;
                        if to.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_200_ms_away_is_hedged_and_no_read_is_lost() {
    let slow = worker();
    let fast = worker();
    let relay = delaying_relay(slow.inbound.expect("inbound"), Duration::from_millis(200)).await;
    let pool = format!("{relay},{}", fast.inbound.expect("inbound"));
    let proxy = ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "data",
        "--cache-size",
        "0",
        "--hedge",
        "50ms",
        "--chunk-timeout",
        "5s",
    ]);
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    for _ in 0..2 {
        latencies.extend(read_all(&client, &proxy).await);
    }
    latencies.sort();
    let hedges_won = proxy
        .metric(
            "upstream_hedges_won_total",
            &[("member", &fast.inbound.expect("inbound").to_string())],
        )
        .await;
    assert!(hedges_won >= 1.0, "reads the slow worker owns are hedged");
    eprintln!(
        "200 ms on one worker: {} reads, every one right, p99 {:?}",
        latencies.len(),
        p99(&latencies)
    );
}

async fn status_of(client: &reqwest::Client, proxy: &ProxyProcess, bucket: &str) -> u16 {
    client
        .get(proxy.url(&format!("/{bucket}/{}", key(1))))
        .send()
        .await
        .expect("get")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_cut_off_from_the_control_plane_reads_on_and_catches_up() {
    let dir = TempDir::new("cp-partition");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(&policies, "datasets.yaml", &datasets_yaml(&["data"], SPEC));
    let plane = ControlPlane::start(
        dir.path(),
        &["--config-dir", policies.to_str().expect("path")],
    );
    let start = |flags: Vec<String>, role: &str| {
        let mut args = vec![role.to_owned()];
        args.extend(flags);
        ProxyProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let worker = start(plane.flags("worker-token"), "worker");
    write_policy(
        &policies,
        "pools.yaml",
        &format!(
            "pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
             members: [{{ address: \"{}\" }}]\n",
            worker.inbound.expect("inbound")
        ),
    );
    let client = reqwest::Client::new();
    let taken_in = Instant::now();
    while !client
        .get(format!("http://{}/policies", plane.admin))
        .send()
        .await
        .expect("policies")
        .text()
        .await
        .expect("policies text")
        .contains("pools.yaml")
    {
        assert!(
            taken_in.elapsed() < Duration::from_secs(10),
            "the control plane never took pools.yaml in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cut-off sidecar reaches the control plane through a port of its
    // own, so a rule on that port partitions it and nothing else.
    let plane_addr = plane
        .url
        .trim_start_matches("https://")
        .parse()
        .expect("control plane address");
    let relay = delaying_relay(plane_addr, Duration::ZERO).await;
    let relayed = plane
        .flags("train-token")
        .into_iter()
        .map(|flag| {
            if flag == plane.url {
                format!("https://{relay}")
            } else {
                flag
            }
        })
        .collect();
    let cut = start(relayed, "sidecar");
    let other = start(plane.flags("train-token"), "sidecar");
    read_all(&client, &cut).await;

    let Some(rule) = PacketDrop::port(relay.port(), 100) else {
        return;
    };
    let cut_at = Instant::now();
    write_policy(
        &policies,
        "datasets.yaml",
        &datasets_yaml(&["data", "data-new"], SPEC),
    );
    let mut reads = Vec::new();
    let mut other_has_it = false;
    while cut_at.elapsed() < Duration::from_secs(5) || !other_has_it {
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "the sidecar the partition spares never got the change"
        );
        reads.extend(read_all(&client, &cut).await);
        other_has_it = other_has_it || status_of(&client, &other, "data-new").await == 200;
    }
    assert_ne!(
        status_of(&client, &cut, "data-new").await,
        200,
        "a change cannot cross the partition"
    );
    assert_eq!(
        worker.metric("control_plane_connected", &[]).await,
        1.0,
        "the worker's watch is not touched"
    );
    drop(rule);
    let healed_at = Instant::now();
    while status_of(&client, &cut, "data-new").await != 200 {
        assert!(
            healed_at.elapsed() < Duration::from_secs(60),
            "the cut-off sidecar never caught up"
        );
        reads.extend(read_all(&client, &cut).await);
    }
    reads.sort();
    eprintln!(
        "control plane cut off from one sidecar for {:?}: {} reads, every one right, p99 {:?}; \
         the change made meanwhile applied {:?} after the partition",
        healed_at - cut_at,
        reads.len(),
        p99(&reads),
        healed_at.elapsed()
    );
}
