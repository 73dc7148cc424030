//! Telemetry: Prometheus/OpenMetrics metrics, readiness, the admin HTTP server and logging.
//!
//! Self-contained so `main` and the controller only hold handles:
//! - [`Metrics`] owns a `prometheus_client` registry with every `accessgrant_*` family. Labels
//!   are `&'static str` categories from fixed sets (outcomes, error categories, ARM operation
//!   ids, phases), never object names or Debug strings: a label value per grant would be a new
//!   series per grant, and we plan for 100k grants.
//! - [`Readiness`] is three flags (CRDs established, caches synced, Azure token obtained).
//! - [`serve_admin`] serves `/metrics`, `/livez`, `/readyz` and optionally `PUT /loglevel` on a
//!   listener the caller binds (tests bind port 0).
//! - [`init_logging`] installs the global tracing subscriber with a reloadable `EnvFilter`.
//!
//! No wall-clock reads here (`clippy.toml`): callers pass durations and seconds in.
//!
//! The admin port is unauthenticated: keep it inside the pod network (scraped by Prometheus,
//! probed by the kubelet, fenced by a NetworkPolicy in production). `PUT /loglevel` is only
//! routed when the caller hands a [`LogReload`] in, and takes at most 1 KiB.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::api::Phase;

/// Content type of `/metrics` (OpenMetrics text, what `prometheus_client` encodes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every grant phase, as the `phase` label of `accessgrant_grants` (the serde names of
/// [`Phase`]). [`Metrics::set_grants_by_phase`] sets all of them so a phase that empties goes
/// to 0 instead of keeping its last value.
pub const PHASES: [&str; 12] = [
    "Pending",
    "Scheduled",
    "Requesting",
    "PendingApproval",
    "Active",
    "Renewing",
    "Revoking",
    "Expired",
    "Revoked",
    "Denied",
    "Failed",
    "DryRun",
];

/// The `phase` label for a [`Phase`] (exhaustive, so a new phase cannot be forgotten here).
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Scheduled => "Scheduled",
        Phase::Requesting => "Requesting",
        Phase::PendingApproval => "PendingApproval",
        Phase::Active => "Active",
        Phase::Renewing => "Renewing",
        Phase::Revoking => "Revoking",
        Phase::Expired => "Expired",
        Phase::Revoked => "Revoked",
        Phase::Denied => "Denied",
        Phase::Failed => "Failed",
        Phase::DryRun => "DryRun",
    }
}

/// The `status_class` label of `accessgrant_arm_calls_total` for an HTTP status (`None`: no
/// response, e.g. a connect error or a timeout). 429 is its own class because it is what ARM
/// throttling looks like and it drives the backoff. 1xx/3xx, which ARM does not send for the
/// calls we make, are `other`.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "none",
        Some(429) => "429",
        Some(200..=299) => "2xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmCallLabels {
    operation: &'static str,
    outcome: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug)]
struct MetricsInner {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    failures: Family<CategoryLabels, Counter>,
    reconcile_duration: Histogram,
    arm_calls: Family<ArmCallLabels, Counter>,
    throttle_wait: Counter<f64, AtomicU64>,
    grants: Family<PhaseLabels, Gauge>,
    time_to_active: Histogram,
    expiry_lag: Histogram,
    break_glass: Family<KindLabels, Counter>,
    orphans_removed: Family<KindLabels, Counter>,
    notifications: Family<NotifyLabels, Counter>,
    admission: Family<AdmissionLabels, Counter>,
    heap_allocated: Gauge,
    heap_resident: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// `sink` is a name from the `--notifications` file: bounded by the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    sink: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    webhook: &'static str,
    allowed: &'static str,
}

