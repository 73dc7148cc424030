//! Shared helpers for the azure-sim tests: start a sim in-process over HTTPS, get tokens, call
//! ARM and the control API with a client that trusts only the sim's CA.
#![allow(dead_code)]

use std::time::Duration;

use accessgrant_sim::azure::{RunningSim, SimConfig, World, install_crypto_provider, serve};
use serde_json::{Value, json};

pub const TENANT: &str = "3c0a2b4e-7d1f-4c6a-9e8b-1f2a3b4c5d6e";
pub const SUB: &str = "5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
pub const RG_SCOPE: &str =
    "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/resourceGroups/rg-sandbox";
pub const OPERATOR_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01";
pub const OPERATOR_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea1";
pub const OPERATOR_SECRET: &str = "sandbox-operator-secret";
pub const DEPLOYER_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e02";
pub const DEPLOYER_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea2";
pub const ALICE_OID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e03";
pub const ALICE_APP: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4ea3";
pub const ALICE_SECRET: &str = "sandbox-alice-secret";
pub const EXAMPLE_USER_APP: &str = "a3bb8764-0000-4000-8000-0000000000c1";
pub const EXAMPLE_USER_SECRET: &str = "example-user-secret";

pub const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
pub const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
pub const TICKET_ROLE: &str = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
pub const MAX1H_ROLE: &str = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1";
pub const APPROVAL_ROLE: &str = "4633458b-17de-408a-b874-0445c86b69e6";
pub const JUSTIFY_ROLE: &str = "73c42c96-874c-492b-b04d-ab87d138a893";
pub const MFA_ROLE: &str = "de139f84-1756-47ae-9be6-808fbbe84772";

pub const VM1: &str = "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/resourceGroups/rg-sandbox/providers/Microsoft.Compute/virtualMachines/vm-sandbox-1";
pub const JIT_POLICY: &str = "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/resourceGroups/rg-sandbox/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default";

pub fn world_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("worlds/sandbox.yaml")
}

/// The sandbox world as YAML, for tests that tweak it before starting a sim.
pub fn sandbox_yaml() -> serde_norway::Value {
    let s = std::fs::read_to_string(world_path()).expect("sandbox world readable");
    serde_norway::from_str(&s).expect("sandbox world parses")
}

pub fn role_id(guid: &str) -> String {
    format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}")
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}

pub struct Sim {
    pub sim: RunningSim,
    pub http: reqwest::Client,
    pub base: String,
}

impl Sim {
    pub async fn start() -> Sim {
        Self::start_with(|_| {}).await
    }

    /// Starts a sim on the sandbox world after `tweak` edits it.
    pub async fn start_with(tweak: impl FnOnce(&mut serde_norway::Value)) -> Sim {
        let mut y = sandbox_yaml();
        tweak(&mut y);
        let world =
            World::from_yaml_str(&serde_norway::to_string(&y).expect("yaml")).expect("world valid");
        Self::start_config(SimConfig::new(world)).await
    }

    pub async fn start_config(config: SimConfig) -> Sim {
        install_crypto_provider();
        let sim = serve(config).await.expect("sim starts");
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("ca pem");
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        let base = sim.base_url();
        Sim { sim, http, base }
    }

    pub async fn token_raw(&self, form: &[(&str, &str)]) -> Resp {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let r = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request sent");
        to_resp(r).await
    }

    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let r = self
            .token_raw(&[
                ("client_id", client_id),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
                ("scope", "https://management.azure.com/.default"),
            ])
            .await;
        assert_eq!(r.status, 200, "token: {}", r.body);
        r.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub async fn operator(&self) -> String {
        self.token(OPERATOR_APP, OPERATOR_SECRET).await
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let url = if path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut rb = self.http.request(m, url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        to_resp(rb.send().await.expect("request sent")).await
    }

    pub async fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        self.call(method, path, None, body).await
    }

    /// PUT a role assignment schedule request at `scope` with a fresh name.
    pub async fn pim_put(&self, token: &str, scope: &str, props: Value) -> (String, Resp) {
        let name = uuid::Uuid::new_v4().to_string();
        let r = self.pim_put_named(token, scope, &name, props).await;
        (name, r)
    }

    pub async fn pim_put_named(&self, token: &str, scope: &str, name: &str, props: Value) -> Resp {
        self.call(
            "PUT",
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}?api-version=2020-10-01"),
            Some(token),
            Some(&json!({ "properties": props })),
        )
        .await
    }

    pub async fn pim_get(&self, token: &str, scope: &str, coll: &str, query: &str) -> Resp {
        self.call(
            "GET",
            &format!(
                "{scope}/providers/Microsoft.Authorization/{coll}?api-version=2020-10-01{query}"
            ),
            Some(token),
            None,
        )
        .await
    }

    pub async fn jit_initiate(&self, token: &str, body: Value) -> Resp {
        self.call(
            "POST",
            &format!("{JIT_POLICY}/initiate?api-version=2020-01-01"),
            Some(token),
            Some(&body),
        )
        .await
    }

    pub async fn jit_get(&self, token: &str) -> Resp {
        self.call(
            "GET",
            &format!("{JIT_POLICY}?api-version=2020-01-01"),
            Some(token),
            None,
        )
        .await
    }
}

pub async fn to_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// A SelfActivate body for `role` at the sandbox RG.
pub fn activate(principal: &str, role: &str, duration: &str) -> Value {
    json!({
        "principalId": principal,
        "roleDefinitionId": role_id(role),
        "requestType": "SelfActivate",
        "scheduleInfo": {"expiration": {"type": "AfterDuration", "duration": duration}},
        "justification": "test",
    })
}

pub fn filter(f: &str) -> String {
    format!(
        "&$filter={}",
        form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()
    )
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets a YAML mapping path (creating intermediate mappings).
pub fn set_yaml(root: &mut serde_norway::Value, path: &[&str], v: serde_norway::Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        let key = serde_norway::Value::String(k.to_string());
        if i == path.len() - 1 {
            if let serde_norway::Value::Mapping(m) = cur {
                m.insert(key, v);
            }
            return;
        }
        if let serde_norway::Value::Mapping(m) = cur {
            cur = m
                .entry(key)
                .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
        } else {
            return;
        }
    }
}
