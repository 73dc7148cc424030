//! kube-sim: an HTTP server speaking the subset of the Kubernetes API that accessgrant-operator
//! and kubectl use. See sim/README.md (section kube-sim) for what is implemented and where it
//! knowingly differs from kube-apiserver.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use accessgrant_sim::kube::{SimConfig, serve};
//! let sim = serve(SimConfig { crds_dir: Some("crds".into()), ..SimConfig::default() }).await?;
//! let client = sim.client().await?;
//! # drop(client);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod admission;
mod auth;
mod clock;
mod discovery;
mod error;
mod managed;
mod openapi_v2;
mod patch;
mod protobuf;
mod rbac;
mod registry;
mod schema;
mod server;
mod store;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use auth::UserInfo;

/// How to run kube-sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// A folder of CRD YAML/JSON files (multi-document YAML allowed) loaded at start.
    pub crds_dir: Option<PathBuf>,
    /// Where to write a kubeconfig for kubectl and kube clients.
    pub kubeconfig: Option<PathBuf>,
    /// Bearer token of the admin user written to the kubeconfig
    /// (user `kube-sim-admin`, groups `system:masters`, `system:authenticated`).
    pub admin_token: String,
    /// Extra bearer tokens and the users they authenticate as.
    pub tokens: Vec<(String, UserInfo)>,
    /// Requests without credentials act as `system:anonymous` (true) or get 401 (false).
    pub allow_anonymous: bool,
    /// ServiceAccount token issuer (`iss`), also the default token audience.
    pub issuer: String,
    /// Watch event history kept (events); watches from older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// PKCS#8 PEM RSA key signing ServiceAccount tokens (a built-in test key if None).
    pub signing_key_pem: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            crds_dir: None,
            kubeconfig: None,
            admin_token: format!("kube-sim-admin-{}", uuid::Uuid::new_v4().simple()),
            tokens: vec![],
            allow_anonymous: true,
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            signing_key_pem: None,
        }
    }
}

/// Parses `TOKEN=USER[:GROUP1,GROUP2]`.
pub fn parse_token_spec(spec: &str) -> anyhow::Result<(String, UserInfo)> {
    let (token, rest) = spec
        .split_once('=')
        .context("token spec must look like TOKEN=USER[:GROUP1,GROUP2]")?;
    // Usernames such as `system:serviceaccount:NS:NAME` contain colons themselves.
    let user_parts = if rest.starts_with("system:serviceaccount:") {
        4
    } else if rest.starts_with("system:") {
        2
    } else {
        1
    };
    let parts: Vec<&str> = rest.splitn(user_parts + 1, ':').collect();
    let user = parts[..parts.len().min(user_parts)].join(":");
    let groups = if parts.len() > user_parts {
        parts[user_parts]
    } else {
        ""
    };
    let user = user.as_str();
    anyhow::ensure!(
        !token.is_empty() && !user.is_empty(),
        "empty token or user in {spec}"
    );
    let groups: Vec<&str> = groups.split(',').filter(|g| !g.is_empty()).collect();
    Ok((token.to_string(), UserInfo::new(user, &groups)))
}

