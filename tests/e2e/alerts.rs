//! Alerts and dashboard with Debian's real Prometheus (`scripts/ensure-prometheus.sh`):
//! - `promtool check rules` and `promtool test rules` on the chart's rule file;
//! - a Prometheus server scrapes the operator (through `/metrics`' bearer token) while a
//!   revocation keeps failing in azure-sim, and the alert becomes firing in Prometheus's own
//!   API; every query of the Grafana dashboard parses and returns series there.

use crate::e2e_support::*;
use crate::wait;

use accessgrant_operator::api::*;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_file() -> PathBuf {
    root().join("charts/accessgrant-operator/files/prometheus-rules.yaml")
}

/// The directory holding `prometheus` and `promtool`, installed by the project's script.
fn prometheus_dir() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("scripts/ensure-prometheus.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run ensure-prometheus.sh");
    assert!(out.status.success(), "ensure-prometheus.sh failed");
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    PathBuf::from(dir)
}

fn promtool(dir: &Path, args: &[&str], cwd: &Path) -> String {
    let out = Command::new(dir.join("promtool"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alerts of the rule file, by name.
fn alerts() -> Vec<Value> {
    let file: Value =
        serde_norway::from_str(&std::fs::read_to_string(rules_file()).expect("rules file"))
            .expect("rules file is YAML");
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass_and_every_alert_has_a_runbook() {
    let dir = prometheus_dir();
    let checked = promtool(
        &dir,
        &["check", "rules", rules_file().to_str().expect("path")],
        &root(),
    );
    let n = alerts().len();
    assert!(
        checked.contains(&format!("SUCCESS: {n} rules found")),
        "{checked}"
    );
    let fixtures = root().join("tests/fixtures/prometheus");
    let tested = promtool(&dir, &["test", "rules", "rules.test.yaml"], &fixtures);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is unit-tested firing, and has a runbook section its annotation points at.
    let tests = std::fs::read_to_string(fixtures.join("rules.test.yaml")).expect("tests");
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).expect("runbooks");
    for a in alerts() {
        let name = a["alert"].as_str().expect("alert name");
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "{name} is never tested firing"
        );
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "no runbook section for {name}"
        );
        assert_eq!(
            a["annotations"]["runbook_url"],
            format!("docs/runbooks.md#{}", name.to_ascii_lowercase()).as_str()
        );
        for key in ["summary", "description"] {
            assert!(
                a["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name} has no {key}"
            );
        }
    }
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts Prometheus scraping `target` every second with `token`, evaluating `rules` every
/// second.
fn start_prometheus(bin: &Path, target: &str, token: &Path, rules: &Value) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_path,
        serde_norway::to_string(rules).expect("rules to YAML"),
    )
    .expect("write rules");
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [rules_path],
        "scrape_configs": [{
            "job_name": "accessgrant-operator",
            "metrics_path": "/metrics",
            "authorization": {"type": "Bearer", "credentials_file": token},
            "static_configs": [{"targets": [target]}],
        }],
    });
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        serde_norway::to_string(&config).expect("config to YAML"),
    )
    .expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new(bin.join("prometheus"))
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn prom_get(http: &reqwest::Client, url: String) -> Result<Value, String> {
    let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] == "success" {
        Ok(body["data"].clone())
    } else {
        Err(body.to_string())
    }
}

/// The dashboard's queries, with Grafana's `$__rate_interval` as Grafana would set it for a
/// 1 s scrape interval on a short range.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/accessgrant-operator/files/dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                format!("{} / {}", p["title"], t["refId"]),
                t["expr"]
                    .as_str()
                    .expect("expr")
                    .replace("$__rate_interval", "30s"),
            ));
        }
    }
    out
}