/// The operator's metrics. Cheap to clone (one `Arc`); every method takes `&self`.
///
/// Families (all prefixed `accessgrant_`):
/// - `reconciles_total{outcome="ok"|"error"}`
/// - `reconcile_failures_total{category}`
/// - `reconcile_duration_seconds` (histogram, 1 ms .. 32 s)
/// - `arm_calls_total{operation,outcome,status_class}`
/// - `arm_throttle_wait_seconds_total`
/// - `grants{phase}` (gauge)
/// - `time_to_active_seconds` (histogram, 0.1 s .. 1 h)
/// - `expiry_status_lag_seconds` (histogram, 0.1 s .. 10 min)
/// - `break_glass_total{kind="JIT"|"PIM"}`: break-glass requests sent to Azure
/// - `notifications_total{sink,outcome="delivered"|"retried"|"dropped"}`
/// - `admission_reviews_total{webhook="mutate"|"validate",allowed}`
/// - `heap_allocated_bytes`, `heap_resident_bytes`: jemalloc's statistics at scrape time (0
///   when jemalloc is not the process's allocator, as in library tests)
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds to observe: NaN and infinities are dropped (they would poison `_sum`), negative
/// values (clock skew between the end time and our clock) count as 0.
fn sane_secs(secs: f64) -> Option<f64> {
    secs.is_finite().then_some(secs.max(0.0))
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("accessgrant");

        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of AccessGrants, by outcome",
            reconciles.clone(),
        );
        // Both outcomes exist from the start so `rate()` and error ratios work before the first
        // error.
        for outcome in ["ok", "error"] {
            reconciles
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }

        let failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by error category",
            failures.clone(),
        );

        // 1 ms .. 32.8 s, doubling.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile",
            Unit::Seconds,
            reconcile_duration.clone(),
        );

        let arm_calls = Family::<ArmCallLabels, Counter>::default();
        registry.register(
            "arm_calls",
            "Azure Resource Manager calls, by operation id, outcome and HTTP status class",
            arm_calls.clone(),
        );

        let throttle_wait = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "arm_throttle_wait",
            "Time spent waiting for ARM throttling (token buckets and Retry-After)",
            Unit::Seconds,
            throttle_wait.clone(),
        );

        let grants = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "grants",
            "AccessGrants by phase (from a full recount)",
            grants.clone(),
        );
        for phase in PHASES {
            grants.get_or_create(&PhaseLabels { phase }).set(0);
        }

        let time_to_active = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
            3600.0,
        ]);
        registry.register_with_unit(
            "time_to_active",
            "Time from AccessGrant creation to phase Active",
            Unit::Seconds,
            time_to_active.clone(),
        );

        let expiry_lag = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        registry.register_with_unit(
            "expiry_status_lag",
            "Time from a grant's end time to its status recording Expired",
            Unit::Seconds,
            expiry_lag.clone(),
        );

        let break_glass = Family::<KindLabels, Counter>::default();
        registry.register(
            "break_glass",
            "Break-glass grants requested from Azure, by kind",
            break_glass.clone(),
        );
        for kind in ["JIT", "PIM"] {
            break_glass.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        let orphans_removed = Family::<KindLabels, Counter>::default();
        registry.register(
            "orphans_removed",
            "Access the operator made in Azure that no live grant owned any more, removed by the orphan sweep, by kind",
            orphans_removed.clone(),
        );
        for kind in ["JIT", "PIM"] {
            orphans_removed
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
        let notifications = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification webhook deliveries, by sink and outcome (a retry is one failed try)",
            notifications.clone(),
        );
        let admission = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "AdmissionReviews answered by the webhook, by webhook and verdict",
            admission.clone(),
        );
        let heap_allocated = Gauge::default();
        registry.register_with_unit(
            "heap_allocated",
            "Bytes the process has allocated and not freed (jemalloc stats.allocated)",
            Unit::Bytes,
            heap_allocated.clone(),
        );
        let heap_resident = Gauge::default();
        registry.register_with_unit(
            "heap_resident",
            "Bytes of allocator pages resident in memory (jemalloc stats.resident)",
            Unit::Bytes,
            heap_resident.clone(),
        );

        Self {
            inner: Arc::new(MetricsInner {
                registry,
                reconciles,
                failures,
                reconcile_duration,
                arm_calls,
                throttle_wait,
                grants,
                time_to_active,
                expiry_lag,
                break_glass,
                orphans_removed,
                notifications,
                admission,
                heap_allocated,
                heap_resident,
            }),
        }
    }

    /// One reconcile finished after `duration`; `ok` is whether it returned `Ok`.
    pub fn reconcile(&self, duration: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .reconciles
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.inner
            .reconcile_duration
            .observe(duration.as_secs_f64());
    }

    /// A break-glass grant of this kind (`JIT` or `PIM`) was requested from Azure.
    pub fn break_glass(&self, kind: &'static str) {
        self.inner
            .break_glass
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// The orphan sweep removed access of this kind (`JIT` or `PIM`).
    pub fn orphan_removed(&self, kind: &'static str) {
        self.inner
            .orphans_removed
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// `n` notifications to `sink` came to `outcome` (`delivered`, `retried`, `dropped`; 0
    /// creates the series).
    pub fn notifications(&self, sink: &str, outcome: &'static str, n: u64) {
        let labels = NotifyLabels {
            sink: sink.to_string(),
            outcome,
        };
        self.inner.notifications.get_or_create(&labels).inc_by(n);
    }

    /// The admission webhook answered (`webhook` is `mutate` or `validate`).
    pub fn admission(&self, webhook: &'static str, allowed: bool) {
        self.inner
            .admission
            .get_or_create(&AdmissionLabels {
                webhook,
                allowed: if allowed { "true" } else { "false" },
            })
            .inc();
    }

    /// A reconcile failed with this stable error category (`ReconcileError::category()`).
    pub fn failure(&self, category: &'static str) {
        self.inner
            .failures
            .get_or_create(&CategoryLabels { category })
            .inc();
    }

    /// One ARM call: `operation` is the ARM operationId (e.g.
    /// `RoleAssignmentScheduleRequests_Create`), `outcome` is `"ok"` or the error category
    /// (`AzureError::category()`), `status` the HTTP status if a response came back.
    pub fn arm_call(&self, operation: &'static str, outcome: &'static str, status: Option<u16>) {
        self.inner
            .arm_calls
            .get_or_create(&ArmCallLabels {
                operation,
                outcome,
                status_class: status_class(status),
            })
            .inc();
    }

    /// Seconds spent waiting for ARM throttling. Negative or non-finite values are ignored
    /// (a counter only goes up).
    pub fn throttle_wait(&self, secs: f64) {
        if secs.is_finite() && secs > 0.0 {
            self.inner.throttle_wait.inc_by(secs);
        }
    }

    /// Sets `accessgrant_grants` from a full recount: every phase in [`PHASES`] is set, to 0
    /// when `counts` does not name it. Repeated phases add up; names outside [`PHASES`] are
    /// ignored (they would be new series; use [`phase_label`] to build the keys).
    pub fn set_grants_by_phase(&self, counts: &[(&'static str, i64)]) {
        for phase in PHASES {
            let n: i64 = counts
                .iter()
                .filter(|(p, _)| *p == phase)
                .map(|(_, n)| *n)
                .sum();
            self.inner
                .grants
                .get_or_create(&PhaseLabels { phase })
                .set(n);
        }
    }

    /// A grant reached Active this many seconds after its creation.
    pub fn time_to_active(&self, secs: f64) {
        if let Some(s) = sane_secs(secs) {
            self.inner.time_to_active.observe(s);
        }
    }

    /// A grant's status recorded Expired this many seconds after its end time.
    pub fn expiry_lag(&self, secs: f64) {
        if let Some(s) = sane_secs(secs) {
            self.inner.expiry_lag.observe(s);
        }
    }

    /// The registry in OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        // jemalloc's statistics are refreshed by advancing its epoch.
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            if let Ok(b) = tikv_jemalloc_ctl::stats::allocated::read() {
                self.inner.heap_allocated.set(b as i64);
            }
            if let Ok(b) = tikv_jemalloc_ctl::stats::resident::read() {
                self.inner.heap_resident.set(b as i64);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail; an Err could only come from a label encoder, and a
        // scrape should still get what was written rather than a panic.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[derive(Debug, Default)]
struct ReadinessInner {
    crds_established: AtomicBool,
    caches_synced: AtomicBool,
    azure_token_obtained: AtomicBool,
    admission_serving: AtomicBool,
}

/// Readiness: the operator is ready once its CRDs are established, its watch caches have
/// synced, and it has obtained an Azure token. Cheap to clone; starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

impl Readiness {
    /// All three conditions false.
    pub fn new() -> Self {
        Self::default()
    }

    /// The AccessGrant/AccessPolicy CRDs are (or are no longer) established.
    pub fn set_crds_established(&self, v: bool) {
        self.inner.crds_established.store(v, Ordering::Release);
    }

    /// The controller's reflectors have (or have not) completed their initial list.
    pub fn set_caches_synced(&self, v: bool) {
        self.inner.caches_synced.store(v, Ordering::Release);
    }

    /// An Azure token was (or could no longer be) obtained.
    pub fn set_azure_token_obtained(&self, v: bool) {
        self.inner.azure_token_obtained.store(v, Ordering::Release);
    }

    /// The admission webhook is (or is no longer) serving: stamp key and certificate loaded,
    /// AccessPolicies cached. Independent of leadership: every replica serves admission.
    pub fn set_admission_serving(&self, v: bool) {
        self.inner.admission_serving.store(v, Ordering::Release);
    }

    /// Whether this replica serves admission (`GET /readyz/admission`).
    pub fn admission_serving(&self) -> bool {
        self.inner.admission_serving.load(Ordering::Acquire)
    }

    /// Whether all three conditions hold.
    pub fn is_ready(&self) -> bool {
        self.reasons_not_ready().is_empty()
    }

    /// The conditions that do not hold, in a fixed order: `crds_established`,
    /// `caches_synced`, `azure_token_obtained`.
    pub fn reasons_not_ready(&self) -> Vec<&'static str> {
        let i = &self.inner;
        [
            (&i.crds_established, "crds_established"),
            (&i.caches_synced, "caches_synced"),
            (&i.azure_token_obtained, "azure_token_obtained"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Acquire))
        .map(|(_, name)| name)
        .collect()
    }
}

/// Handle to change the log filter of the subscriber [`init_logging`] installed (or of any
/// subscriber built on [`reloadable_filter`]'s layer).
#[derive(Clone, Debug)]
pub struct LogReload {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

/// Longest filter string accepted by [`LogReload::set_level`] and `PUT /loglevel`.
pub const MAX_FILTER_LEN: usize = 1024;

fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(format!("filter longer than {MAX_FILTER_LEN} bytes"));
    }
    EnvFilter::try_new(filter.trim()).map_err(|e| format!("invalid filter: {e}"))
}

impl LogReload {
    /// Replaces the filter with `filter` (`EnvFilter` syntax, e.g. `info,accessgrant_operator=debug`).
    /// An invalid filter leaves the current one in force.
    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let f = parse_filter(filter)?;
        self.handle
            .reload(f)
            .map_err(|e| format!("reloading the filter failed: {e}"))
    }

    /// The filter in force, in `EnvFilter` syntax.
    pub fn current(&self) -> Result<String, String> {
        self.handle
            .with_current(|f| f.to_string())
            .map_err(|e| format!("reading the filter failed: {e}"))
    }
}

/// A reloadable `EnvFilter` layer (to put first on a `tracing_subscriber::Registry`) and its
/// handle. [`init_logging`] uses it; tests use it on a scoped subscriber.
pub fn reloadable_filter(
    filter: &str,
) -> Result<
    (
        reload::Layer<EnvFilter, tracing_subscriber::Registry>,
        LogReload,
    ),
    String,
> {
    let (layer, handle) = reload::Layer::new(parse_filter(filter)?);
    Ok((layer, LogReload { handle }))
}

/// Installs the global subscriber: logs to stderr as `text` or `json`, filtered by `RUST_LOG`
/// when set (an invalid `RUST_LOG` is an error, not silently ignored) or else by
/// `default_filter`. Can succeed once per process.
pub fn init_logging(format: &str, default_filter: &str) -> Result<LogReload, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default_filter.to_owned(),
    };
    let (filter_layer, reload) = reloadable_filter(&filter)?;
    let (text, json) = match format {
        "text" => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only help a terminal, not a log pipeline.
                    .with_ansi(false),
            ),
            None,
        ),
        "json" => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
        other => return Err(format!("unknown log format {other:?}: use text or json")),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| format!("installing the log subscriber failed: {e}"))?;
    Ok(reload)
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ready: Readiness,
    log: Option<LogReload>,
}

