//! The sandbox: kube-sim + azure-sim (sandbox world) + the operator, with `examples/` applied,
//! printing every grant as it moves through its phases (the `sandbox` binary is its command
//! line; the e2e tests run it in-process).
//!
//! Made to survive a busy machine: everything it starts listens on a free loopback port (the
//! simulators, the operator's admin endpoint and its webhook), nothing binds a fixed port or a
//! public address, and two sandboxes run side by side when each has its own `dir`. When the
//! operator or a simulator stops, the sandbox stops at once with an error carrying the last
//! lines of the operator's log.

use crate::harness::{self, OPERATOR_NAMESPACE};
use anyhow::{Context, bail};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// What a sandbox run needs (the `sandbox` binary's flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Stop cleanly after this long; `None`: run until Ctrl-C.
    pub exit_after: Option<Duration>,
    /// Folder of example manifests to apply.
    pub examples: PathBuf,
    /// Where the kubeconfig, the logs and `operator.pid` go (one per sandbox).
    pub dir: PathBuf,
    /// World for azure-sim.
    pub world: PathBuf,
    /// Folder of the CRDs kube-sim serves.
    pub crds: PathBuf,
    /// The chart's roles for people (`deploy/rbac-users.yaml`); the sandbox binds its
    /// requester to `accessgrant-requester`.
    pub user_roles: PathBuf,
    /// The chart's RBAC for the operator (`deploy/rbac.yaml`): the operator runs as the
    /// ServiceAccount `accessgrant-system/accessgrant-operator` with these rights only.
    pub operator_rbac: PathBuf,
    /// PIM deactivation floor the sandbox uses (Azure: PT5M), so deletes finish quickly.
    pub deactivation_floor: String,
    /// A built operator binary; `None`: `cargo build` it (from the repository root).
    pub operator: Option<PathBuf>,
}

/// The sandbox's requester (an on-call engineer).
const REQUESTER: &str = "alice@example.com";

/// How many lines of the operator's log a failure shows.
const LOG_TAIL_LINES: usize = 20;

/// The sandbox's `--exit-after`: `60s`, `5m` or an ISO 8601 duration (`PT2M`).
pub fn parse_wait(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if let Some(n) = t.strip_suffix('s') {
        return Ok(Duration::from_secs(n.parse()?));
    }
    if let Some(n) = t.strip_suffix('m') {
        return Ok(Duration::from_secs(n.parse::<u64>()? * 60));
    }
    if let Some(d) = crate::azure::time::parse_duration(t) {
        return Ok(d.to_std()?);
    }
    bail!("--exit-after {s:?}: use e.g. 60s, 5m or PT2M")
}

/// A free port on the loopback interface, for a process that binds it itself. (Another
/// process may take it in between; the operator then exits at once, and the sandbox says so.)
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free loopback port")?
        .local_addr()?)
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn api_resource(kind: &str) -> Option<(ApiResource, bool)> {
    let (group, version, plural, namespaced) = match kind {
        "Namespace" => ("", "v1", "namespaces", false),
        "ServiceAccount" => ("", "v1", "serviceaccounts", true),
        "AccessPolicy" => ("accessgrant.io", "v1alpha1", "accesspolicies", false),
        "AccessGrant" => ("accessgrant.io", "v1alpha1", "accessgrants", true),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Registers the operator's admission webhooks (failurePolicy Fail) at `https://{addr}`; the
/// operator patches in the CA it generates.
async fn register_webhooks(
    client: &kube::Client,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    for (kind, plural, name, path) in [
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            "stamp.accessgrants.accessgrant.io",
            "mutate",
        ),
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            "validate.accessgrants.accessgrant.io",
            "validate",
        ),
    ] {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        // As deploy/webhook.yaml: the validating webhook also sees status writes.
        let resources = if path == "validate" {
            serde_json::json!(["accessgrants", "accessgrants/status"])
        } else {
            serde_json::json!(["accessgrants"])
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let v = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": "accessgrant-operator"},
            "webhooks": [{
                "name": name,
                "clientConfig": {"url": format!("https://{addr}/{path}")},
                "rules": [{"apiGroups": ["accessgrant.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": resources, "scope": "Namespaced"}],
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10
            }]
        });
        api.patch(
            "accessgrant-operator",
            &PatchParams::apply("sandbox").force(),
            &Patch::Apply(&v),
        )
        .await
        .with_context(|| format!("registering the {kind}"))?;
    }
    Ok(())
}

