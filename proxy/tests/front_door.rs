//! The S3 front door as clients meet it, against a real proxy process
//! serving a synthetic data set.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::ProxyProcess;
use ferry_config::SyntheticSpec;
use proptest::prelude::*;
use reqwest::StatusCode;

const SPEC: &str = "count=50&size=100KiB&seed=7&prefix=train/";

fn spec() -> SyntheticSpec {
    SyntheticSpec::from_query(SPEC).expect("spec")
}

fn start() -> ProxyProcess {
    let origin = format!("synthetic://?{SPEC}");
    ProxyProcess::start(&[
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "imagenet",
        "--chunk-size",
        "64KiB",
    ])
}

fn expected(index: u64) -> Vec<u8> {
    common::synthetic_object(SPEC, index)
}

#[tokio::test]
async fn whole_objects_are_byte_exact_with_s3_headers() {
    let proxy = start();
    let client = reqwest::Client::new();
    for index in [0, 3, 49] {
        let want = expected(index);
        let response = client
            .get(proxy.url(&format!("/imagenet/train/{index:08}.jpg")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers["content-length"], want.len().to_string().as_str());
        assert_eq!(headers["accept-ranges"], "bytes");
        assert!(headers["etag"].to_str().expect("etag").starts_with('"'));
        assert!(headers.contains_key("last-modified"));
        let body = response.bytes().await.expect("body");
        assert_eq!(body.len(), want.len());
        assert!(body[..] == want[..], "object {index} differs");
    }
}

#[tokio::test]
async fn every_range_form_and_unsatisfiable_ranges() {
    let proxy = start();
    let client = reqwest::Client::new();
    // The largest object, so ranges cross several 64 KiB chunks.
    let index = (0..50)
        .max_by_key(|&i| spec().object_size(i))
        .expect("objects");
    let url = proxy.url(&format!("/imagenet/{}", spec().key(index)));
    let want = expected(index);
    let size = want.len();
    assert!(size > 140_000, "largest object has {size} bytes");
    for (range, from, to) in [
        ("bytes=0-0", 0, 1),
        ("bytes=100-70000", 100, 70001),
        (&format!("bytes={}-", size - 10) as &str, size - 10, size),
        ("bytes=-500", size - 500, size),
        ("bytes=65530-65545", 65530, 65546),
    ] {
        let response = client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {from}-{}/{size}", to - 1).as_str(),
            "{range}"
        );
        let body = response.bytes().await.expect("body");
        assert!(body[..] == want[from..to], "{range} bytes differ");
    }
    let response = client
        .get(&url)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    let body = response.text().await.expect("text");
    assert!(body.contains("<Code>InvalidRange</Code>"), "{body}");
    let response = client
        .get(&url)
        .header("range", "bytes=oops")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.expect("text").contains("malformed"));
}

#[tokio::test]
async fn conditional_requests() {
    let proxy = start();
    let client = reqwest::Client::new();
    let url = proxy.url("/imagenet/train/00000004.jpg");
    let head = client.head(&url).send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        expected(4).len().to_string().as_str()
    );
    let etag = head.headers()["etag"].to_str().expect("etag").to_owned();
    let modified = head.headers()["last-modified"]
        .to_str()
        .expect("date")
        .to_owned();

    let status = |response: reqwest::Response| response.status();
    let not_modified = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert_eq!(status(not_modified), StatusCode::NOT_MODIFIED);
    let changed = client
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .expect("get");
    assert_eq!(status(changed), StatusCode::OK);
    let matched = client
        .get(&url)
        .header("if-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(status(matched), StatusCode::OK);
    let mismatched = client
        .get(&url)
        .header("if-match", "\"other\"")
        .send()
        .await
        .expect("get");
    assert_eq!(status(mismatched), StatusCode::PRECONDITION_FAILED);
    let since = client
        .get(&url)
        .header("if-modified-since", &modified)
        .send()
        .await
        .expect("get");
    assert_eq!(status(since), StatusCode::NOT_MODIFIED);
    let earlier = client
        .get(&url)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await
        .expect("get");
    assert_eq!(status(earlier), StatusCode::OK);
}

