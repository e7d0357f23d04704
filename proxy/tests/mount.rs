//! The POSIX front door with real FUSE mounts: walked with `find`, `ls`,
//! `cat` and Python, every byte checked; 32 readers through a sidecar while
//! a worker is SIGKILLed; writes refused; origin failures as EIO, never
//! wrong bytes; SIGTERM unmounts; a stale mount is cleared at start.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{ProxyProcess, TestOrigin, test_bytes};
use ferry_config::SyntheticSpec;

const SPEC: &str = "count=60&classes=6&size=30KiB&seed=11";

fn spec() -> SyntheticSpec {
    SyntheticSpec::from_query(SPEC).expect("spec")
}

/// An empty mount point, unmounted (lazily, whatever is there) and removed
/// when the test ends.
struct MountDir(PathBuf);

impl MountDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-mnt-{label}-{}", std::process::id()));
        let _ = Command::new("umount").arg("-l").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mount point");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("path")
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `dir` has a file system mounted on it now.
fn is_mounted(dir: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_str().unwrap_or_default();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(dir))
}

fn worker_with_mount(mount: &MountDir, origin: &str, extra: &[&str]) -> ProxyProcess {
    let mut args = vec![
        "worker",
        "--origin",
        origin,
        "--bucket",
        "imagenet",
        "--mount",
        mount.arg(),
    ];
    args.extend(extra);
    ProxyProcess::start(&args)
}

fn run(command: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(command).args(args).output().expect("run");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_mounted_data_set_walks_like_a_file_system() {
    let mount = MountDir::new("walk");
    let proxy = worker_with_mount(&mount, &format!("synthetic://?{SPEC}"), &[]);
    let spec = spec();
    let root = mount.path().join("imagenet");
    // find: every object, in its class directory.
    let (ok, out, err) = run("find", &[root.to_str().expect("path"), "-type", "f"]);
    assert!(ok, "{err}");
    let mut found: Vec<String> = out
        .lines()
        .map(|l| {
            l.trim_start_matches(root.to_str().unwrap_or_default())
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = (0..spec.count).map(|i| spec.key(i)).collect();
    expected.sort();
    assert_eq!(found, expected);
    // ls -lR: read-only files and directories.
    let (ok, out, _) = run("ls", &["-lR", root.to_str().expect("path")]);
    assert!(ok);
    assert!(
        out.contains("class0005:") && out.contains("-r--r--r--"),
        "{out}"
    );
    // cat, sizes and mtimes, for every object.
    for index in 0..spec.count {
        let path = root.join(spec.key(index));
        let (ok, _, err) = run("cat", &[path.to_str().expect("path")]);
        assert!(ok, "cat {}: {err}", path.display());
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            bytes == common::synthetic_object(SPEC, index),
            "object {index}"
        );
        let metadata = std::fs::metadata(&path).expect("metadata");
        assert_eq!(metadata.len(), spec.object_size(index));
        assert_eq!(metadata.modified().expect("mtime"), spec.mtime());
        assert!(metadata.permissions().readonly());
    }
    // Python, as a training script walks a data set: os.walk, open, seek.
    let script = format!(
        r#"
import os, sys
root = {root:?}
files = 0
for directory, subdirs, names in os.walk(root):
    for name in names:
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            whole = f.read()
            assert len(whole) == size, (path, len(whole), size)
            f.seek(size // 2)
            assert f.read(16) == whole[size // 2: size // 2 + 16], path
            f.seek(-7, os.SEEK_END)
            assert f.read() == whole[-7:], path
        files += 1
print(files)
"#,
        root = root.display().to_string()
    );
    let (ok, out, err) = run(&common::python(), &["-c", &script]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), spec.count.to_string());
    // Python asks every file it opens whether it is a terminal (an ioctl
    // that reaches the mount): answered quietly, like every call a plain
    // walk makes.
    let (status, log) = proxy.terminate_with_log();
    assert!(status.success());
    assert!(
        !log.contains("Not Implemented"),
        "calls the mount does not answer:\n{log}"
    );
}

#[test]
fn writes_are_refused_and_unknown_paths_are_missing() {
    let mount = MountDir::new("ro");
    let _proxy = worker_with_mount(&mount, &format!("synthetic://?{SPEC}"), &[]);
    let root = mount.path().join("imagenet");
    let existing = root.join(spec().key(3));
    let erofs = Some(rustix::io::Errno::ROFS.raw_os_error());
    let write = std::fs::OpenOptions::new().write(true).open(&existing);
    assert_eq!(
        write.expect_err("write").raw_os_error(),
        erofs,
        "open for writing"
    );
    let create = std::fs::File::create(root.join("new.jpg"));
    assert_eq!(create.expect_err("create").raw_os_error(), erofs, "create");
    let unlink = std::fs::remove_file(&existing);
    assert_eq!(unlink.expect_err("unlink").raw_os_error(), erofs, "unlink");
    let rename = std::fs::rename(&existing, root.join("moved.jpg"));
    assert_eq!(rename.expect_err("rename").raw_os_error(), erofs, "rename");
    let mkdir = std::fs::create_dir(root.join("dir"));
    assert_eq!(mkdir.expect_err("mkdir").raw_os_error(), erofs, "mkdir");
    for missing in [
        root.join("class0000/99999999.jpg"),
        root.join("no-such-dir/x"),
        mount.path().join("no-such-bucket"),
    ] {
        let err = std::fs::metadata(&missing).expect_err("missing");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::NotFound,
            "{}",
            missing.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_failing_mid_file_is_eio_and_a_changed_object_never_mixes() {
    let big = test_bytes(21, 300_000);
    let origin = TestOrigin::start(vec![
        ("big.bin", big.clone()),
        ("change.bin", test_bytes(22, 200_000)),
    ])
    .await;
    let mount = MountDir::new("eio");
    let url = origin.url();
    let proxy = worker_with_mount(
        &mount,
        &url,
        &[
            "--chunk-size",
            "64KiB",
            "--read-ahead",
            "0",
            "--metadata-ttl",
            "1s",
        ],
    );
    let root = mount.path().join("imagenet");
    *origin.state.fail_from.lock().expect("lock") = Some(150_000);
    let path = root.join("big.bin");
    let (prefix, err) = tokio::task::spawn_blocking(move || read_until_error(&path))
        .await
        .expect("reader");
    assert_eq!(err, Some(rustix::io::Errno::IO.raw_os_error()), "EIO");
    assert!(!prefix.is_empty() && prefix.len() < big.len());
    assert!(
        prefix[..] == big[..prefix.len()],
        "the bytes before the failure are right"
    );
    // Golden metrics count the mount's reads as their own direction.
    let mount = [("dataset", "imagenet"), ("direction", "mount")];
    assert!(proxy.metric("request_total", &mount).await >= 2.0);
    let failed = [
        ("dataset", "imagenet"),
        ("direction", "mount"),
        ("classification", "failure"),
    ];
    assert!(proxy.metric("response_total", &failed).await >= 1.0);
    let sent = proxy.metric("response_bytes_total", &mount).await;
    assert!(sent >= prefix.len() as f64, "{sent} bytes counted");

    // Opened at one version; the object changes meanwhile: the rest of the
    // file is that version or an error, never the new one's bytes.
    let path = root.join("change.bin");
    let old = test_bytes(22, 200_000);
    let state = Arc::clone(&origin.state);
    let (first, rest) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).expect("open");
        let mut first = vec![0u8; 65_536];
        file.read_exact(&mut first).expect("first chunk");
        state.objects.lock().expect("lock").insert(
            "change.bin".into(),
            bytes::Bytes::from(test_bytes(23, 180_000)),
        );
        let mut rest = Vec::new();
        (first, file.read_to_end(&mut rest).map(|_| rest))
    })
    .await
    .expect("reader");
    assert!(first[..] == old[..65_536]);
    match rest {
        Ok(rest) => assert!(rest[..] == old[65_536..], "the old version to the end"),
        Err(err) => assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::IO.raw_os_error())
        ),
    }

    // Once the metadata TTL has passed, a path names the new version (a new
    // inode, with no pages of the old one); until then the old one, whole.
    let path = root.join("change.bin");
    let new = test_bytes(23, 180_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read(&path)
        })
        .await
        .expect("reader");
        match read {
            Ok(bytes) if bytes == new => break,
            Ok(bytes) => assert!(bytes == old, "one version or the other, whole"),
            Err(err) => assert_eq!(
                err.raw_os_error(),
                Some(rustix::io::Errno::IO.raw_os_error())
            ),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new version never showed"
        );
        // Polling for the TTL to pass: it is time, not an event.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads `path` 64 KiB at a time until the end or an error: what was read,