/// The admin routes: `GET /metrics`, `GET /livez`, `GET /readyz`, `GET /readyz/admission`, and
/// with `log` also
/// `GET /loglevel` (the filter in force) and `PUT /loglevel` (body: an `EnvFilter` string;
/// 200, or 400 when it does not parse).
pub fn admin_router(metrics: Metrics, ready: Readiness, log: Option<LogReload>) -> Router {
    let with_log = log.is_some();
    let mut router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/readyz/admission", get(readyz_admission));
    if with_log {
        router = router.route("/loglevel", get(get_loglevel).put(put_loglevel));
    }
    router
        // Nothing here takes a large body; the default (2 MiB) is far more than a filter.
        .layer(DefaultBodyLimit::max(MAX_FILTER_LEN))
        .with_state(AdminState {
            metrics,
            ready,
            log,
        })
}

/// Serves [`admin_router`] on `listener` until `shutdown` resolves, then drains connections.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Readiness,
    log: Option<LogReload>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, admin_router(metrics, ready, log))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let missing = s.ready.reasons_not_ready();
    if missing.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
            .into_response()
    }
}

/// Ready to answer admission reviews, on any replica (leader or standby): the readiness probe
/// of a deployment with the webhook, so its Service sends admission to every serving replica.
async fn readyz_admission(State(s): State<AdminState>) -> Response {
    if s.ready.admission_serving() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: admission webhook not serving\n",
        )
            .into_response()
    }
}

