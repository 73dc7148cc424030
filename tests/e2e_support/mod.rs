//! End-to-end harness: kube-sim and azure-sim on loopback, the real `accessgrant-operator`
//! binary as a child process, and helpers that wait on conditions with a deadline.
#![allow(dead_code)]

pub mod audit;
pub mod soak;
pub mod storm;

use accessgrant_operator::api::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The sandbox world's operator identity and namespace (shared by every launcher).
#[allow(unused_imports)] // not every binary that includes these helpers uses each of them
pub use accessgrant_sim::harness::{
    OPERATOR_APP, OPERATOR_NAMESPACE, OPERATOR_OID, OPERATOR_SECRET, OPERATOR_SERVICE_ACCOUNT,
    TENANT, metric,
};
pub const SUB: &str = "5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const TICKET_ROLE: &str = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
pub const SHORT_ROLE: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
pub const APPROVAL_ROLE: &str = "4633458b-17de-408a-b874-0445c86b69e6";
pub const JUSTIFICATION_ROLE: &str = "73c42c96-874c-492b-b04d-ab87d138a893";
pub const MFA_ROLE: &str = "de139f84-1756-47ae-9be6-808fbbe84772";
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const DEPLOYER_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e02";
pub const DEPLOYER_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea2";

/// The operator binary under test: `ACCESSGRANT_OPERATOR_BIN` when set (e.g. a copy pinned
/// while another worktree shares the target directory and re-links its own build at the same
/// path), else the one Cargo built for this test.
pub fn operator_bin() -> PathBuf {
    std::env::var_os("ACCESSGRANT_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_accessgrant-operator")))
}

pub fn rg() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-sandbox")
}
pub fn role(guid: &str) -> String {
    format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}
pub fn vm(n: u8) -> String {
    format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm-sandbox-{n}",
        rg()
    )
}