/// and the error's errno.
fn read_until_error(path: &Path) -> (Vec<u8>, Option<i32>) {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open");
    let mut read = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return (read, None),
            Ok(n) => read.extend_from_slice(&buffer[..n]),
            Err(err) => return (read, err.raw_os_error()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_readers_keep_reading_while_a_worker_is_killed() {
    let origin = format!("synthetic://?{SPEC}");
    let mut workers: Vec<ProxyProcess> = (0..3)
        .map(|_| ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "imagenet"]))
        .collect();
    let pool = workers
        .iter()
        .map(|w| w.inbound.expect("inbound").to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mount = MountDir::new("pool");
    let _sidecar = ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "imagenet",
        "--cache-size",
        "0",
        "--hedge",
        "off",
        "--mount",
        mount.arg(),
    ]);
    let root = mount.path().join("imagenet");
    let spec = spec();
    let started = std::time::Instant::now();
    let readers: Vec<_> = (0..32)
        .map(|reader| {
            let root = root.clone();
            let spec = spec.clone();
            std::thread::spawn(move || {
                let (mut reads, mut bad) = (0, Vec::new());
                while started.elapsed() < Duration::from_secs(4) {
                    let index = (reads * 32 + reader) as u64 % spec.count;
                    match std::fs::read(root.join(spec.key(index))) {
                        Ok(bytes) if bytes == common::synthetic_object(SPEC, index) => {}
                        Ok(_) => bad.push(format!("object {index}: wrong bytes")),
                        Err(err) => bad.push(format!("object {index}: {err}")),
                    }
                    reads += 1;
                }
                (reads, bad)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    workers.remove(1).kill();
    let mut total = 0;
    for reader in readers {
        let (reads, bad) = reader.join().expect("reader");
        assert!(bad.is_empty(), "{bad:?}");
        total += reads;
    }
    assert!(total > 200, "reads went on: {total}");
}

#[test]
fn sigterm_unmounts_and_a_restart_clears_a_stale_mount() {
    let mount = MountDir::new("stale");
    let origin = format!("synthetic://?{SPEC}");
    let proxy = worker_with_mount(&mount, &origin, &[]);
    assert!(is_mounted(mount.path()));
    proxy.terminate();
    assert!(!is_mounted(mount.path()), "SIGTERM unmounts");

    let killed = worker_with_mount(&mount, &origin, &[]);
    drop(killed); // SIGKILL: the mount stays, its server gone
    let stale = std::fs::metadata(mount.path()).expect_err("a stale mount");
    assert_eq!(
        stale.raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error())
    );
    let _again = worker_with_mount(&mount, &origin, &[]);
    let bytes = std::fs::read(mount.path().join("imagenet").join(spec().key(4))).expect("read");
    assert!(
        bytes == common::synthetic_object(SPEC, 4),
        "the restarted proxy serves"
    );

    let busy = MountDir::new("missing");
    let missing = busy.path().join("not-there");
    let (ok, _, err) = run(
        env!("CARGO_BIN_EXE_ferry-proxy"),
        &[
            "worker",
            "--origin",
            &origin,
            "--bucket",
            "imagenet",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--mount",
            missing.to_str().expect("path"),
        ],
    );
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// What a pod with the mount option does, on this kernel: the sidecar
/// mounts on its view of an `emptyDir` (a shared bind mount,
/// `mountPropagation: Bidirectional`); the app's view of the same volume
/// (a slave bind, `HostToContainer`) sees the data sets; a sidecar that
/// crashes leaves it stale until its restart clears and remounts it; a
/// sidecar that stops takes it away. Run in a mount namespace of its own.
#[test]
fn a_mount_on_a_shared_volume_reaches_the_app_s_view_of_it() {
    let base = std::env::temp_dir().join(format!("ferry-propagation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("base");
    let key = spec().key(7);
    let script = r#"
set -eu
base=$1; proxy=$2; origin=$3; key=$4
mkdir -p "$base/volume" "$base/sidecar" "$base/app"
mount --bind "$base/volume" "$base/volume"; mount --make-shared "$base/volume"
mount --rbind "$base/volume" "$base/sidecar"; mount --make-rshared "$base/sidecar"
mount --rbind "$base/volume" "$base/app"; mount --make-rslave "$base/app"
pid=
# Whatever fails below, the proxy goes with the script.
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true' EXIT
start() {
  : > "$base/ready"
  "$proxy" worker --origin "$origin" --bucket imagenet --listen 127.0.0.1:0 \
      --admin 127.0.0.1:0 --inbound 127.0.0.1:0 --mount "$base/sidecar" \
      > "$base/ready" 2>> "$base/log" &
  pid=$!
  # The ready line comes once the mount is in place.
  for _ in $(seq 300); do grep -q '"ready"' "$base/ready" && return 0; sleep 0.05; done
  return 1
}
start
cp "$base/app/imagenet/$key" "$base/seen-by-app"
# The sidecar crashes: the app's view is stale until a new one starts.
kill -KILL "$pid"; wait "$pid" || true
if ls "$base/app/imagenet" > /dev/null 2>&1; then echo alive > "$base/stale"; else echo stale > "$base/stale"; fi
start
cp "$base/app/imagenet/$key" "$base/seen-after-restart"
kill -TERM "$pid"; wait "$pid"; pid=
ls -A "$base/app" > "$base/left-for-app"
"#;
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", script, "sh"])
        .arg(&base)
        .arg(env!("CARGO_BIN_EXE_ferry-proxy"))
        .arg(format!("synthetic://?{SPEC}"))
        .arg(&key)
        .status()
        .expect("unshare");
    let seen = std::fs::read(base.join("seen-by-app"));
    let stale = std::fs::read_to_string(base.join("stale"));
    let again = std::fs::read(base.join("seen-after-restart"));
    let left = std::fs::read_to_string(base.join("left-for-app"));
    let log = std::fs::read_to_string(base.join("log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        status.success(),
        "the pod-like setup failed: {status}\n{log}"
    );
    let object = common::synthetic_object(SPEC, 7);
    assert!(
        seen.expect("the app's view had the file") == object,
        "the app reads the object's bytes through its own view"
    );
    assert_eq!(
        stale.expect("checked").trim(),
        "stale",
        "a crash leaves it stale"
    );
    assert!(
        again.expect("the app's view had the file again") == object,
        "a restarted sidecar clears the stale mount and the app reads again"
    );
    assert_eq!(
        left.expect("listed"),
        "",
        "the unmount reached the app's view"
    );
}