/// Applies the examples: AccessGrants as the requester, everything else as the admin.
async fn apply_examples(
    admin: &kube::Client,
    requester: &kube::Client,
    dir: &PathBuf,
) -> anyhow::Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut n = 0;
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        // Parsed up front: the YAML parser is not Send, and the applying below awaits.
        let docs = serde_norway::Deserializer::from_str(&text)
            .map(serde::Deserialize::deserialize)
            .collect::<Result<Vec<serde_json::Value>, _>>()
            .with_context(|| format!("parsing {}", f.display()))?;
        for v in docs {
            if v.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(v.clone())
                .with_context(|| format!("{}: not a Kubernetes object", f.display()))?;
            let kind = v["kind"].as_str().unwrap_or_default();
            let Some((ar, namespaced)) = api_resource(kind) else {
                bail!(
                    "{}: kind {kind} is not one the sandbox applies",
                    f.display()
                );
            };
            let name = obj.metadata.name.clone().context("object without a name")?;
            let client = if kind == "AccessGrant" {
                requester
            } else {
                admin
            };
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(
                    client.clone(),
                    obj.metadata.namespace.as_deref().unwrap_or("default"),
                    &ar,
                )
            } else {
                Api::all_with(client.clone(), &ar)
            };
            // The webhook may still be starting (failurePolicy Fail): retry that for a while;
            // a refusal by the webhook is the point of some examples: print it.
            let started = tokio::time::Instant::now();
            loop {
                match api
                    .patch(
                        &name,
                        &PatchParams::apply("sandbox").force(),
                        &Patch::Apply(&v),
                    )
                    .await
                {
                    Ok(_) => {
                        n += 1;
                        break;
                    }
                    Err(kube::Error::Api(e))
                        if e.message.contains("failed calling webhook")
                            && started.elapsed() < std::time::Duration::from_secs(120) =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err(kube::Error::Api(e)) if e.message.contains("admission webhook") => {
                        println!(
                            "refused at admission: {kind} {name} ({}): {}",
                            e.reason, e.message
                        );
                        break;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("applying {kind} {name} from {}", f.display())
                        });
                    }
                }
            }
        }
    }
    Ok(n)
}

fn row(o: &DynamicObject) -> (String, String, String) {
    let st = &o.data["status"];
    let s = |p: &str| {
        st.pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_string()
    };
    let key = format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    );
    let line = format!(
        "{:<32} {:<5} {:<28} {:<16} {:<24} {:<26} {:<18} {}",
        key,
        s("/summary/type"),
        s("/summary/target"),
        s("/phase"),
        s("/reason"),
        s("/endTime"),
        s("/requestedBy"),
        s("/message")
    );
    (key, format!("{} {}", s("/phase"), s("/reason")), line)
}

