//! The ARM client: reqwest + azure_identity. Bearer tokens (cached by the credentials until near
//! expiry), one retry loop (azure_core's is switched off), jittered backoff honouring
//! Retry-After, a client-side token bucket per (subscription, principal, read|write|delete)
//! that follows ARM's `x-ms-ratelimit-remaining-*` headers and refuses to send into a bucket
//! Azure throttled until its Retry-After elapsed, and a concurrency limit. Tokens never reach a
//! log line or an error.

use super::auth::GrantAssertion;
pub use super::auth::{AssertionSource, AuthConfig};
use super::error::{AzureError, classify};
pub use super::http::{ArmClientError, http_client, parse, redact, subscription_of};
use super::http::{backoff, client_options, retry_after_secs};
use crate::api::GrantIdentity;
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    ClientAssertionCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use reqwest::Method;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

/// Default bound on ARM calls in flight (see `ArmConfig::max_in_flight`).
pub const DEFAULT_MAX_IN_FLIGHT: u16 = 1024;

/// How long calls wait for the first answer of a bucket that has none yet (its probe) before
/// they go by the model alone.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// The ARM token scope.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// Token bucket sizes per operation class (defaults: ARM's documented per-subscription limits).
#[derive(Clone, Copy, Debug)]
pub struct BucketSize {
    /// Burst.
    pub capacity: f64,
    /// Refill per second.
    pub refill_per_sec: f64,
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ArmConfig {
    /// ARM base URL.
    pub arm_endpoint: url::Url,
    /// Entra authority host (https).
    pub authority_host: url::Url,
    /// Extra trusted roots (PEM), e.g. azure-sim's CA.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Operator identity.
    pub auth: AuthConfig,
    /// ARM calls in flight at once, across all subscriptions: a memory bound only. What limits
    /// calls to one subscription is its token buckets (a call needs a token before it is sent),
    /// so a burst of grants at real latency is limited by ARM's budget and the latency floor.
    pub max_in_flight: usize,
    /// Attempts per call (first try included).
    pub max_attempts: u32,
    /// Longest wait the client does inline; longer waits go back to the caller as `Throttled`.
    pub max_inline_wait: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Read bucket.
    pub reads: BucketSize,
    /// Write bucket.
    pub writes: BucketSize,
    /// Delete bucket.
    pub deletes: BucketSize,
}

impl ArmConfig {
    /// Defaults for the given endpoints and identity.
    pub fn new(arm_endpoint: url::Url, authority_host: url::Url, auth: AuthConfig) -> Self {
        Self {
            arm_endpoint,
            authority_host,
            extra_ca_pem: None,
            auth,
            max_in_flight: usize::from(DEFAULT_MAX_IN_FLIGHT),
            max_attempts: 4,
            max_inline_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            reads: BucketSize {
                capacity: 250.0,
                refill_per_sec: 25.0,
            },
            writes: BucketSize {
                capacity: 200.0,
                refill_per_sec: 10.0,
            },
            deletes: BucketSize {
                capacity: 200.0,
                refill_per_sec: 10.0,
            },
        }
    }
}

/// Operation class for throttling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// GET.
    Read,
    /// PUT/POST/PATCH.
    Write,
    Delete,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    size: BucketSize,
    last: Instant,
    blocked_until: Option<Instant>,
    /// Calls that take access away, waiting for a token: they go first.
    removals_waiting: u32,
    /// Whether an answer from Azure has told how much of this budget is left. Until one has,
    /// a single call (the probe) goes first and its `x-ms-ratelimit-remaining-*` header seeds
    /// the bucket: a restarted operator cannot know how much its previous life spent, and one
    /// that believed its buckets full sent a burst into throttling.
    seeded: bool,
    /// When the probe was sent (None: no probe in flight).
    probe_since: Option<Instant>,
}

/// A call's token: when it was taken (a probe's answer is carried forward from then), and the
/// probe guard when the call is its bucket's first.
struct Ticket<'a> {
    probe: Option<Probe<'a>>,
    at: Instant,
}