/// A running kube-sim; stops when dropped or on [`RunningSim::shutdown`].
pub struct RunningSim {
    addr: SocketAddr,
    admin_token: String,
    kubeconfig_path: Option<PathBuf>,
    sim: Arc<server::Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSim {
    /// Binds user `user` to ClusterRole `role` cluster-wide (ClusterRoleBinding `ROLE:USER`,
    /// server-side applied as `manager`, so binding twice is harmless).
    pub async fn bind_cluster_role(
        &self,
        user: &str,
        role: &str,
        manager: &str,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        use kube::api::{Api, Patch, PatchParams};
        let name = format!("{role}:{user}");
        let b: ClusterRoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))?;
        Api::<ClusterRoleBinding>::all(self.client().await?)
            .patch(
                &name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&b),
            )
            .await
            .with_context(|| format!("binding {user} to {role}"))?;
        Ok(())
    }
    /// Creates namespace `ns` (when absent) and ServiceAccount `ns/name`, asks for its token
    /// (TokenRequest, as a pod's projected token; `expiration_secs` >= 600) and writes a
    /// kubeconfig with that token to `path`: a client that is the ServiceAccount, with its
    /// RBAC rights only.
    pub async fn service_account_kubeconfig(
        &self,
        ns: &str,
        name: &str,
        expiration_secs: u64,
        path: &Path,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        use kube::api::{Api, PostParams};
        let client = self.client().await?;
        let pp = PostParams::default();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces.get_opt(ns).await?.is_none() {
            namespaces
                .create(
                    &pp,
                    &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
                )
                .await
                .with_context(|| format!("creating namespace {ns}"))?;
        }
        let sas: Api<ServiceAccount> = Api::namespaced(client, ns);
        if sas.get_opt(name).await?.is_none() {
            sas.create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": name}}))?,
            )
            .await
            .with_context(|| format!("creating ServiceAccount {ns}/{name}"))?;
        }
        let tr: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": name}, "spec": {"expirationSeconds": expiration_secs}
        }))?;
        let issued: TokenRequest = sas
            .create_subresource("token", name, &pp, &tr)
            .await
            .with_context(|| format!("a token for {ns}/{name}"))?;
        let token = issued.status.map(|s| s.token).unwrap_or_default();
        let kc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kube-sim", "cluster": {"server": self.base_url()}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "kube-sim", "user": name, "namespace": ns}}],
            "current-context": name,
        });
        std::fs::write(path, serde_json::to_string(&kc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
    /// Resolves when the server stops on its own (its task ended); pending while it runs,
    /// and for ever once [`RunningSim::shutdown`] has taken the task.
    pub async fn stopped(&mut self) {
        crate::task_ended(&mut self.task).await
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }
    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.kubeconfig_path.as_deref()
    }
    /// The kubeconfig (admin user) as YAML.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.base_url(), &self.admin_token, true)
    }
    /// A kube client config for a bearer token (the admin's when None).
    pub async fn kube_config_for(&self, token: Option<&str>) -> anyhow::Result<kube::Config> {
        let yaml = kubeconfig_yaml(
            &self.base_url(),
            token.unwrap_or(&self.admin_token),
            token.is_none(),
        );
        let kc = kube::config::Kubeconfig::from_yaml(&yaml)?;
        Ok(
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?,
        )
    }
    pub async fn kube_config(&self) -> anyhow::Result<kube::Config> {
        self.kube_config_for(None).await
    }
    /// A kube client authenticated as the admin user.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.kube_config().await?)?)
    }
    /// Forgets the watch history, as an etcd compaction does: watches and continue tokens
    /// from earlier resourceVersions then get 410 Gone.
    pub fn compact(&self) {
        self.sim.lock().store.compact();
    }
    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.sim.lock().store.current_rv()
    }
    /// `METHOD PATH STATUS` of every request served so far.
    pub fn requests(&self) -> Vec<String> {
        self.sim
            .request_log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
    /// Server-side applies (field manager `manager`, forced) every object in the YAML/JSON
    /// files of `path` (a file or a folder, not recursive; multi-document YAML allowed), in
    /// file order, as `kubectl apply --server-side -f` would. CRDs are applied first so the
    /// kinds they define can follow in the same call. Returns `kind/name` of each object.
    pub async fn apply_manifests(&self, path: &Path, manager: &str) -> anyhow::Result<Vec<String>> {
        let mut files: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        files.sort();
        let mut docs: Vec<Value> = vec![];
        for f in &files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            for doc in serde_norway::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("parsing {}", f.display()))?;
                if v.is_object() {
                    docs.push(v);
                }
            }
        }
        docs.sort_by_key(|d| d["kind"].as_str() != Some("CustomResourceDefinition"));
        let client = self.client().await?;
        let mut applied = vec![];
        for doc in docs {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), api_version.clone()),
            };
            let def = self
                .sim
                .lock()
                .registry
                .defs
                .iter()
                .find(|d| d.group == group && d.version == version && d.kind == kind)
                .cloned()
                .with_context(|| format!("no resource serves {api_version} {kind}"))?;
            let ar = kube::api::ApiResource {
                group: def.group.clone(),
                version: def.version.clone(),
                api_version: def.api_version(),
                kind: def.kind.clone(),
                plural: def.plural.clone(),
            };
            let api: kube::Api<kube::api::DynamicObject> = if def.namespaced {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
                kube::Api::namespaced_with(client.clone(), ns, &ar)
            } else {
                kube::Api::all_with(client.clone(), &ar)
            };
            api.patch(
                &name,
                &kube::api::PatchParams::apply(manager).force(),
                &kube::api::Patch::Apply(&doc),
            )
            .await
            .with_context(|| format!("applying {kind}/{name}"))?;
            applied.push(format!("{kind}/{name}"));
        }
        Ok(applied)
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `impersonate_admin` adds `as: kube-sim-admin`: kubectl (client-go) never sends a bearer
/// token over plain HTTP, but it does send impersonation headers, so kubectl acts as the admin
/// too instead of `system:anonymous`.
fn kubeconfig_yaml(server: &str, token: &str, impersonate_admin: bool) -> String {
    let mut user = json!({"token": token});
    if impersonate_admin {
        // Bound to cluster-admin by name (ClusterRoleBinding kube-sim-admin); no groups, so
        // `kubectl --as someone` acts with someone's rights only.
        user["as"] = json!("kube-sim-admin");
    }
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-sim", "cluster": {"server": server}}],
        "users": [{"name": "kube-sim-admin", "user": user}],
        "contexts": [{"name": "kube-sim", "context": {"cluster": "kube-sim", "user": "kube-sim-admin", "namespace": "default"}}],
        "current-context": "kube-sim",
        "preferences": {},
    });
    serde_norway::to_string(&kc).unwrap_or_default()
}

