//! What every launcher of the operator shares (the sandbox, the e2e tests and the benches):
//! starting both simulators with their kubeconfigs, the sandbox world's operator identity, the
//! operator's command line against both simulators, waiting for readiness, reading its
//! metrics, and a typed view of azure-sim's state ([`crate::azure::view`]).

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Entra tenant of the sandbox world.
pub const TENANT: &str = "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e";
/// The operator's application (client) id in the sandbox world.
pub const OPERATOR_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea1";
/// The operator's service principal object id in the sandbox world.
pub const OPERATOR_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01";
/// The operator's client secret in the sandbox world (`sim/worlds/sandbox.yaml`).
pub const OPERATOR_SECRET: &str = "sandbox-operator-secret";
/// Namespace the operator runs in (its Lease, Secrets and ServiceAccount).
pub const OPERATOR_NAMESPACE: &str = "accessgrant-system";
/// The operator's ServiceAccount.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "accessgrant-operator";

/// What [`Sims::start`] starts.
pub struct SimsSetup {
    /// Where the kubeconfigs and azure-sim's CA are written.
    pub dir: PathBuf,
    /// kube-sim's settings (its `kubeconfig` is set to `{dir}/kubeconfig`).
    pub kube: crate::kube::SimConfig,
    /// The world azure-sim serves.
    pub world: crate::azure::World,
    /// `Some(seconds)`: the operator acts as its ServiceAccount
    /// (`OPERATOR_NAMESPACE/OPERATOR_SERVICE_ACCOUNT`, a token valid that long, written to
    /// `{dir}/operator-kubeconfig`), and Entra trusts kube-sim's OIDC discovery for federated
    /// tokens; `None`: the operator uses the admin kubeconfig.
    pub operator_identity: Option<u64>,
    /// Manifests applied (as `applied_by`) once the operator's identity exists: the chart's
    /// roles for people and for the operator.
    pub manifests: Vec<PathBuf>,
}

/// Both simulators running, with the files a kube client, kubectl and the operator need.
pub struct Sims {
    pub kube: crate::kube::RunningSim,
    pub azure: crate::azure::RunningSim,
    /// The admin kubeconfig (kubectl, tests).
    pub kubeconfig: PathBuf,
    /// The kubeconfig the operator uses.
    pub operator_kubeconfig: PathBuf,
    /// azure-sim's CA (PEM).
    pub azure_ca: PathBuf,
}

impl Sims {
    /// Starts both simulators on the current runtime.
    pub async fn start(setup: SimsSetup) -> anyhow::Result<Sims> {
        let here = tokio::runtime::Handle::current();
        Sims::start_on(&here, &here, setup).await
    }

    /// Starts kube-sim on `kube_rt` and azure-sim on `azure_rt` (a bench keeps them off its own
    /// runtime so that its measuring does not slow them down).
    pub async fn start_on(
        kube_rt: &tokio::runtime::Handle,
        azure_rt: &tokio::runtime::Handle,
        setup: SimsSetup,
    ) -> anyhow::Result<Sims> {
        crate::azure::install_crypto_provider();
        let SimsSetup {
            dir,
            kube: mut kube_cfg,
            world,
            operator_identity,
            manifests,
        } = setup;
        let kubeconfig = dir.join("kubeconfig");
        kube_cfg.kubeconfig = Some(kubeconfig.clone());
        let kube = kube_rt
            .spawn(crate::kube::serve(kube_cfg))
            .await?
            .context("starting kube-sim (run from the repository root)")?;
        let operator_kubeconfig = match operator_identity {
            Some(secs) => {
                let path = dir.join("operator-kubeconfig");
                kube.service_account_kubeconfig(
                    OPERATOR_NAMESPACE,
                    OPERATOR_SERVICE_ACCOUNT,
                    secs,
                    &path,
                )
                .await
                .context("the operator's ServiceAccount")?;
                path
            }
            None => kubeconfig.clone(),
        };
        for m in &manifests {
            kube.apply_manifests(m, "harness")
                .await
                .with_context(|| format!("applying {}", m.display()))?;
        }
        let mut azure_cfg = crate::azure::SimConfig::new(world);
        if operator_identity.is_some() {
            // Entra verifies federated ServiceAccount tokens with the cluster's OIDC discovery.
            azure_cfg.oidc_discovery = vec![(
                "https://kubernetes.default.svc.cluster.local".into(),
                kube.base_url(),
            )];
        }
        let azure = azure_rt
            .spawn(crate::azure::serve(azure_cfg))
            .await?
            .context("starting azure-sim")?;
        let azure_ca = dir.join("azure-sim-ca.pem");
        std::fs::write(&azure_ca, azure.ca_pem())
            .with_context(|| format!("writing {}", azure_ca.display()))?;
        Ok(Sims {
            kube,
            azure,
            kubeconfig,
            operator_kubeconfig,
            azure_ca,
        })
    }
}