#[tokio::test]
async fn a_failing_revocation_fires_its_alert_in_a_real_prometheus_and_every_dashboard_query_returns_series()
 {
    let bin = prometheus_dir();
    let mut env = Env::start_bare().await;
    let token_dir = tempfile::tempdir().expect("tempdir");
    let token = token_dir.path().join("token");
    std::fs::write(&token, "scrape-me-7f3a\n").expect("token file");
    env.start_operator_with(&[("METRICS_BEARER_TOKEN_FILE", token.to_str().expect("path"))]);
    let api = env.namespace("e2e-alerts", true).await;
    let pp = PostParams::default();
    api.create(
        &pp,
        &with_spec(pim_grant("held", "Assign", READER, "PT2H"), |s| {
            s.pim.as_mut().expect("pim").principal_id = DEPLOYER_OID.into()
        }),
    )
    .await
    .expect("create");
    api.create(&pp, &jit_grant("ssh", 1, 22, "10.9.9.9", "PT1H"))
        .await
        .expect("create");
    wait_for(&api, "held", "Active", 60, phase(Phase::Active)).await;
    wait_for(&api, "ssh", "Active", 60, phase(Phase::Active)).await;

    // /metrics needs the token; the probes do not.
    let (status, _) = env.admin_get("/metrics").await;
    assert_eq!(status, 401, "/metrics without the bearer token");
    let (status, _) = env.admin_get("/readyz").await;
    assert_eq!(status, 200, "/readyz stays open for the kubelet");

    // The chart's rules as they are, but without the hold time (`for`, which promtool's unit
    // tests cover): the expressions run on the operator's real series.
    let mut rules: Value =
        serde_norway::from_str(&std::fs::read_to_string(rules_file()).expect("rules"))
            .expect("rules YAML");
    for g in rules["groups"].as_array_mut().expect("groups") {
        for r in g["rules"].as_array_mut().expect("rules") {
            if let Some(o) = r.as_object_mut() {
                o.remove("for");
            }
        }
    }
    let admin = env.admin_url().trim_start_matches("http://").to_string();
    let prom = start_prometheus(&bin, &admin, &token, &rules);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");

    // Prometheus scrapes with the token (its target is up), and the alert fires.
    let url = prom.url.clone();
    wait::eventually(
        "Prometheus' target up",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let d = prom_get(&http, format!("{url}/api/v1/targets")).await?;
                let t = &d["activeTargets"][0];
                if t["health"] == "up" {
                    Ok(())
                } else {
                    Err(t.to_string())
                }
            }
        },
    )
    .await;
    // Every PIM write now fails: the AdminRemove of a deleted grant keeps failing.
    let r = env
        .control(
            reqwest::Method::POST,
            "/_sim/faults",
            Some(json!({"operation": "RoleAssignmentScheduleRequests_Create", "kind": "error", "status": 500})),
        )
        .await;
    assert!(r.status().is_success(), "fault: {}", r.status());
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");

    let alert = wait::eventually(
        "AccessGrantRevocationFailing firing in Prometheus",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let d = prom_get(&http, format!("{url}/api/v1/alerts")).await?;
                d["alerts"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .find(|a| {
                                a["labels"]["alertname"] == "AccessGrantRevocationFailing"
                                    && a["state"] == "firing"
                            })
                            .cloned()
                    })
                    .ok_or_else(|| d.to_string())
            }
        },
    )
    .await;
    assert_eq!(alert["labels"]["kind"], "PIM", "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["job"], "accessgrant-operator", "{alert}");
    // Nothing else is wrong: no other alert of ours fires (break-glass, auth, leader...).
    let d = prom_get(&http, format!("{url}/api/v1/alerts"))
        .await
        .expect("alerts");
    let firing: Vec<&str> = d["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert!(
        firing.iter().all(|n| *n == "AccessGrantRevocationFailing"),
        "unexpected alerts firing: {firing:?}"
    );
    // The grant is still held (its finalizer) while Azure refuses: nothing was forgotten.
    let g = api.get("held").await.expect("the grant is still there");
    assert!(g.metadata.deletion_timestamp.is_some());

    // Every dashboard query parses and returns series from the operator's metrics.
    for (panel, q) in dashboard_queries() {
        let data = wait::eventually(
            &format!("dashboard query {panel}: {q}"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let (http, url, q) = (http.clone(), url.clone(), q.clone());
                async move {
                    let full = reqwest::Url::parse_with_params(
                        &format!("{url}/api/v1/query"),
                        &[("query", q.as_str())],
                    )
                    .map_err(|e| e.to_string())?;
                    let d = prom_get(&http, full.to_string()).await?;
                    if d["result"].as_array().is_some_and(|r| !r.is_empty()) {
                        Ok(d)
                    } else {
                        Err(d.to_string())
                    }
                }
            },
        )
        .await;
        assert_eq!(data["resultType"], "vector", "{panel}");
    }

    // Azure answers again: the removal goes through and the grant goes.
    let r = env
        .control(reqwest::Method::DELETE, "/_sim/faults", None)
        .await;
    assert!(r.status().is_success());
    // (The next retry may be up to the planner's longest backoff, 5 minutes, away.)
    wait_gone(&api, "held", 330).await;
    drop(prom);
}