/// The probe of an unseeded bucket: when it ends without an answer that seeded the bucket
/// (no answer, or no token sent), the next call probes instead.
struct Probe<'a> {
    client: &'a ArmClient,
    key: (String, String, OpClass),
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let unanswered = if let Ok(mut map) = self.client.buckets.lock()
            && let Some(b) = map.get_mut(&self.key)
            && !b.seeded
        {
            b.probe_since = None;
            true
        } else {
            false
        };
        // An answer already woke the waiters (`observe_headers`); without one, the next
        // waiter probes.
        if unanswered {
            self.client.seeded.notify_waiters();
        }
    }
}

tokio::task_local! {
    static REMOVAL: bool;
}

/// Runs `f` (ARM calls) as a removal of access: when a subscription's bucket is short of
/// tokens, removals waiting for it are served before calls that grant access.
pub async fn as_removal<F: std::future::Future>(f: F) -> F::Output {
    REMOVAL.scope(true, f).await
}

fn is_removal() -> bool {
    REMOVAL.try_with(|r| *r).unwrap_or(false)
}

/// Counts a waiting removal in its bucket for as long as it waits.
struct RemovalWaiting<'a> {
    buckets: &'a Mutex<HashMap<(String, String, OpClass), Bucket>>,
    key: (String, String, OpClass),
}

impl Drop for RemovalWaiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.buckets.lock()
            && let Some(b) = map.get_mut(&self.key)
        {
            b.removals_waiting = b.removals_waiting.saturating_sub(1);
        }
    }
}

/// The share of ARM's documented refill the model counts on: Azure's clock and rounding are
/// not ours (azure-sim's, counting whole milliseconds, refilled ~0.5% slower), and a model that
/// refills faster than Azure drifts into a 429 after ~20 s of a drained bucket.
const REFILL_HEADROOM: f64 = 0.98;

impl Bucket {
    fn rate(&self) -> f64 {
        self.size.refill_per_sec * REFILL_HEADROOM
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate()).min(self.size.capacity);
        self.last = now;
    }
    /// How long until one token may be taken (zero = take it now).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if let Some(b) = self.blocked_until {
            if b > now {
                return b - now;
            }
            self.blocked_until = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate().max(0.001))
        }
    }
}

/// Answer of an ARM call.
#[derive(Debug)]
pub struct ArmResponse {
    /// HTTP status.
    pub status: u16,
    pub body: bytes::Bytes,
}

/// Who makes a call.
#[derive(Clone, Debug)]
pub enum Caller<'a> {
    /// The operator's own identity.
    Operator,
    /// A grant's workload identity (namespace, identity).
    Grant(&'a str, &'a GrantIdentity),
}

/// Whether a call may be replayed after an ambiguous failure (sent, no answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Safe to replay (GET, PIM PUT with a deterministic name).
    Safe,
    /// Replay only when Azure provably did not process it (429, connect errors).
    Unsafe,
}

/// Credentials per (namespace, tenant, client) for grant workload identities.
type GrantCredentials = HashMap<(String, String, String), Arc<dyn TokenCredential>>;

/// The ARM client.
pub struct ArmClient {
    http: reqwest::Client,
    cfg: ArmConfig,
    operator: Arc<dyn TokenCredential>,
    operator_key: String,
    assertions: Option<Arc<dyn AssertionSource>>,
    grant_creds: Mutex<GrantCredentials>,
    sem: Semaphore,
    buckets: Mutex<HashMap<(String, String, OpClass), Bucket>>,
    /// Woken when a bucket's probe ends.
    seeded: tokio::sync::Notify,
    metrics: Option<crate::telemetry::Metrics>,
    readiness: Option<crate::telemetry::Readiness>,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("arm_endpoint", &self.cfg.arm_endpoint.as_str())
            .field("auth", &self.cfg.auth)
            .finish_non_exhaustive()
    }
}