pub struct Env {
    pub kube: accessgrant_sim::kube::RunningSim,
    pub azure: accessgrant_sim::azure::RunningSim,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    operator: Option<Child>,
    replicas: Vec<(String, Child)>,
    admin_addr: Option<std::net::SocketAddr>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- operator output ----\n{}", self.operator_output());
        }
        if let Some(mut c) = self.operator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut c) in self.replicas.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Env {
    /// Starts both sims (the sandbox world with a short PIM deactivation floor) and the operator.
    pub async fn start() -> Env {
        let mut env = Env::start_bare().await;
        env.start_operator();
        env
    }

    /// Both simulators, no operator.
    pub async fn start_bare() -> Env {
        Env::start_bare_with(|_| {}).await
    }

    /// Both simulators, no operator; `tweak` changes the azure-sim world (the sandbox world with
    /// a PT5S deactivation floor) before azure-sim starts.
    pub async fn start_bare_with(tweak: impl FnOnce(&mut accessgrant_sim::azure::World)) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut world =
            accessgrant_sim::azure::World::from_file(&root.join("sim/worlds/sandbox.yaml"))
                .expect("world");
        world.settings.deactivation_floor = "PT5S".into();
        tweak(&mut world);
        let sims = accessgrant_sim::harness::Sims::start(accessgrant_sim::harness::SimsSetup {
            dir: dir.path().to_path_buf(),
            kube: accessgrant_sim::kube::SimConfig {
                crds_dir: Some(root.join("crds")),
                bookmark_interval: Duration::from_secs(2),
                ..Default::default()
            },
            world,
            // The operator runs as its ServiceAccount, bound by the very RBAC objects the chart
            // renders (the kustomize base holds them; tests/packaging.rs shows the two equal).
            operator_identity: Some(86400),
            // The chart's roles for people (accessgrant-viewer/-requester/-admin), as the
            // kustomize base ships them (client_as binds its user to accessgrant-requester),
            // and the operator's own.
            manifests: vec![
                root.join("deploy/rbac-users.yaml"),
                root.join("deploy/rbac.yaml"),
            ],
        })
        .await
        .expect("simulators");
        let client = sims.kube.client().await.expect("kube client");
        Env {
            kube: sims.kube,
            azure: sims.azure,
            client,
            dir,
            operator: None,
            replicas: vec![],
            admin_addr: None,
        }
    }

    pub fn start_operator(&mut self) {
        self.start_operator_with(&[]);
    }

    /// Registers the operator's webhooks (Mutating and Validating, failurePolicy Fail) at
    /// `https://{addr}`, without a CA bundle: the operator patches it in.
    pub async fn register_webhooks(&self, addr: std::net::SocketAddr) {
        use k8s_openapi::api::admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
        };
        let hook = |path: &str, name: &str| {
            // As deploy/webhook.yaml: the validating webhook also sees status writes.
            let resources = if path == "validate" {
                serde_json::json!(["accessgrants", "accessgrants/status"])
            } else {
                serde_json::json!(["accessgrants"])
            };
            serde_json::json!({
                "name": name,
                "clientConfig": {"url": format!("https://{addr}/{path}")},
                "rules": [{"apiGroups": ["accessgrant.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": resources, "scope": "Namespaced"}],
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10
            })
        };
        let m: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "accessgrant-operator"},
            "webhooks": [hook("mutate", "stamp.accessgrant.io")]
        }))
        .expect("mutating");
        let v: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "accessgrant-operator"},
            "webhooks": [hook("validate", "guard.accessgrant.io")]
        }))
        .expect("validating");
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &m)
            .await
            .expect("create mutating webhook configuration");
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .create(&PostParams::default(), &v)
            .await
            .expect("create validating webhook configuration");
    }

    /// A client acting as another user (impersonation, as `kubectl --as --as-group`), bound
    /// cluster-wide to the chart's `accessgrant-requester` role.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        self.bind(user, "accessgrant-requester").await;
        self.client_as_unbound(user, groups).await
    }

    /// Binds `user` to the ClusterRole `role` cluster-wide.
    pub async fn bind(&self, user: &str, role: &str) {
        self.kube
            .bind_cluster_role(user, role, "e2e")
            .await
            .expect("bind user");
    }

    /// A client acting as another user, with only the rights bound to it so far.
    pub async fn client_as_unbound(&self, user: &str, groups: &[&str]) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        let mut cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        cfg.auth_info.impersonate = Some(user.to_string());
        cfg.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        kube::Client::try_from(cfg).expect("client")
    }

    /// Starts a named replica with extra environment (e.g. leader election).
    pub fn start_replica(&mut self, name: &str, extra: &[(&str, &str)]) {
        let (child, _) = self.spawn_operator(extra);
        self.replicas.push((name.to_string(), child));
    }

    /// SIGKILL a named replica.
    pub fn kill_replica(&mut self, name: &str) {
        if let Some(i) = self.replicas.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.replicas.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn_operator(&self, extra: &[(&str, &str)]) -> (Child, std::net::SocketAddr) {
        // A free port for the admin server, known before the operator starts.
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        // Written by Sims::start.
        let ca = self.dir.path().join("azure-sim-ca.pem");
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let stdout = std::fs::File::create(self.dir.path().join(format!("operator-{n}.out")))
            .expect("stdout file");
        let stderr = std::fs::File::create(self.dir.path().join(format!("operator-{n}.err")))
            .expect("stderr file");
        let kubeconfig = self.dir.path().join("operator-kubeconfig");
        let azure_url = self.azure.base_url();
        let mut cmd = accessgrant_sim::harness::operator_command(
            &operator_bin(),
            &accessgrant_sim::harness::OperatorSetup {
                kubeconfig: &kubeconfig,
                azure_url: &azure_url,
                azure_ca: &ca,
                client_secret: OPERATOR_SECRET,
                admin,
                // The admission webhook on a free port (tests that register it pass their own).
                webhook: "127.0.0.1:0",
                namespace: OPERATOR_NAMESPACE,
            },
        );
        cmd.env("PIM_DEACTIVATION_FLOOR", "PT5S")
            .env("JIT_EARLY_CLOSE", "PT3S")
            .env("DRIFT_CHECK_INTERVAL", "PT2S")
            .env("ADMIN_ADDR", admin.to_string())
            .env("RUST_LOG", "info");
        // Extra variables last: they may override the defaults above.
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the operator");
        (child, admin)
    }

    /// SIGTERM the operator and wait (with a deadline) for it to exit; returns its exit status.
    /// (Async: the simulators run on the test's runtime and must keep serving meanwhile.)
    pub async fn terminate_operator(
        &mut self,
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut c = self.operator.take()?;
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let waited =
            tokio::time::timeout(deadline, tokio::task::spawn_blocking(move || c.wait())).await;
        match waited {
            Ok(Ok(Ok(status))) => Some(status),
            _ => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                None
            }
        }
    }

    /// SIGKILL the operator (crash).
    pub fn kill_operator(&mut self) {
        if let Some(mut c) = self.operator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn operator_output(&self) -> String {
        let mut s = String::new();
        if let Ok(d) = std::fs::read_dir(self.dir.path()) {
            let mut files: Vec<_> = d
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "out" || x == "err"))
                .collect();
            files.sort();
            for f in files {
                s.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        s
    }

    /// A namespace with labels and an AccessPolicy that selects it and allows the sandbox.
    pub async fn namespace(&self, name: &str, with_policy: bool) -> Api<AccessGrant> {
        let ns: Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {"team": name}}}),
        )
        .expect("ns");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        if with_policy {
            let roles: Vec<String> = [
                READER,
                TICKET_ROLE,
                SHORT_ROLE,
                APPROVAL_ROLE,
                JUSTIFICATION_ROLE,
                MFA_ROLE,
                OWNER,
            ]
            .map(role)
            .to_vec();
            let p: AccessPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessPolicy",
                "metadata": {"name": format!("allow-{name}")},
                "spec": {
                    "namespaceSelector": {"matchLabels": {"team": name}},
                    "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22, 3389, 8080], "sourcePrefixes": ["10.0.0.0/8", "192.168.0.0/16"]},
                    "pim": {"scopes": [format!("/subscriptions/{SUB}")], "roleDefinitionIds": roles, "principals": [OPERATOR_OID, DEPLOYER_OID], "modes": ["Activate", "Assign"]},
                    "maxDuration": "PT8H",
                    "renewal": {"maxTotalDuration": "P1D"}
                }
            }))
            .expect("policy");
            Api::<AccessPolicy>::all(self.client.clone())
                .create(&PostParams::default(), &p)
                .await
                .expect("create policy");
        }
        Api::namespaced(self.client.clone(), name)
    }

    pub async fn calls(&self) -> Vec<Value> {
        let c = accessgrant_operator::azure::client::http_client(
            Some(self.azure.ca_pem().as_bytes()),
            Duration::from_secs(10),
        )
        .expect("client");
        c.get(format!("{}/_sim/calls", self.azure.base_url()))
            .send()
            .await
            .expect("calls")
            .json()
            .await
            .expect("json")
    }

    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let c = accessgrant_operator::azure::client::http_client(
            Some(self.azure.ca_pem().as_bytes()),
            Duration::from_secs(10),
        )
        .expect("client");
        let mut r = c.request(method, format!("{}{path}", self.azure.base_url()));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("control call")
    }
}

