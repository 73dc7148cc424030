//! GitOps health of AccessGrants: the Argo CD health check (`gitops/argocd/...`, Lua run by a
//! real Lua 5.1 interpreter, laid out and tested as Argo CD's `resource_customizations`), the
//! Flux `healthCheckExprs` (`gitops/flux/`, evaluated by a CEL interpreter with Flux's order),
//! both over fixtures of every phase and over grants the real operator wrote; and
//! `kubectl wait --for=condition=Ready` returning once a grant is Active.

use crate::e2e_support;

use accessgrant_operator::api::*;
use e2e_support::*;
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn argocd_dir() -> PathBuf {
    root().join("gitops/argocd/resource_customizations/accessgrant.io/AccessGrant")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one of the project's `ensure-*.sh` scripts (installing the tool when missing) and
/// returns the path it prints.
fn ensure_tool(script: &str) -> String {
    let out = Command::new("bash")
        .arg(root().join(script))
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lua_bin() -> String {
    ensure_tool("scripts/ensure-lua.sh")
}

/// A JSON value as a Lua table constructor (objects keyed, arrays from 1), as Argo CD hands the
/// object to the script.
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(a) => format!(
            "{{{}}}",
            a.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs health.lua on `obj` with the real interpreter: (status, message).
fn argocd_health(lua: &str, obj: &Value) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("run.lua");
    let health = argocd_dir().join("health.lua");
    std::fs::write(
        &script,
        format!(
            "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
            lua_literal(obj),
            lua_literal(&Value::String(health.display().to_string()))
        ),
    )
    .expect("script");
    let out = Command::new(lua).arg(&script).output().expect("lua runs");
    assert!(
        out.status.success(),
        "health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// Flux's reading of `healthCheckExprs` for one object: inProgress, then failed, then current;
/// an expression that cannot be evaluated (a field not there yet) leaves it in progress.
fn flux_health(obj: &Value) -> String {
    let exprs = yaml(&root().join("gitops/flux/healthcheckexprs.yaml"));
    let check = &exprs["healthCheckExprs"][0];
    assert_eq!(check["kind"], "AccessGrant");
    let mut ctx = cel::Context::default();
    for (k, v) in obj.as_object().expect("object") {
        ctx.add_variable(k.as_str(), v.clone()).expect("variable");
    }
    for (field, outcome) in [
        ("inProgress", "InProgress"),
        ("failed", "Failed"),
        ("current", "Current"),
    ] {
        let Some(src) = check[field].as_str() else {
            continue;
        };
        let program = cel::Program::compile(src).unwrap_or_else(|e| panic!("{field}: {e:?}"));
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => return outcome.into(),
            Ok(cel::Value::Bool(false)) => {}
            Ok(other) => panic!("{field} is not a boolean: {other:?}"),
            Err(_) => return "InProgress".into(),
        }
    }
    "InProgress".into()
}

#[test]
fn argocd_health_check_over_every_phase() {
    let lua = lua_bin();
    let tests = yaml(&argocd_dir().join("health_test.yaml"));
    let tests = tests["tests"].as_array().expect("tests");
    assert!(tests.len() >= 15, "a fixture for every phase");
    let mut phases = std::collections::BTreeSet::new();
    for t in tests {
        let input = t["inputPath"].as_str().expect("inputPath");
        let obj = yaml(&argocd_dir().join(input));
        if let Some(p) = obj["status"]["phase"].as_str() {
            phases.insert(p.to_string());
        }
        let (status, message) = argocd_health(&lua, &obj);
        assert_eq!(
            status,
            t["healthStatus"]["status"].as_str().unwrap_or_default(),
            "{input}"
        );
        assert_eq!(
            message,
            t["healthStatus"]["message"].as_str().unwrap_or_default(),
            "{input}"
        );
    }
    for p in accessgrant_operator::telemetry::PHASES {
        assert!(phases.contains(p), "no fixture for phase {p}");
    }
}

#[test]
fn flux_health_check_exprs_over_every_phase() {
    let tests = yaml(&root().join("gitops/flux/health_test.yaml"));
    for t in tests["tests"].as_array().expect("tests") {
        let input = t["inputPath"].as_str().expect("inputPath");
        let obj = yaml(&root().join("gitops/flux").join(input));
        assert_eq!(
            flux_health(&obj),
            t["status"].as_str().unwrap_or_default(),
            "{input}"
        );
    }
}

#[test]
fn fixtures_carry_the_conditions_the_operator_writes() {
    // The fixtures' Reconciling/Stalled conditions are the ones the planner sets per phase.
    let tests = yaml(&argocd_dir().join("health_test.yaml"));
    for t in tests["tests"].as_array().expect("tests") {
        let input = t["inputPath"].as_str().expect("inputPath");
        let obj = yaml(&argocd_dir().join(input));
        let Some(phase) = obj["status"]["phase"].as_str() else {
            continue;
        };
        let phase: Phase = serde_json::from_value(Value::String(phase.into())).expect("phase");
        let has = |ty: &str| {
            obj["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
        };
        let (reconciling, stalled) = accessgrant_operator::lifecycle::kstatus_conditions(phase);
        assert_eq!(has("Reconciling"), reconciling, "{input}: Reconciling");
        assert_eq!(has("Stalled"), stalled, "{input}: Stalled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_grants_read_right_and_kubectl_wait_returns_when_active() {
    let env = Env::start().await;
    let grants = env.namespace("team-g", true).await;
    grants
        .create(
            &PostParams::default(),
            &jit_grant("g-ssh", 1, 22, "10.4.4.4", "PT1H"),
        )
        .await
        .expect("grant");
    // `kubectl wait --for=condition=Ready` returns once the grant is Active.
    let kubectl = ensure_tool("sim/tests/fixtures/kube/ensure-kubectl.sh");
    let cache = tempfile::tempdir().expect("cache");
    let waited = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(env.dir.path().join("kubeconfig"))
        .arg("--cache-dir")
        .arg(cache.path())
        .args([
            "wait",
            "--for=condition=Ready",
            "accessgrant/g-ssh",
            "-n",
            "team-g",
            "--timeout=90s",
        ])
        .env("HOME", cache.path())
        .output()
        .await
        .expect("kubectl wait runs");
    assert!(
        waited.status.success(),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stdout).contains("condition met"));
    let active = grants.get("g-ssh").await.expect("grant");
    assert_eq!(active.status.as_ref().map(|s| s.phase), Some(Phase::Active));

    // A grant no policy allows: Denied by the operator, Stalled.
    grants
        .create(
            &PostParams::default(),
            &jit_grant("g-telnet", 1, 23, "10.4.4.4", "PT1H"),
        )
        .await
        .expect("grant");
    let denied = wait_for(&grants, "g-telnet", "Denied", 60, phase(Phase::Denied)).await;

    let lua = lua_bin();
    let as_json = |g: &AccessGrant| serde_json::to_value(g).expect("json");
    let (st, _) = argocd_health(&lua, &as_json(&active));
    assert_eq!(st, "Healthy");
    assert_eq!(flux_health(&as_json(&active)), "Current");
    let (st, msg) = argocd_health(&lua, &as_json(&denied));
    assert_eq!(st, "Degraded");
    assert!(msg.starts_with("Denied ("), "{msg}");
    assert_eq!(flux_health(&as_json(&denied)), "Failed");
    let conds = |g: &AccessGrant| -> Vec<String> {
        g.status
            .as_ref()
            .map(|s| s.conditions.iter().map(|c| c.type_.clone()).collect())
            .unwrap_or_default()
    };
    assert!(
        !conds(&active).contains(&"Reconciling".to_string())
            && !conds(&active).contains(&"Stalled".to_string())
    );
    assert!(conds(&denied).contains(&"Stalled".to_string()));
    let _: Api<AccessGrant> = grants;

    // The `accessgrant` category: `kubectl get accessgrant` lists grants and policies together.
    let listed = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(env.dir.path().join("kubeconfig"))
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["get", "accessgrant", "-A", "-o", "name"])
        .env("HOME", cache.path())
        .output()
        .await
        .expect("kubectl get runs");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for want in [
        "accessgrant.accessgrant.io/g-ssh",
        "accessgrant.accessgrant.io/g-telnet",
        "accesspolicy.accessgrant.io/allow-team-g",
    ] {
        assert!(
            listed.lines().any(|l| l == want),
            "{want} not in:\n{listed}"
        );
    }
}
