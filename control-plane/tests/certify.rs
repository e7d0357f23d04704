//! `POST /v1/identity/certify` against a real control plane process over TLS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

struct Plane {
    child: Child,
    url: String,
    admin: String,
    bundle: PathBuf,
    dir: PathBuf,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(label: &str) -> Plane {
    let dir = std::env::temp_dir().join(format!("ferry-cp-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - { token: good-token, namespace: train, service_account: job }\n",
    )
    .expect("tokens");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-control-plane"))
        .args(["--state-dir", dir.join("state").to_str().expect("path")])
        .args(["--tokens", tokens.to_str().expect("path")])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("json");
    Plane {
        url: format!(
            "https://{}/v1/identity/certify",
            ready["listen"].as_str().expect("listen")
        ),
        admin: ready["admin"].as_str().expect("admin").to_owned(),
        bundle: PathBuf::from(ready["trust_bundle"].as_str().expect("bundle")),
        child,
        dir,
    }
}

fn client(bundle: &Path) -> reqwest::Client {
    let pem = std::fs::read(bundle).expect("bundle");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("anchor")])
        .build()
        .expect("client")
}

fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

async fn certify(plane: &Plane, token: &str, body: String) -> (u16, serde_json::Value) {
    let response = client(&plane.bundle)
        .post(&plane.url)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let value = serde_json::from_str(&response.text().await.expect("text")).expect("json body");
    (status, value)
}

#[tokio::test]
async fn a_bad_token_is_401_with_a_message() {
    let plane = start("token");
    let body = serde_json::json!({ "csr": csr(vec![]) }).to_string();
    let (status, answer) = certify(&plane, "not-a-token", body.clone()).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"]
            .as_str()
            .expect("message")
            .contains("token is not valid"),
        "{answer}"
    );
    let (status, _) = certify(&plane, "", body).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_san_comes_from_the_token_never_from_the_csr() {
    let plane = start("san");
    let asked = SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .expect("uri"),
    );
    let body = serde_json::json!({ "csr": csr(vec![asked, SanType::DnsName("evil.example".try_into().expect("dns"))]) }).to_string();
    let (status, answer) = certify(&plane, "good-token", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["spiffe_id"],
        "spiffe://cluster.local/ns/train/sa/job"
    );
    let leaf_pem = answer["certificate_chain"][0].as_str().expect("leaf");
    let der = pem::parse(leaf_pem).expect("pem");
    let (_, leaf) = X509Certificate::from_der(der.contents()).expect("x509");
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => format!("uri:{uri}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        ["uri:spiffe://cluster.local/ns/train/sa/job"],
        "exactly one SAN, the token's"
    );
    assert!(
        !answer["trust_bundle"]
            .as_array()
            .expect("bundle")
            .is_empty()
    );
}

#[tokio::test]
async fn a_garbage_csr_is_400_with_a_message() {
    let plane = start("garbage");
    let (status, answer) = certify(&plane, "good-token", serde_json::json!({ "csr": "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----" }).to_string()).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .expect("message")
            .contains("CSR is malformed"),
        "{answer}"
    );
    let (status, answer) = certify(&plane, "good-token", "not json".to_owned()).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .expect("message")
            .contains("must be JSON"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_examples_load_and_their_tokens_name_workloads() {
    use ferry_control_plane::identity::{FileTokens, TokenValidator};
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let config: ferry_config::ControlPlaneConfig =
        ferry_config::from_yaml_file(&examples.join("control-plane.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.trust_domain, "cluster.local");
    let tokens =
        FileTokens::load(&examples.join("tokens.yaml")).unwrap_or_else(|e| panic!("{e:#}"));
    let workload = tokens
        .validate("change-me-train")
        .await
        .expect("the example token is known");
    assert_eq!(
        (
            workload.namespace.as_str(),
            workload.service_account.as_str()
        ),
        ("train", "job")
    );
}

#[tokio::test]
async fn api_requests_are_counted_in_a_valid_exposition() {
    use ferry_config::exposition::Exposition;
    let plane = start("metrics");
    let body = serde_json::json!({ "csr": csr(vec![]) }).to_string();
    assert_eq!(certify(&plane, "good-token", body.clone()).await.0, 200);
    assert_eq!(certify(&plane, "bad-token", body).await.0, 401);
    let text = reqwest::get(format!("http://{}/metrics", plane.admin))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let metrics = Exposition::parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}"));
    assert_eq!(
        metrics.undescribed(),
        Vec::<&str>::new(),
        "families without HELP or TYPE"
    );
    let certify_route = [("route", "certify"), ("direction", "inbound")];
    assert_eq!(metrics.sum("request_total", &certify_route), 2.0);
    assert_eq!(
        metrics.sum(
            "response_total",
            &[("route", "certify"), ("status_code", "401")]
        ),
        1.0
    );
    assert_eq!(metrics.sum("identity_certificates_issued_total", &[]), 1.0);
    assert_eq!(
        metrics.sum(
            "identity_certificates_refused_total",
            &[("reason", "bad_token")]
        ),
        1.0
    );
    assert_eq!(
        metrics
            .buckets("response_latency_seconds", &certify_route)
            .last()
            .map(|b| b.1),
        Some(2.0)
    );
}
