//! The binary contract: `azure-sim --listen --world --ca-out` prints its address once ready,
//! writes its CA, and serves HTTPS that a client trusting that CA accepts.

use crate::azure_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use azure_support::*;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_address_writes_ca_and_serves_https() {
    accessgrant_sim::azure::install_crypto_provider();
    let ca_out = std::env::temp_dir().join(format!("azure-sim-ca-{}.pem", uuid::Uuid::new_v4()));
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_azure-sim"))
            .args(["--listen", "127.0.0.1:0", "--world"])
            .arg(world_path())
            .arg("--ca-out")
            .arg(&ca_out)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn azure-sim"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).map(|_| l)
    })
    .await
    .expect("join")
    .expect("read line");
    let addr = line
        .trim()
        .strip_prefix("azure-sim listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let pem = std::fs::read(&ca_out).expect("CA written");
    let _ = std::fs::remove_file(&ca_out);
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .build()
        .expect("client");
    let r = http
        .post(format!("https://{addr}/{TENANT}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_id={OPERATOR_APP}&client_secret={OPERATOR_SECRET}&grant_type=client_credentials&scope=https%3A%2F%2Fmanagement.azure.com%2F.default"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status().as_u16(), 200);
    // A client that does not trust the sim's CA is refused at the TLS layer.
    let strict = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .expect("client");
    assert!(
        strict
            .get(format!("https://{addr}/_sim/health"))
            .send()
            .await
            .is_err()
    );
}
