//! Faults of a worker's disk tier, on real file systems: a full disk (a
//! small tmpfs), a read-only one (remounted), a truncated chunk file and a
//! truncated seed. Reads always succeed with the right bytes, from memory,
//! disk or origin; refused writes are counted; nothing crashes. The tmpfs
//! cases need root (CI has it); without it they say so and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ProxyProcess, TempDir};

const SPEC: &str = "count=40&size=100KiB&seed=21";

fn worker(disk: &Path, size: &str) -> ProxyProcess {
    let origin = format!("synthetic://?{SPEC}");
    ProxyProcess::start(&[
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "data",
        "--cache-size",
        "0",
        "--disk-cache",
        disk.to_str().expect("path"),
        "--disk-cache-size",
        size,
    ])
}

/// A tmpfs of `size` mounted on a directory of its own; unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(label: &str, size: &str) -> Option<Self> {
        let dir = TempDir::new(label);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => Some(Self { dir }),
            other => {
                eprintln!("skipped: cannot mount a tmpfs (root needed): {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .expect("mount");
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn key(index: u64) -> String {
    ferry_config::SyntheticSpec::from_query(SPEC)
        .expect("spec")
        .key(index)
}

async fn read(client: &reqwest::Client, proxy: &ProxyProcess, indexes: std::ops::Range<u64>) {
    for index in indexes {
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
    }
}

/// Files under `dir` whose name ends with `suffix`.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}

/// Waits (bounded) until `done` holds for the files under `dir`.
async fn until_files(dir: &Path, what: &str, done: impl Fn(&Path) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(dir) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_admissions_and_reads_go_on() {
    let Some(disk) = Tmpfs::mount("disk-full", "1m") else {
        return;
    };
    let mut proxy = worker(disk.path(), "64MiB");
    let client = reqwest::Client::new();
    // 40 objects of about 100 KiB: four times what the disk holds.
    read(&client, &proxy, 0..40).await;
    read(&client, &proxy, 0..40).await;
    let refused = proxy
        .metric("cache_admission_rejections_total", &[("tier", "disk")])
        .await;
    assert!(refused >= 1.0, "refused writes are counted: {refused}");
    until_files(
        disk.path(),
        "a failed write leaves no partial file",
        |dir| files(dir, ".partial").is_empty(),
    )
    .await;
    assert!(proxy.is_running(), "the worker survives a full disk");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_disk_still_serves_what_it_holds() {
    let Some(disk) = Tmpfs::mount("disk-ro", "16m") else {
        return;
    };
    let client = reqwest::Client::new();
    {
        let first = worker(disk.path(), "16MiB");
        read(&client, &first, 0..10).await;
        until_files(disk.path(), "chunks reach the disk", |dir| {
            files(dir, ".chunk").len() == 10
        })
        .await;
    }
    disk.remount_read_only();
    let mut proxy = worker(disk.path(), "16MiB");
    read(&client, &proxy, 0..20).await;
    let hits = proxy.metric("cache_hits_total", &[("tier", "disk")]).await;
    assert_eq!(hits, 10.0, "what the disk held is served from it");
    let refused = proxy
        .metric("cache_admission_rejections_total", &[("tier", "disk")])
        .await;
    assert!(refused >= 1.0, "writes to it are refused and counted");
    assert!(proxy.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_chunk_and_seed_files_are_dropped_and_logged() {
    let dir = TempDir::new("disk-truncated");
    let client = reqwest::Client::new();
    {
        let first = worker(dir.path(), "64MiB");
        read(&client, &first, 0..4).await;
        until_files(dir.path(), "chunks reach the disk", |dir| {
            files(dir, ".chunk").len() == 4
        })
        .await;
    }
    let mut chunks = files(dir.path(), ".chunk");
    chunks.sort();
    let victim = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunks[0])
        .expect("open chunk");
    let len = victim.metadata().expect("metadata").len();
    victim.set_len(len / 2).expect("truncate");
    drop(victim);

    let second = worker(dir.path(), "64MiB");
    read(&client, &second, 0..4).await;
    assert_eq!(
        second.metric("cache_hits_total", &[("tier", "disk")]).await,
        3.0,
        "the whole chunks are served from disk"
    );
    assert_eq!(
        second
            .metric("origin_requests_total", &[("op", "get")])
            .await,
        1.0,
        "the truncated one is fetched again"
    );
    let (_, log) = second.terminate_with_log();
    assert!(
        log.contains("dropped files that were not whole chunks") && log.contains("dropped=1"),
        "{log}"
    );

    let seeds = files(dir.path(), "seed");
    assert_eq!(seeds.len(), 1);
    std::fs::write(&seeds[0], "").expect("truncate the seed");
    let third = worker(dir.path(), "64MiB");
    read(&client, &third, 0..4).await;
    assert_eq!(
        third.metric("cache_hits_total", &[("tier", "disk")]).await,
        0.0,
        "chunks keyed with the lost seed are never served"
    );
    let (_, log) = third.terminate_with_log();
    assert!(
        log.contains("the seed file is unreadable")
            && log.contains("dropping chunks keyed with a lost seed"),
        "{log}"
    );
}