pub fn pim_grant(name: &str, mode: &str, role_guid: &str, duration: &str) -> AccessGrant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
        "metadata": {"name": name},
        "spec": {"justification": "e2e", "duration": duration, "pim": {"mode": mode, "scope": rg(), "roleDefinitionId": role(role_guid), "principalId": OPERATOR_OID}}
    }))
    .expect("grant")
}

pub fn with_spec(mut g: AccessGrant, f: impl FnOnce(&mut AccessGrantSpec)) -> AccessGrant {
    f(&mut g.spec);
    g
}

/// Azure writes (by operationId) in the sim's call log.
pub fn count(calls: &[Value], operation: &str) -> usize {
    calls
        .iter()
        .filter(|c| c["operation"] == operation && c["status"].as_u64().is_some_and(|s| s < 300))
        .count()
}

pub fn jit_grant(name: &str, vm_n: u8, port: i32, prefix: &str, duration: &str) -> AccessGrant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
        "metadata": {"name": name},
        "spec": {"justification": "e2e", "duration": duration, "jit": {"subscriptionId": SUB, "resourceGroup": "rg-sandbox", "location": "westeurope", "policyName": "default",
            "virtualMachines": [{"id": vm(vm_n), "ports": [{"number": port, "allowedSourceAddressPrefix": prefix}]}]}}
    }))
    .expect("grant")
}