/// Where the operator finds the simulators and its own endpoints.
#[derive(Clone, Debug)]
pub struct OperatorSetup<'a> {
    /// Kubeconfig for kube-sim.
    pub kubeconfig: &'a Path,
    /// azure-sim's base URL (ARM and the Entra authority).
    pub azure_url: &'a str,
    /// azure-sim's CA (PEM file).
    pub azure_ca: &'a Path,
    /// The operator's client secret in the world azure-sim serves.
    pub client_secret: &'a str,
    /// Admin server address (`/metrics`, `/readyz`).
    pub admin: SocketAddr,
    /// Webhook address (a free port, or `none`).
    pub webhook: &'a str,
    /// The operator's namespace (its Lease, stamp key and webhook Secrets), which must exist.
    pub namespace: &'a str,
}

/// `accessgrant-operator run` against both simulators (callers add their own settings after it,
/// which override these).
pub fn operator_command(binary: &Path, s: &OperatorSetup<'_>) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("run")
        .env("KUBECONFIG", s.kubeconfig)
        .env("POD_NAMESPACE", s.namespace)
        .env("ARM_ENDPOINT", s.azure_url)
        .env("AZURE_AUTHORITY_HOST", s.azure_url)
        .env("AZURE_CA_FILE", s.azure_ca)
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", OPERATOR_APP)
        .env("AZURE_CLIENT_SECRET", s.client_secret)
        .env("ADMIN_ADDR", s.admin.to_string())
        .env("WEBHOOK_ADDR", s.webhook)
        // Many operators share a machine in tests: the localhost log level port is a free one.
        .env("LOGLEVEL_ADDR", "127.0.0.1:0")
        .stdin(std::process::Stdio::null());
    cmd
}

/// GETs `http://{admin}{path}`: (status, body), or None when nothing answers.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    // Plain HTTP, but reqwest is built without a default TLS provider: give it ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let r = http
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Waits until the operator's `/readyz` answers 200; false after `limit`.
pub async fn wait_ready(admin: SocketAddr, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if matches!(admin_get(admin, "/readyz").await, Some((200, _))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The operator's `/metrics` text (empty when it does not answer).
pub async fn metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The value of the first sample of `family` whose labels include all of `labels`.
pub fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_finds_the_sample_with_the_labels() {
        let text = "# HELP x\nag_calls_total{op=\"a\",outcome=\"ok\"} 3\nag_calls_total{op=\"b\",outcome=\"ok\"} 5\nag_callsx 9\nag_up 1\n";
        assert_eq!(metric(text, "ag_calls_total", &[("op", "b")]), Some(5.0));
        assert_eq!(metric(text, "ag_calls_total", &[]), Some(3.0));
        assert_eq!(metric(text, "ag_up", &[]), Some(1.0));
        assert_eq!(
            metric(text, "ag_calls", &[]),
            None,
            "a prefix is not a family"
        );
        assert_eq!(metric(text, "ag_calls_total", &[("op", "c")]), None);
    }
}