async fn get_loglevel(State(s): State<AdminState>) -> Response {
    match s.log.as_ref().map(LogReload::current) {
        Some(Ok(f)) => (StatusCode::OK, f).into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_loglevel(State(s): State<AdminState>, body: String) -> Response {
    let Some(log) = s.log.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match log.set_level(&body) {
        Ok(()) => {
            tracing::info!(filter = %body.trim(), "log filter changed");
            (StatusCode::OK, "ok").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_labels_are_the_serde_names_and_all_listed() {
        let all = [
            Phase::Pending,
            Phase::Scheduled,
            Phase::Requesting,
            Phase::PendingApproval,
            Phase::Active,
            Phase::Renewing,
            Phase::Revoking,
            Phase::Expired,
            Phase::Revoked,
            Phase::Denied,
            Phase::Failed,
            Phase::DryRun,
        ];
        assert_eq!(all.len(), PHASES.len());
        for p in all {
            let serde_name = serde_json::to_value(p).unwrap();
            assert_eq!(serde_name, serde_json::json!(phase_label(p)));
            assert!(PHASES.contains(&phase_label(p)));
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(None), "none");
        assert_eq!(status_class(Some(200)), "2xx");
        assert_eq!(status_class(Some(201)), "2xx");
        assert_eq!(status_class(Some(404)), "4xx");
        assert_eq!(status_class(Some(429)), "429");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(302)), "other");
    }

    #[test]
    fn readiness_reasons_in_order() {
        let r = Readiness::new();
        assert_eq!(
            r.reasons_not_ready(),
            ["crds_established", "caches_synced", "azure_token_obtained"]
        );
        r.set_caches_synced(true);
        assert_eq!(
            r.reasons_not_ready(),
            ["crds_established", "azure_token_obtained"]
        );
        r.set_crds_established(true);
        r.set_azure_token_obtained(true);
        assert!(r.is_ready());
        r.set_azure_token_obtained(false);
        assert!(!r.is_ready());
    }

    #[test]
    fn grants_recount_zeroes_missing_and_ignores_unknown_phases() {
        let m = Metrics::new();
        m.set_grants_by_phase(&[("Active", 3), ("Pending", 1), ("Bogus", 9)]);
        m.set_grants_by_phase(&[("Active", 2), ("Active", 1)]);
        let text = m.encode();
        assert!(
            text.contains("accessgrant_grants{phase=\"Active\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("accessgrant_grants{phase=\"Pending\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("Bogus"), "{text}");
    }

    #[test]
    fn bad_numbers_do_not_poison_metrics() {
        let m = Metrics::new();
        m.throttle_wait(-1.0);
        m.throttle_wait(f64::NAN);
        m.throttle_wait(0.5);
        m.expiry_lag(f64::INFINITY);
        m.expiry_lag(-2.0);
        let text = m.encode();
        assert!(
            text.contains("accessgrant_arm_throttle_wait_seconds_total 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("accessgrant_expiry_status_lag_seconds_sum 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("accessgrant_expiry_status_lag_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn bad_filters_are_rejected() {
        let (_layer, reload) = reloadable_filter("info").unwrap();
        assert!(reload.set_level("foo=notalevel").is_err());
        assert!(reload.set_level(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
        assert_eq!(reload.current().unwrap(), "info");
        reload.set_level("warn,accessgrant_operator=debug").unwrap();
        // EnvFilter prints its directives most specific first.
        assert_eq!(reload.current().unwrap(), "accessgrant_operator=debug,warn");
    }
}
