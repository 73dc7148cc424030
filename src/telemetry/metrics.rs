//! The operator's metrics: one `prometheus_client` registry with every `accessgrant_*` family.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::Phase;

/// Content type of `/metrics` (OpenMetrics text, what `prometheus_client` encodes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every grant phase, as the `phase` label of `accessgrant_grants` (the serde names of
/// [`Phase`]). [`Metrics::set_grants`] sets all of them so a phase that empties goes
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
struct GrantLabels {
    kind: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLatencyLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The `kind` label of `accessgrant_grants`: what a grant asks for (`Invalid` when its spec
/// names neither or both).
pub const GRANT_KINDS: [&str; 3] = ["JIT", "PIM", "Invalid"];

/// What started a removal (the `trigger` label of `accessgrant_revoke_lag_seconds`).
pub const REVOKE_TRIGGERS: [&str; 3] = ["delete", "suspend", "policy"];

/// The commit the binary was built from (`ACCESSGRANT_GIT_COMMIT` at build time, as the
/// Dockerfile and CI set it; `unknown` otherwise).
pub const BUILD_COMMIT: &str = match option_env!("ACCESSGRANT_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn arm_latency_histogram() -> Histogram {
    // 5 ms .. 30 s: ARM answers in 50-500 ms; the long tail is throttling and timeouts.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn revoke_lag_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

#[derive(Debug)]
struct MetricsInner {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    failures: Family<CategoryLabels, Counter>,
    reconcile_duration: Histogram,
    arm_calls: Family<ArmCallLabels, Counter>,
    throttle_wait: Counter<f64, AtomicU64>,
    grants: Family<GrantLabels, Gauge>,
    arm_latency: HistogramFamily<ArmLatencyLabels>,
    revoke_lag: HistogramFamily<TriggerLabels>,
    revocation_failures: Family<KindLabels, Counter>,
    leader: Gauge,
    ready: Gauge,
    removal_oldest_pending: Gauge,
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
/// - `arm_request_duration_seconds{operation,outcome}` (histogram, 5 ms .. 30 s): one ARM
///   HTTP exchange, request sent to body read
/// - `arm_throttle_wait_seconds_total`
/// - `grants{kind,phase}` (gauge)
/// - `revoke_lag_seconds{trigger="delete"|"suspend"|"policy"}` (histogram, 0.1 s .. 10 min):
///   from the deletion (its `deletionTimestamp`), or from the pass that saw the suspension or
///   the policy change, to Azure accepting the removal
/// - `revocation_failures_total{kind}`: removals Azure did not accept (each is retried)
/// - `removal_oldest_pending_seconds` (gauge): age of the oldest grant being deleted or in
///   `Revoking` whose access is not yet gone
/// - `leader` (gauge): 1 while this replica may write to Azure (holds the Lease, or runs
///   without leader election)
/// - `ready` (gauge): 1 while `/readyz` would answer 200
/// - `build_info{version,commit}` (gauge, always 1)
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

        let arm_latency: HistogramFamily<ArmLatencyLabels> =
            Family::new_with_constructor(arm_latency_histogram);
        registry.register_with_unit(
            "arm_request_duration",
            "One ARM HTTP exchange (request sent to answer read), by operation id and outcome",
            Unit::Seconds,
            arm_latency.clone(),
        );

        let grants = Family::<GrantLabels, Gauge>::default();
        registry.register(
            "grants",
            "AccessGrants by kind and phase (from a full recount)",
            grants.clone(),
        );
        for kind in GRANT_KINDS {
            for phase in PHASES {
                grants.get_or_create(&GrantLabels { kind, phase }).set(0);
            }
        }

        let revoke_lag: HistogramFamily<TriggerLabels> =
            Family::new_with_constructor(revoke_lag_histogram);
        registry.register_with_unit(
            "revoke_lag",
            "Time from a grant's deletion (or the pass that saw its suspension or policy change) to Azure accepting the removal",
            Unit::Seconds,
            revoke_lag.clone(),
        );
        for trigger in REVOKE_TRIGGERS {
            let _ = revoke_lag.get_or_create(&TriggerLabels { trigger });
        }

        let revocation_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "revocation_failures",
            "Removals of access that Azure did not accept (retried), by kind",
            revocation_failures.clone(),
        );
        for kind in ["JIT", "PIM"] {
            revocation_failures
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }

        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica may write to Azure (holds the Lease, or runs without leader election)",
            leader.clone(),
        );
        let removal_oldest_pending = Gauge::default();
        registry.register_with_unit(
            "removal_oldest_pending",
            "Age of the oldest grant whose access is to be taken away (being deleted, or Revoking) and is not yet gone",
            Unit::Seconds,
            removal_oldest_pending.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the operator is ready (CRDs established, caches synced, Azure token obtained)",
            ready.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "The operator's version and the commit it was built from (always 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            })
            .set(1);

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
                arm_latency,
                revoke_lag,
                revocation_failures,
                leader,
                ready,
                removal_oldest_pending,
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
    /// `elapsed` is the HTTP exchange's duration, when a request was sent.
    pub fn arm_call(
        &self,
        operation: &'static str,
        outcome: &'static str,
        status: Option<u16>,
        elapsed: Option<Duration>,
    ) {
        if let Some(d) = elapsed {
            self.inner
                .arm_latency
                .get_or_create(&ArmLatencyLabels { operation, outcome })
                .observe(d.as_secs_f64());
        }
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

    /// Sets `accessgrant_grants` from a full recount: every (kind, phase) of [`GRANT_KINDS`] x
    /// [`PHASES`] is set, to 0 when `counts` does not name it. Repeated keys add up; names
    /// outside those lists are ignored (they would be new series; use [`phase_label`] to build
    /// the keys).
    pub fn set_grants(&self, counts: &[((&'static str, &'static str), i64)]) {
        for kind in GRANT_KINDS {
            for phase in PHASES {
                let n: i64 = counts
                    .iter()
                    .filter(|((k, p), _)| *k == kind && *p == phase)
                    .map(|(_, n)| *n)
                    .sum();
                self.inner
                    .grants
                    .get_or_create(&GrantLabels { kind, phase })
                    .set(n);
            }
        }
    }

    /// Azure accepted a removal `secs` after its trigger (one of [`REVOKE_TRIGGERS`]).
    pub fn revoke_lag(&self, trigger: &'static str, secs: f64) {
        if let Some(s) = sane_secs(secs) {
            self.inner
                .revoke_lag
                .get_or_create(&TriggerLabels { trigger })
                .observe(s);
        }
    }

    /// Azure did not accept a removal of this kind (`JIT` or `PIM`); it will be retried.
    pub fn revocation_failure(&self, kind: &'static str) {
        self.inner
            .revocation_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Whether this replica may write to Azure now.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Age in seconds of the oldest grant waiting for its access to be taken away (0: none).
    pub fn set_removal_oldest_pending(&self, secs: i64) {
        self.inner.removal_oldest_pending.set(secs.max(0));
    }

    /// Whether the operator is ready (set at each scrape from [`super::Readiness`]).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.set(i64::from(ready));
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
    fn grants_recount_zeroes_missing_and_ignores_unknown_phases() {
        let m = Metrics::new();
        m.set_grants(&[
            (("JIT", "Active"), 3),
            (("PIM", "Pending"), 1),
            (("JIT", "Bogus"), 9),
            (("Bogus", "Active"), 9),
        ]);
        m.set_grants(&[(("JIT", "Active"), 2), (("JIT", "Active"), 1)]);
        let text = m.encode();
        assert!(
            text.contains("accessgrant_grants{kind=\"JIT\",phase=\"Active\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("accessgrant_grants{kind=\"PIM\",phase=\"Pending\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("accessgrant_grants{kind=\"PIM\",phase=\"Active\"} 0\n"),
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
}
