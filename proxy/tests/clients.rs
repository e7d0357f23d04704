//! Real clients against a real proxy: boto3 (Python) and curl, over a file
//! origin; path traversal attempts; an S3 origin served by moto.

mod common;

use std::process::{Command, Stdio};

use common::{ProxyProcess, TempDir, python, read_first_line, require_python_modules, test_bytes};
use reqwest::StatusCode;

/// A data set directory with nested keys, a 20 MB object, and a secret beside it.
fn dataset_dir() -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("clients");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dir/sub")).expect("mkdir");
    std::fs::write(root.join("top.bin"), test_bytes(1, 1234)).expect("write");
    std::fs::write(root.join("a b+c.bin"), test_bytes(2, 10)).expect("write");
    std::fs::write(root.join("dir/one.bin"), test_bytes(3, 300_000)).expect("write");
    std::fs::write(
        root.join("dir/sub/two.bin"),
        test_bytes(4, 20 * 1024 * 1024 + 7),
    )
    .expect("write");
    std::fs::write(root.join("dir/three.bin"), test_bytes(5, 1)).expect("write");
    std::fs::write(dir.path().join("secret.txt"), b"TOP-SECRET-CONTENT").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("escape")).expect("link");
    (dir, root)
}

fn start_file_proxy(root: &std::path::Path) -> ProxyProcess {
    let origin = format!("file://{}", root.display());
    ProxyProcess::start(&[
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "local",
        "--chunk-size",
        "1MiB",
    ])
}

#[test]
fn boto3_reads_lists_and_downloads() {
    require_python_modules(&["boto3"]);
    let (_dir, root) = dataset_dir();
    // boto3 would list the symlink that points outside; the data set is the real files.
    std::fs::remove_file(root.join("escape")).expect("unlink");
    let proxy = start_file_proxy(&root);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/s3_clients.py");
    let output = Command::new(python())
        .args([
            script,
            &format!("http://{}", proxy.listen),
            "local",
            root.to_str().expect("path"),
        ])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "boto3 checks failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let output = Command::new("curl")
        .args(["-s", "-S", "-D", "-"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test checks)");
    let text = output.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(text.len(), |p| p + 4);
    (
        String::from_utf8_lossy(&text[..split]).into_owned(),
        text[split..].to_vec(),
    )
}

#[test]
fn curl_gets_objects_and_traversal_is_refused() {
    let (_dir, root) = dataset_dir();
    let proxy = start_file_proxy(&root);
    let (head, body) = curl(&[&proxy.url("/local/dir/one.bin")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, test_bytes(3, 300_000));
    let (head, body) = curl(&["-r", "2-5", &proxy.url("/local/a%20b%2Bc.bin")]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, test_bytes(2, 10)[2..6].to_vec());

    for path in [
        "/local/../secret.txt",
        "/local/dir/../../secret.txt",
        "/local/%2e%2e/secret.txt",
        "/local/..%2fsecret.txt",
        "/local/%2Fetc%2Fpasswd",
        "/local/escape",
    ] {
        let (head, body) = curl(&["--path-as-is", &proxy.url(path)]);
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("TOP-SECRET-CONTENT"),
            "{path} leaked the secret"
        );
        let refused =
            head.starts_with("HTTP/1.1 403") && body.contains("<Code>AccessDenied</Code>");
        let unknown = head.starts_with("HTTP/1.1 404") && body.contains("<Code>NoSuch");
        assert!(refused || unknown, "{path}: {head}{body}");
        if path.contains("..") || path == "/local/escape" {
            assert!(refused, "{path} is refused, not just missing: {head}{body}");
        }
    }
    // Still serving after all that.
    let (head, _) = curl(&[&proxy.url("/local/top.bin")]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn an_s3_origin_served_by_moto() {
    require_python_modules(&["boto3", "moto"]);
    let sizes = [1000usize, 70_000, 200_000, 5];
    let size_list = sizes.map(|s| s.to_string()).join(",");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/moto_origin.py");
    let mut moto = Command::new(python())
        .args([script, "origin-bucket", &size_list])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let line = read_first_line(
        moto.stdout.take().expect("stdout"),
        std::time::Duration::from_secs(60),
    )
    .expect("moto printed its endpoint");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("json");
    let endpoint = ready["endpoint"].as_str().expect("endpoint").to_owned();
    let proxy = ProxyProcess::start_with_env(
        &[
            "worker",
            "--origin",
            "s3://origin-bucket/data/",
            "--bucket",
            "remote",
            "--chunk-size",
            "64KiB",
        ],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let client = reqwest::Client::new();
    for (index, size) in sizes.iter().enumerate() {
        let want: Vec<u8> = (0..*size).map(|j| ((index * 7 + j) % 251) as u8).collect();
        let url = proxy.url(&format!("/remote/obj-{index:03}.bin"));
        let body = client
            .get(&url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert!(
            body[..] == want[..],
            "object {index}: {}",
            String::from_utf8_lossy(&body)
        );
        if *size > 1000 {
            let part = client
                .get(&url)
                .header("range", "bytes=65530-65600")
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            let end = 65601.min(*size);
            assert!(
                part[..] == want[65530.min(*size)..end],
                "range of object {index}"
            );
        }
    }
    let listing = client
        .get(proxy.url("/remote?list-type=2"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    for index in 0..sizes.len() {
        assert!(
            listing.contains(&format!("<Key>obj-{index:03}.bin</Key>")),
            "{listing}"
        );
    }
    assert!(
        !listing.contains("skip.bin"),
        "keys outside the origin prefix are not listed"
    );
    let missing = client
        .get(proxy.url("/remote/nope.bin"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    drop(moto.stdin.take());
    let _ = moto.wait();
}