/// Waits (watching, with a deadline) until the grant's status satisfies `f`.
pub async fn wait_for(
    api: &Api<AccessGrant>,
    name: &str,
    what: &str,
    secs: u64,
    f: impl Fn(&AccessGrantStatus) -> bool,
) -> AccessGrant {
    let cond = move |g: Option<&AccessGrant>| g.and_then(|g| g.status.as_ref()).is_some_and(&f);
    match tokio::time::timeout(
        Duration::from_secs(secs),
        await_condition(api.clone(), name, cond),
    )
    .await
    {
        Ok(Ok(Some(g))) => g,
        other => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!(
                "timed out after {secs}s waiting for {name} to be {what}: {other:?}\nnow: {:?}",
                now.and_then(|g| g.status)
            );
        }
    }
}

/// Waits until the grant is gone.
pub async fn wait_gone(api: &Api<AccessGrant>, name: &str, secs: u64) {
    let r = tokio::time::timeout(
        Duration::from_secs(secs),
        await_condition(api.clone(), name, |g: Option<&AccessGrant>| g.is_none()),
    )
    .await;
    if !matches!(r, Ok(Ok(_))) {
        let now = api.get_opt(name).await.ok().flatten();
        panic!(
            "{name} still there after {secs}s: {:?}",
            now.map(|g| (g.metadata.finalizers, g.status))
        );
    }
}

pub fn phase(p: Phase) -> impl Fn(&AccessGrantStatus) -> bool {
    move |s| s.phase == p
}

/// Waits until the grant awaits a PIM approver, then approves or denies its request in azure-sim.
pub async fn decide_pending(env: &Env, api: &Api<AccessGrant>, grant: &str, approve: bool) {
    let g = wait_for(
        api,
        grant,
        "PendingApproval",
        60,
        phase(Phase::PendingApproval),
    )
    .await;
    let name = g
        .status
        .and_then(|s| s.pim)
        .and_then(|p| p.request_name)
        .expect("request name");
    let verb = if approve { "approve" } else { "deny" };
    let r = env
        .control(
            reqwest::Method::POST,
            &format!("/_sim/pim/requests/{name}/{verb}"),
            None,
        )
        .await;
    assert!(r.status().is_success(), "{verb} {name}: {}", r.status());
}

impl Env {
    /// The operator's admin server address.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.admin_addr.expect("an operator was started")
        )
    }

    /// GET on the admin server.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let c = accessgrant_operator::azure::client::http_client(None, Duration::from_secs(10))
            .expect("client");
        let r = c
            .get(format!("{}{path}", self.admin_url()))
            .send()
            .await
            .expect("admin call");
        (r.status().as_u16(), r.text().await.expect("body"))
    }
}