impl ArmClient {
    /// Builds the client and the operator's credential.
    pub fn new(
        cfg: ArmConfig,
        assertions: Option<Arc<dyn AssertionSource>>,
    ) -> Result<Self, ArmClientError> {
        let http = http_client(cfg.extra_ca_pem.as_deref(), cfg.request_timeout)?;
        let opts = client_options(&http, &cfg.authority_host);
        let (operator, operator_key): (Arc<dyn TokenCredential>, String) = match &cfg.auth {
            AuthConfig::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => (
                ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    Secret::new(secret.clone()),
                    Some(ClientSecretCredentialOptions {
                        client_options: opts,
                    }),
                )
                .map_err(|e| ArmClientError::Credential(e.to_string()))?,
                client_id.clone(),
            ),
            AuthConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => (
                WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions {
                        client_options: opts,
                    },
                    client_id: Some(client_id.clone()),
                    tenant_id: Some(tenant_id.clone()),
                    token_file_path: Some(token_file.clone()),
                }))
                .map_err(|e| ArmClientError::Credential(e.to_string()))?,
                client_id.clone(),
            ),
            AuthConfig::ManagedIdentity { client_id } => (
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options: opts,
                }))
                .map_err(|e| ArmClientError::Credential(e.to_string()))?,
                client_id.clone().unwrap_or_else(|| "system".into()),
            ),
        };
        let sem = Semaphore::new(cfg.max_in_flight.max(1));
        Ok(Self {
            http,
            cfg,
            operator,
            operator_key,
            assertions,
            grant_creds: Mutex::new(HashMap::new()),
            sem,
            buckets: Mutex::new(HashMap::new()),
            seeded: tokio::sync::Notify::new(),
            metrics: None,
            readiness: None,
        })
    }

    fn credential(
        &self,
        caller: &Caller<'_>,
    ) -> Result<(Arc<dyn TokenCredential>, String), AzureError> {
        match caller {
            Caller::Operator => Ok((self.operator.clone(), self.operator_key.clone())),
            Caller::Grant(ns, id) => {
                let source = self.assertions.clone().ok_or_else(|| AzureError::Auth {
                    code: "NoAssertionSource".into(),
                    message: "per-grant identities are not configured".into(),
                })?;
                let key = (
                    ns.to_string(),
                    id.tenant_id.to_ascii_lowercase(),
                    id.client_id.to_ascii_lowercase(),
                );
                let mut map = self.grant_creds.lock().map_err(|_| AzureError::Auth {
                    code: "Poisoned".into(),
                    message: "credential cache poisoned".into(),
                })?;
                if let Some(c) = map.get(&key) {
                    return Ok((c.clone(), id.client_id.clone()));
                }
                let cred: Arc<dyn TokenCredential> = ClientAssertionCredential::new(
                    id.tenant_id.clone(),
                    id.client_id.clone(),
                    GrantAssertion {
                        source,
                        namespace: ns.to_string(),
                        identity: (*id).clone(),
                    },
                    Some(ClientAssertionCredentialOptions {
                        client_options: client_options(&self.http, &self.cfg.authority_host),
                    }),
                )
                .map_err(|e| AzureError::Auth {
                    code: "CredentialSetup".into(),
                    message: e.to_string(),
                })?;
                map.insert(key, cred.clone());
                Ok((cred, id.client_id.clone()))
            }
        }
    }

    /// Waits for (or refuses) a slot in the bucket; returns Throttled when the wait is too long.
    /// Returns the probe guard when this call is the first to an unseeded bucket.
    async fn take_token(&self, key: (String, String, OpClass)) -> Result<Ticket<'_>, AzureError> {
        let removal = is_removal();
        let mut waiting: Option<RemovalWaiting<'_>> = None;
        loop {
            // Registered before the bucket is looked at, so a probe ending in between wakes it.
            let probe_ended = self.seeded.notified();
            let mut probe = false;
            let mut probe_wait = None;
            let wait = {
                let mut map = self.buckets.lock().map_err(|_| AzureError::Transient {
                    status: None,
                    code: "Poisoned".into(),
                    message: "bucket lock".into(),
                })?;
                let size = match key.2 {
                    OpClass::Read => self.cfg.reads,
                    OpClass::Write => self.cfg.writes,
                    OpClass::Delete => self.cfg.deletes,
                };
                let now = Instant::now();
                let bucket = map.entry(key.clone()).or_insert(Bucket {
                    tokens: size.capacity,
                    size,
                    last: now,
                    blocked_until: None,
                    removals_waiting: 0,
                    seeded: false,
                    probe_since: None,
                });
                if !bucket.seeded
                    && let Some(t) = bucket.probe_since
                {
                    let waited = now.saturating_duration_since(t);
                    if waited < PROBE_PATIENCE {
                        probe_wait = Some(PROBE_PATIENCE - waited);
                    } else {
                        // The probe is taking too long: go by the model.
                        bucket.seeded = true;
                    }
                }
                if let Some(w) = probe_wait {
                    w
                } else if removal || bucket.removals_waiting == 0 {
                    let w = bucket.wait(now);
                    if w.is_zero() && !bucket.seeded {
                        // The first call with a token to a bucket Azure has not described yet.
                        bucket.probe_since = Some(now);
                        probe = true;
                    }
                    w
                } else {
                    // Removals are waiting for this bucket: let them have the next tokens.
                    bucket.refill(now);
                    Duration::from_secs_f64(1.0 / bucket.rate().max(0.001))
                        .max(Duration::from_millis(5))
                }
            };
            if let Some(w) = probe_wait {
                let _ = tokio::time::timeout(w, probe_ended).await;
                continue;
            }
            if wait.is_zero() {
                return Ok(Ticket {
                    probe: probe.then(|| Probe {
                        client: self,
                        key: key.clone(),
                    }),
                    at: Instant::now(),
                });
            }
            if removal && waiting.is_none() {
                waiting = Some(self.removal_waits(&key));
            }
            if wait > self.cfg.max_inline_wait {
                return Err(AzureError::Throttled {
                    code: "ClientThrottled".into(),
                    retry_after_secs: wait.as_secs().max(1),
                });
            }
            if let Some(m) = &self.metrics {
                m.throttle_wait(wait.as_secs_f64());
            }
            tracing::debug!(class = ?key.2, removal, wait_ms = wait.as_millis() as u64, "waiting for a client-side ARM token");
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts a removal as waiting for `key`'s bucket until the guard drops: calls that grant
    /// access leave the bucket's next tokens to it.
    fn removal_waits(&self, key: &(String, String, OpClass)) -> RemovalWaiting<'_> {
        if let Ok(mut map) = self.buckets.lock()
            && let Some(b) = map.get_mut(key)
        {
            b.removals_waiting += 1;
        }
        RemovalWaiting {
            buckets: &self.buckets,
            key: key.clone(),
        }
    }

    /// Reports ARM calls, throttling waits and the first token to the operator's telemetry.
    pub fn with_telemetry(
        mut self,
        metrics: crate::telemetry::Metrics,
        readiness: crate::telemetry::Readiness,
    ) -> Self {
        self.metrics = Some(metrics);
        self.readiness = Some(readiness);
        self
    }

    /// Gets a token for the operator's identity (start-up check; marks readiness on success).
    pub async fn obtain_token(&self) -> Result<(), AzureError> {
        match self.operator.get_token(&[ARM_SCOPE], None).await {
            Ok(_) => {
                if let Some(r) = &self.readiness {
                    r.set_azure_token_obtained(true);
                }
                Ok(())
            }
            Err(e) => Err(AzureError::Auth {
                code: "TokenRequestFailed".into(),
                message: redact(&e.to_string()),
            }),
        }
    }

    fn record(
        &self,
        operation: &'static str,
        outcome: &'static str,
        status: Option<u16>,
        elapsed: Option<Duration>,
    ) {
        if let Some(m) = &self.metrics {
            m.arm_call(operation, outcome, status, elapsed);
        }
    }

    fn observe_headers(
        &self,
        key: &(String, String, OpClass),
        taken_at: Instant,
        headers: &reqwest::header::HeaderMap,
        status: u16,
        retry_after: Option<u64>,
    ) {
        let Ok(mut map) = self.buckets.lock() else {
            return;
        };
        let Some(b) = map.get_mut(key) else { return };
        let name = match key.2 {
            OpClass::Read => "x-ms-ratelimit-remaining-subscription-reads",
            OpClass::Write => "x-ms-ratelimit-remaining-subscription-writes",
            OpClass::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        };
        if let Some(rem) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            if b.seeded {
                // Azure knows better than our estimate: never hold more tokens than it said
                // remained when it took this call. (Carrying its count forward by the calls
                // sent since cost ~15% of the refill: calls taken later often arrive first,
                // on a pooled connection, and were counted twice.)
                b.tokens = b.tokens.min(rem);
            } else {
                // The first answer tells what is left of the budget: Azure's count when it took
                // the probe (no other call was sent meanwhile), refilled since; never more than
                // the model, which started full and counted the probe.
                let now = Instant::now();
                b.refill(now);
                let since = now.saturating_duration_since(taken_at).as_secs_f64();
                b.tokens = b.tokens.min((rem + since * b.rate()).max(0.0));
            }
        }
        // Any answer tells: a header seeded the bucket, a 429 empties it below, and an answer
        // without the header (a tenant-level call, a gateway error) leaves the model as it is.
        let newly_seeded = !b.seeded;
        b.seeded = true;
        b.probe_since = None;
        if status == 429 {
            let secs = retry_after.unwrap_or(1).max(1);
            let until = Instant::now() + Duration::from_secs(secs);
            b.blocked_until = Some(b.blocked_until.map_or(until, |x| x.max(until)));
            b.tokens = 0.0;
        }
        drop(map);
        if newly_seeded {
            self.seeded.notify_waiters();
        }
    }

    /// One ARM call with the retry loop. `path` starts with `/`; `query` excludes api-version.
    #[allow(clippy::too_many_arguments)] // mirrors the ARM call's parts one to one
    pub async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        api_version: &str,
        body: Option<&Value>,
        caller: &Caller<'_>,
        replay: Replay,
    ) -> Result<ArmResponse, AzureError> {
        let mut url = self.cfg.arm_endpoint.clone();
        url.set_path(path);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", api_version);
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        self.call_url(operation, method, url, body, caller, replay)
            .await
    }

    /// Like `call`, for an absolute URL (e.g. a `nextLink`).
    pub async fn call_url(
        &self,
        operation: &'static str,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
        caller: &Caller<'_>,
        replay: Replay,
    ) -> Result<ArmResponse, AzureError> {
        let class = if method == Method::GET {
            OpClass::Read
        } else if method == Method::DELETE {
            OpClass::Delete
        } else {
            OpClass::Write
        };
        let sub = subscription_of(url.path());
        let (cred, principal) = self.credential(caller)?;
        let key = (sub, principal, class);
        let span = tracing::info_span!("arm", op = operation, method = %method, path = url.path());
        async move {
            let mut attempt = 0u32;
            // A removal sitting out a 429's Retry-After is still waiting for this bucket: without
            // this, calls granting access took the first token after the Retry-After and the
            // removal met another 429.
            let mut retry_hold: Option<RemovalWaiting<'_>> = None;
            loop {
                attempt += 1;
                let ticket = self.take_token(key.clone()).await?;
                drop(retry_hold.take());
                let _permit = self.sem.acquire().await.map_err(|_| AzureError::Transient { status: None, code: "ShuttingDown".into(), message: "client closed".into() })?;
                let token = match cred.get_token(&[ARM_SCOPE], None).await {
                    Ok(t) => t,
                    Err(e) => {
                        self.record(operation, "Auth", None, None);
                        return Err(AzureError::Auth { code: "TokenRequestFailed".into(), message: redact(&e.to_string()) });
                    }
                };
                if let Some(r) = &self.readiness {
                    r.set_azure_token_obtained(true);
                }
                let mut req = self.http.request(method.clone(), url.clone()).bearer_auth(token.token.secret()).header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string());
                if let Some(b) = body {
                    req = req.json(b);
                }
                let sent_at = Instant::now();
                let sent = req.send().await;
                // An answer seeded the bucket (see `observe_headers`); no answer lets the next
                // call probe.
                let probe_guard = ticket.probe;
                let err = match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let retry_after = retry_after_secs(resp.headers());
                        self.observe_headers(&key, ticket.at, resp.headers(), status, retry_after);
                        let bytes = resp.bytes().await.map_err(|e| AzureError::Transient { status: Some(status), code: "BodyReadFailed".into(), message: e.to_string() })?;
                        tracing::debug!(status, attempt, "arm answer");
                        if status < 400 {
                            self.record(operation, "ok", Some(status), Some(sent_at.elapsed()));
                            return Ok(ArmResponse { status, body: bytes });
                        }
                        let e = classify(status, &String::from_utf8_lossy(&bytes), retry_after);
                        self.record(operation, e.category(), Some(status), Some(sent_at.elapsed()));
                        e
                    }
                    Err(e) => {
                        self.record(operation, "Transient", None, Some(sent_at.elapsed()));
                        let processed_maybe = !e.is_connect();
                        if processed_maybe && replay == Replay::Unsafe {
                            return Err(AzureError::Transient { status: None, code: "NoAnswer".into(), message: format!("no answer from Azure ({e}); not replayed because the call may have been processed") });
                        }
                        AzureError::Transient { status: None, code: if e.is_timeout() { "Timeout".into() } else { "ConnectionFailed".into() }, message: e.to_string() }
                    }
                };
                let wait = match &err {
                    AzureError::Throttled { retry_after_secs, .. } => Duration::from_secs((*retry_after_secs).max(1)),
                    AzureError::Transient { status: Some(s), .. } if replay == Replay::Unsafe && *s != 503 => return Err(err),
                    AzureError::Transient { .. } | AzureError::Auth { .. } => backoff(attempt),
                    _ => return Err(err),
                };
                if attempt >= self.cfg.max_attempts || wait > self.cfg.max_inline_wait {
                    return Err(err);
                }
                tracing::info!(category = err.category(), attempt, wait_ms = wait.as_millis() as u64, "retrying ARM call");
                if let AzureError::Throttled { .. } = &err {
                    if let Some(m) = &self.metrics {
                        m.throttle_wait(wait.as_secs_f64());
                    }
                    if is_removal() {
                        retry_hold = Some(self.removal_waits(&key));
                    }
                }
                drop(probe_guard);
                tokio::time::sleep(wait).await;
            }
        }
        .instrument(span)
        .await
    }

    /// GETs a resource; `Ok(None)` on 404.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        query: &[(&str, &str)],
        api_version: &str,
        caller: &Caller<'_>,
    ) -> Result<Option<T>, AzureError> {
        match self
            .call(
                operation,
                Method::GET,
                path,
                query,
                api_version,
                None,
                caller,
                Replay::Safe,
            )
            .await
        {
            Ok(r) => parse(&r.body).map(Some),
            Err(AzureError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs every page of a list.
    pub async fn list_all<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        query: &[(&str, &str)],
        api_version: &str,
        caller: &Caller<'_>,
    ) -> Result<Vec<T>, AzureError> {
        let first = self
            .call(
                operation,
                Method::GET,
                path,
                query,
                api_version,
                None,
                caller,
                Replay::Safe,
            )
            .await?;
        let mut page: super::models::List<T> = parse(&first.body)?;
        let mut out = std::mem::take(&mut page.value);
        let mut next = page.next_link;
        let mut pages = 0;
        while let Some(link) = next.filter(|l| !l.is_empty()) {
            pages += 1;
            if pages > 1000 {
                break;
            }
            let url = url::Url::parse(&link).map_err(|e| AzureError::Invalid {
                status: 0,
                code: "BadNextLink".into(),
                message: e.to_string(),
            })?;
            let r = self
                .call_url(operation, Method::GET, url, None, caller, Replay::Safe)
                .await?;
            let mut p: super::models::List<T> = parse(&r.body)?;
            out.append(&mut p.value);
            next = p.next_link;
        }
        Ok(out)
    }
}
