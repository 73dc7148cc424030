//! The sandbox: kube-sim + azure-sim (sandbox world) + the operator, with `examples/` applied,
//! printing every grant as it moves through its phases. Run from the repository root:
//!
//!     cargo run -p accessgrant-sim --bin sandbox [-- --exit-after 60s]

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "sandbox",
    about = "kube-sim + azure-sim + accessgrant-operator, with examples/ applied"
)]
struct Args {
    /// Stop cleanly after this long (e.g. `60s`, `5m`, `PT2M`); default: run until Ctrl-C.
    #[arg(long, env = "SANDBOX_EXIT_AFTER")]
    exit_after: Option<String>,
    /// Folder of example manifests to apply.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Where the kubeconfig and logs go.
    #[arg(long, default_value = ".sandbox")]
    dir: PathBuf,
    /// World for azure-sim.
    #[arg(long, default_value = "sim/worlds/sandbox.yaml")]
    world: PathBuf,
    /// PIM deactivation floor the sandbox uses (Azure: PT5M), so deletes finish quickly.
    #[arg(long, default_value = "PT10S")]
    deactivation_floor: String,
}

fn parse_wait(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if let Some(n) = t.strip_suffix('s') {
        return Ok(Duration::from_secs(n.parse()?));
    }
    if let Some(n) = t.strip_suffix('m') {
        return Ok(Duration::from_secs(n.parse::<u64>()? * 60));
    }
    if let Some(d) = accessgrant_sim::azure::time::parse_duration(t) {
        return Ok(d.to_std()?);
    }
    bail!("--exit-after {s:?}: use e.g. 60s, 5m or PT2M")
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
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let v = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": "accessgrant-operator"},
            "webhooks": [{
                "name": name,
                "clientConfig": {"url": format!("https://{addr}/{path}")},
                "rules": [{"apiGroups": ["accessgrant.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["accessgrants"], "scope": "Namespaced"}],
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

async fn apply_examples(client: &kube::Client, dir: &PathBuf) -> anyhow::Result<usize> {
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
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exit_after = args.exit_after.as_deref().map(parse_wait).transpose()?;
    std::fs::create_dir_all(&args.dir)?;
    let kubeconfig = args.dir.join("kubeconfig");
    accessgrant_sim::azure::install_crypto_provider();

    let kube = accessgrant_sim::kube::serve(accessgrant_sim::kube::SimConfig {
        crds_dir: Some(PathBuf::from("crds")),
        kubeconfig: Some(kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .context("starting kube-sim (run from the repository root)")?;
    println!("kube-sim listening on {}", kube.base_url());
    let mut world = accessgrant_sim::azure::World::from_file(&args.world)
        .with_context(|| format!("loading {}", args.world.display()))?;
    world.settings.deactivation_floor = args.deactivation_floor.clone();
    let mut azure_cfg = accessgrant_sim::azure::SimConfig::new(world);
    // Entra verifies federated ServiceAccount tokens through the cluster's OIDC discovery.
    azure_cfg.oidc_discovery = vec![(
        "https://kubernetes.default.svc.cluster.local".into(),
        kube.base_url(),
    )];
    let azure = accessgrant_sim::azure::serve(azure_cfg)
        .await
        .context("starting azure-sim")?;
    println!("azure-sim listening on {}", azure.base_url());
    let ca = args.dir.join("azure-sim-ca.pem");
    std::fs::write(&ca, azure.ca_pem())?;

    let log = std::fs::File::create(args.dir.join("operator.log"))?;
    let audit = std::fs::File::create(args.dir.join("audit.jsonl"))?;
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
    let binary = target.join("debug").join("accessgrant-operator");
    println!(
        "starting accessgrant-operator (logs: {}, audit: {})",
        args.dir.join("operator.log").display(),
        args.dir.join("audit.jsonl").display()
    );
    let client = kube.client().await?;
    let webhook_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    register_webhooks(&client, webhook_addr).await?;
    let mut operator = tokio::process::Command::new(&binary)
        .arg("run")
        .env("WEBHOOK_ADDR", webhook_addr.to_string())
        .env("KUBECONFIG", &kubeconfig)
        .env("ARM_ENDPOINT", azure.base_url())
        .env("AZURE_AUTHORITY_HOST", azure.base_url())
        .env("AZURE_CA_FILE", &ca)
        .env("AZURE_TENANT_ID", "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e")
        .env("AZURE_CLIENT_ID", "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea1")
        .env("AZURE_CLIENT_SECRET", "sandbox-operator-secret")
        .env("PIM_DEACTIVATION_FLOOR", &args.deactivation_floor)
        .env("JIT_EARLY_CLOSE", "PT1M")
        .stdin(Stdio::null())
        .stdout(audit)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;

    // The examples are applied by an on-call engineer (impersonated): the webhook stamps them
    // and REQUESTED-BY shows who asked.
    let mut as_alice = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    as_alice.auth_info.impersonate = Some("alice@example.com".into());
    as_alice.auth_info.impersonate_groups = Some(vec!["oncall".into(), "team-a".into()]);
    let alice = kube::Client::try_from(as_alice)?;
    let applied = apply_examples(&alice, &args.examples).await?;
    println!("applied {applied} objects from {}", args.examples.display());
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
    let grants: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut seen: HashMap<String, String> = HashMap::new();
    let stream = watcher(grants, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let deadline = async {
        match exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            status = operator.wait() => {
                bail!("the operator exited ({status:?}); see {}", args.dir.join("operator.log").display());
            }
            next = stream.next() => match next {
                Some(Ok(o)) => {
                    let (key, phase_reason, line) = row(&o);
                    if seen.get(&key) != Some(&phase_reason) {
                        seen.insert(key, phase_reason);
                        println!("{line}");
                    }
                }
                Some(Err(e)) => eprintln!("watch: {e}"),
                None => break,
            }
        }
    }
    println!("stopping");
    let _ = operator.start_kill();
    let _ = operator.wait().await;
    azure.shutdown().await;
    kube.shutdown().await;
    Ok(())
}