#[tokio::test]
async fn errors_are_s3_shaped_and_the_proxy_keeps_serving() {
    let proxy = start();
    let client = reqwest::Client::new();
    let cases = [
        (
            "/nobucket/x",
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "nobucket",
        ),
        (
            "/imagenet/train/99999999.jpg",
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "99999999",
        ),
        (
            "/imagenet?versioning",
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "versioning",
        ),
        (
            "/imagenet/%ff",
            StatusCode::BAD_REQUEST,
            "InvalidURI",
            "UTF-8",
        ),
    ];
    for (path, code, s3_code, mentions) in cases {
        let response = client.get(proxy.url(path)).send().await.expect("get");
        assert_eq!(response.status(), code, "{path}");
        let body = response.text().await.expect("text");
        assert!(
            body.contains(&format!("<Code>{s3_code}</Code>")),
            "{path}: {body}"
        );
        assert!(body.contains(mentions), "{path}: {body}");
    }
    let put = client
        .put(proxy.url("/imagenet/new"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), StatusCode::NOT_IMPLEMENTED);
    assert!(put.text().await.expect("text").contains("read-only"));
    let missing_head = client
        .head(proxy.url("/imagenet/nope"))
        .send()
        .await
        .expect("head");
    assert_eq!(missing_head.status(), StatusCode::NOT_FOUND);

    // A request head far over the limit is refused with 431 ...
    let mut stream = TcpStream::connect(proxy.listen).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let huge = "a".repeat(64 * 1024);
    let request =
        format!("GET /imagenet/train/00000000.jpg HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut answer = vec![0; 64];
    let read = stream.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // ... and the proxy still serves.
    let ok = client
        .get(proxy.url("/imagenet/train/00000000.jpg"))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.bytes().await.expect("body").len(), expected(0).len());
}

#[tokio::test]
async fn virtual_hosted_requests_and_list_buckets() {
    let proxy = start();
    let client = reqwest::Client::new();
    let response = client
        .get(proxy.url("/train/00000001.jpg"))
        .header("host", "imagenet.localhost")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.expect("body")[..] == expected(1)[..]);
    let buckets = client
        .get(proxy.url("/"))
        .send()
        .await
        .expect("list buckets");
    let body = buckets.text().await.expect("text");
    assert!(body.contains("<Name>imagenet</Name>"), "{body}");
}

#[tokio::test]
async fn list_objects_v2_paginates_and_folds_prefixes() {
    let proxy = start();
    let client = reqwest::Client::new();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = proxy.url("/imagenet?list-type=2&prefix=train/&max-keys=7");
        if let Some(token) = &token {
            url.push_str(&format!("&continuation-token={token}"));
        }
        let body = client
            .get(url)
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("text");
        pages += 1;
        keys.extend(between_all(&body, "<Key>", "</Key>"));
        match between_all(&body, "<NextContinuationToken>", "</NextContinuationToken>").first() {
            Some(next) => {
                assert!(body.contains("<IsTruncated>true</IsTruncated>"));
                token = Some(next.clone());
            }
            None => break,
        }
        assert!(pages < 20, "pagination does not end");
    }
    assert_eq!(pages, 8, "50 keys in pages of 7");
    let want: Vec<String> = (0..50).map(|i| spec().key(i)).collect();
    assert_eq!(keys, want);

    let body = client
        .get(proxy.url("/imagenet?list-type=2&delimiter=/"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert_eq!(between_all(&body, "<Prefix>", "</Prefix>"), ["", "train/"]);
    assert!(between_all(&body, "<Key>", "</Key>").is_empty());

    let body = client
        .get(proxy.url("/imagenet?list-type=2&start-after=train/00000047.jpg"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert_eq!(
        between_all(&body, "<Key>", "</Key>"),
        ["train/00000048.jpg", "train/00000049.jpg"]
    );
    let bad = client
        .get(proxy.url("/imagenet?list-type=2&continuation-token=zz"))
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// Every text between `open` and `close`, in order.
fn between_all(text: &str, open: &str, close: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        found.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    found
}

#[test]
fn random_ranges_are_byte_exact() {
    // One fixed-size 1 MiB object in 64 KiB chunks: ranges cross chunk edges.
    let origin = "synthetic://?count=2&size=1MiB&dist=fixed&seed=11";
    let proxy = ProxyProcess::start(&[
        "worker",
        "--origin",
        origin,
        "--bucket",
        "shards",
        "--chunk-size",
        "64KiB",
    ]);
    let spec = SyntheticSpec::from_query("count=2&size=1MiB&dist=fixed&seed=11").expect("spec");
    let mut whole = vec![0; 1 << 20];
    spec.fill(1, 0, &mut whole);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();
    let url = proxy.url(&format!("/shards/{}", spec.key(1)));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&(0u64..(1 << 20), 1u64..300_000), |(start, len)| {
            let end = (start + len).min(1 << 20);
            let body = runtime.block_on(async {
                client
                    .get(&url)
                    .header("range", format!("bytes={start}-{}", end - 1))
                    .send()
                    .await
                    .expect("get")
                    .bytes()
                    .await
                    .expect("body")
            });
            prop_assert_eq!(body.len() as u64, end - start);
            prop_assert!(body[..] == whole[start as usize..end as usize]);
            Ok(())
        })
        .expect("ranges match the origin");
}