/// Runs a sandbox until `exit_after`, Ctrl-C, or a failure: the operator or a simulator
/// stopping is an error whose message ends with the operator log's last lines.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let kubeconfig = cfg.dir.join("kubeconfig");
    let log_path = cfg.dir.join("operator.log");
    let audit_path = cfg.dir.join("audit.jsonl");

    let mut world = crate::azure::World::from_file(&cfg.world)
        .with_context(|| format!("loading {}", cfg.world.display()))?;
    world.settings.deactivation_floor = cfg.deactivation_floor.clone();
    let harness::Sims {
        mut kube,
        mut azure,
        operator_kubeconfig,
        azure_ca: ca,
        ..
    } = harness::Sims::start(harness::SimsSetup {
        dir: cfg.dir.clone(),
        kube: crate::kube::SimConfig {
            crds_dir: Some(cfg.crds.clone()),
            ..Default::default()
        },
        world,
        // A year: the sandbox runs until stopped.
        operator_identity: Some(365 * 24 * 3600),
        manifests: vec![cfg.user_roles.clone(), cfg.operator_rbac.clone()],
    })
    .await?;
    println!("kube-sim listening on {}", kube.base_url());
    println!("azure-sim listening on {}", azure.base_url());
    kube.bind_cluster_role(REQUESTER, "accessgrant-requester", "sandbox")
        .await?;

    let binary = match &cfg.operator {
        Some(b) => b.clone(),
        None => build_operator().await?,
    };
    let log = std::fs::File::create(&log_path)?;
    let audit = std::fs::File::create(&audit_path)?;
    let client = kube.client().await?;
    let webhook_addr = free_loopback_addr()?;
    let admin_addr = free_loopback_addr()?;
    register_webhooks(&client, webhook_addr).await?;
    println!(
        "starting accessgrant-operator (admin: http://{admin_addr}, webhook: https://{webhook_addr}, logs: {}, audit: {})",
        log_path.display(),
        audit_path.display()
    );
    let azure_url = azure.base_url();
    let webhook = webhook_addr.to_string();
    let setup = harness::OperatorSetup {
        kubeconfig: &operator_kubeconfig,
        azure_url: &azure_url,
        azure_ca: &ca,
        client_secret: harness::OPERATOR_SECRET,
        admin: admin_addr,
        webhook: &webhook,
        namespace: OPERATOR_NAMESPACE,
    };
    let mut operator = tokio::process::Command::from(harness::operator_command(&binary, &setup))
        .env("PIM_DEACTIVATION_FLOOR", &cfg.deactivation_floor)
        .env("JIT_EARLY_CLOSE", "PT1M")
        .stdin(Stdio::null())
        .stdout(audit)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    if let Some(pid) = operator.id() {
        std::fs::write(cfg.dir.join("operator.pid"), format!("{pid}\n"))?;
    }

    // Everything from here on races the operator and both simulators: whichever stops first
    // ends the sandbox, so a dead operator is never waited on silently.
    let outcome = tokio::select! {
        r = explore(&cfg, &kubeconfig, client) => r,
        status = operator.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            Err(anyhow::anyhow!(
                "the operator exited ({status}); last lines of {}:\n{}",
                log_path.display(),
                log_tail(&log_path, LOG_TAIL_LINES)
            ))
        }
        _ = kube.stopped() => Err(anyhow::anyhow!("kube-sim stopped")),
        _ = azure.stopped() => Err(anyhow::anyhow!("azure-sim stopped")),
    };
    println!("stopping");
    let _ = operator.start_kill();
    let _ = operator.wait().await;
    let _ = std::fs::remove_file(cfg.dir.join("operator.pid"));
    azure.shutdown().await;
    kube.shutdown().await;
    outcome
}

async fn build_operator() -> anyhow::Result<PathBuf> {
    println!("building accessgrant-operator ...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = tokio::process::Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "accessgrant-operator",
            "--bin",
            "accessgrant-operator",
        ])
        .status()
        .await
        .context("running cargo build")?;
    if !built.success() {
        bail!("cargo build -p accessgrant-operator failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    Ok(target.join("debug").join("accessgrant-operator"))
}

/// Applies the examples as an on-call engineer and prints each grant's moves until the
/// deadline (or Ctrl-C).
async fn explore(cfg: &Config, kubeconfig: &Path, client: kube::Client) -> anyhow::Result<()> {
    // The examples' grants are applied by an on-call engineer (impersonated; bound to the
    // chart's accessgrant-requester role in `run`): the webhook stamps them and REQUESTED-BY
    // shows who asked. Namespaces and AccessPolicies are the platform team's (the admin's).
    let mut as_alice = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    as_alice.auth_info.impersonate = Some(REQUESTER.into());
    as_alice.auth_info.impersonate_groups = Some(vec!["oncall".into(), "team-a".into()]);
    let alice = kube::Client::try_from(as_alice)?;
    let applied = apply_examples(&client, &alice, &cfg.examples).await?;
    println!("applied {applied} objects from {}", cfg.examples.display());
    println!();
    println!(
        "Explore it:  kubectl --kubeconfig {} get accessgrants -A",
        kubeconfig.display()
    );
    println!();
    println!(
        "{:<32} {:<5} {:<28} {:<16} {:<24} {:<26} {:<18} MESSAGE",
        "NAMESPACE/NAME", "TYPE", "TARGET", "PHASE", "REASON", "EXPIRES", "REQUESTED-BY"
    );

    let (ar, _) = api_resource("AccessGrant").context("AccessGrant resource")?;
    let grants: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut seen: HashMap<String, String> = HashMap::new();
    let stream = watcher(grants, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let deadline = async {
        match cfg.exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            next = stream.next() => match next {
                Some(Ok(o)) => {
                    let (key, phase_reason, line) = row(&o);
                    if seen.get(&key) != Some(&phase_reason) {
                        seen.insert(key, phase_reason);
                        println!("{line}");
                    }
                }
                Some(Err(e)) => eprintln!("watch: {e}"),
                None => return Ok(()),
            }
        }
    }
}