impl Env {
    /// Waits until the admission webhook answers: a dry-run create by `user` (in `groups`) of
    /// a JIT grant in `ns` passes admission (the namespace needs a policy that allows it).
    pub async fn webhook_serving(&self, ns: &str, user: &str, groups: &[&str]) {
        let api: Api<AccessGrant> = Api::namespaced(self.client_as(user, groups).await, ns);
        let probe = jit_grant("probe", 1, 22, "10.0.0.9", "PT1H");
        crate::wait::eventually(
            "the webhook to answer",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let api = api.clone();
                let probe = probe.clone();
                async move {
                    let pp = kube::api::PostParams {
                        dry_run: true,
                        ..Default::default()
                    };
                    api.create(&pp, &probe)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
    }
}

// ----- Crash-injection and storm helpers (tests/crash.rs, benches/crash_soak.rs) -----

impl Env {
    /// Starts the operator with extra environment (e.g. `ACCESSGRANT_CRASH_AT`), applied after
    /// (and so overriding) the defaults.
    pub fn start_operator_with(&mut self, extra: &[(&str, &str)]) {
        let (child, admin) = self.spawn_operator(extra);
        self.operator = Some(child);
        self.admin_addr = Some(admin);
    }

    /// Whether an operator was started and has not exited.
    pub fn operator_running(&mut self) -> bool {
        self.operator
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (up to `deadline`) for the operator to exit on its own, e.g. at a crash point.
    /// Returns its exit status; None when it was still running at the deadline (it is then
    /// killed) or no operator was started.
    pub async fn wait_operator_exit(
        &mut self,
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        // The child stays in `self` while waiting (polled, not moved into a blocking wait), so
        // dropping the Env, e.g. when a test fails meanwhile, still kills it.
        let until = std::time::Instant::now() + deadline;
        loop {
            let c = self.operator.as_mut()?;
            match c.try_wait() {
                Ok(Some(status)) => {
                    self.operator = None;
                    return Some(status);
                }
                Ok(None) if std::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    self.kill_operator();
                    return None;
                }
            }
        }
    }

    /// The stderr of the most recently started operator process.
    pub fn last_operator_stderr(&self) -> String {
        let latest = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n: u64 = name
                    .strip_prefix("operator-")?
                    .strip_suffix(".err")?
                    .parse()
                    .ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n);
        latest
            .and_then(|(_, p)| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// azure-sim's state (`GET /_sim/state`), typed.
    pub async fn state(&self) -> accessgrant_sim::azure::view::SimState {
        self.control(reqwest::Method::GET, "/_sim/state", None)
            .await
            .json()
            .await
            .expect("state json")
    }

    /// A labelled namespace and an AccessPolicy with the given `spec` that selects it.
    pub async fn namespace_with_policy(&self, name: &str, spec: Value) -> Api<AccessGrant> {
        let ns: Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {"team": name}}}),
        )
        .expect("ns");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let mut spec = spec;
        spec["namespaceSelector"] = serde_json::json!({"matchLabels": {"team": name}});
        let p: AccessPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": format!("allow-{name}")},
            "spec": spec,
        }))
        .expect("policy");
        Api::<AccessPolicy>::all(self.client.clone())
            .create(&PostParams::default(), &p)
            .await
            .expect("create policy");
        Api::namespaced(self.client.clone(), name)
    }

    /// An ARM call to azure-sim as the operator's service principal (client secret), e.g. to
    /// put a request into Azure behind the operator's back. Returns (status, JSON body or Null).
    pub async fn arm_as_operator(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let c = accessgrant_operator::azure::client::http_client(
            Some(self.azure.ca_pem().as_bytes()),
            Duration::from_secs(10),
        )
        .expect("client");
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("client_id", OPERATOR_APP),
                ("client_secret", OPERATOR_SECRET),
                ("grant_type", "client_credentials"),
                ("scope", "https://management.azure.com/.default"),
            ])
            .finish();
        let token: Value = c
            .post(format!(
                "{}/{TENANT}/oauth2/v2.0/token",
                self.azure.base_url()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token json");
        let token = token["access_token"].as_str().expect("access_token");
        let mut r = c
            .request(method, format!("{}{path_and_query}", self.azure.base_url()))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("ARM call");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A cloneable handle on azure-sim's control API, for tasks that run while the Env itself is
/// borrowed mutably (e.g. by a task that kills and restarts the operator).
#[derive(Clone)]
pub struct AzureSimHandle {
    base: String,
    ca: String,
}

impl AzureSimHandle {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let c = accessgrant_operator::azure::client::http_client(
            Some(self.ca.as_bytes()),
            Duration::from_secs(10),
        )
        .expect("client");
        c.get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("azure-sim control call")
            .json()
            .await
            .expect("json")
    }

    /// `GET /_sim/state`, typed.
    pub async fn state(&self) -> accessgrant_sim::azure::view::SimState {
        self.get("/_sim/state").await
    }

    /// `GET /_sim/calls`.
    pub async fn calls(&self) -> Vec<Value> {
        self.get("/_sim/calls").await
    }
}

impl Env {
    /// A cloneable handle on azure-sim's control API.
    pub fn azure_handle(&self) -> AzureSimHandle {
        AzureSimHandle {
            base: self.azure.base_url(),
            ca: self.azure.ca_pem().to_string(),
        }
    }
}

/// The real kubectl (installed by `sim/tests/fixtures/kube/ensure-kubectl.sh` when missing).
pub fn kubectl_bin() -> String {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("sim/tests/fixtures/kube/ensure-kubectl.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "ensure-kubectl.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    /// Runs the real kubectl against kube-sim, as `user` (impersonated, `--as`/`--as-group`)
    /// or as the admin (`None`); `stdin` is piped in (e.g. a manifest for `apply -f -`).
    pub async fn kubectl(
        &self,
        user: Option<(&str, &[&str])>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Kubectl {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"));
        if let Some((u, groups)) = user {
            cmd.arg(format!("--as={u}"));
            for g in groups {
                cmd.arg(format!("--as-group={g}"));
            }
        }
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(mut pipe) = child.stdin.take() {
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes())
                    .await
                    .expect("kubectl stdin");
            }
            drop(pipe);
        }
        let out = child.wait_with_output().await.expect("kubectl output");
        Kubectl {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