/// Reads every CustomResourceDefinition document in `dir` (`*.yaml`, `*.yml`, `*.json`).
pub fn load_crds(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading CRD folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("parsing {}", f.display()))?;
            if v["kind"].as_str() == Some("CustomResourceDefinition") {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Starts kube-sim. Returns once it is listening.
pub async fn serve(config: SimConfig) -> anyhow::Result<RunningSim> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");
    let mut tokens: std::collections::HashMap<String, UserInfo> =
        config.tokens.iter().cloned().collect();
    tokens.insert(
        config.admin_token.clone(),
        UserInfo::new("kube-sim-admin", &["system:masters"]),
    );
    let signer = auth::Signer::new(config.signing_key_pem.as_deref(), &config.issuer)?;
    let mut inner = server::Inner {
        store: store::Store::new(config.watch_history),
        registry: registry::Registry::build(&[]),
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        server::seed(
            &mut inner,
            "",
            "v1",
            "namespaces",
            json!({"metadata": {"name": ns}}),
        )?;
    }
    for (plural, obj) in rbac::bootstrap(config.allow_anonymous) {
        server::seed(&mut inner, "rbac.authorization.k8s.io", "v1", plural, obj)?;
    }
    if let Some(dir) = &config.crds_dir {
        for crd in load_crds(dir)? {
            server::seed(
                &mut inner,
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                crd,
            )?;
        }
    }
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let sim = Arc::new(server::Sim {
        inner: Mutex::new(inner),
        auth: auth::Auth {
            tokens,
            allow_anonymous: config.allow_anonymous,
        },
        signer,
        issuer: config.issuer.clone(),
        base_url: base_url.clone(),
        bookmark_interval: config.bookmark_interval,
        request_log: Mutex::new(vec![]),
        closing: close_rx,
    });
    if let Some(path) = &config.kubeconfig {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, kubeconfig_yaml(&base_url, &config.admin_token, true))
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    let app = axum::Router::new()
        .fallback(server::handle)
        .with_state(sim.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
                // end open watches so their connections close
                let _ = close_tx.send(true);
            })
            .await;
        if let Err(e) = res {
            tracing::error!("kube-sim server error: {e}");
        }
    });
    Ok(RunningSim {
        addr,
        admin_token: config.admin_token,
        kubeconfig_path: config.kubeconfig,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}
