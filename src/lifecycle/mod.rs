//! The pure lifecycle planner (design.md §4): `plan(input) -> Plan`.
//!
//! No I/O, no clock reads, no randomness. Everything the planner remembers between passes is in
//! `status`; everything it knows about Azure is in `Observed`. A crash anywhere is handled by
//! the next pass seeing the recorded intent and reading Azure before writing again.

mod types;

pub use types::*;

use crate::api::{
    AccessGrantStatus, Condition, GrantSummary, HistoryEntry, Intent, JitPortStatus, JitStatus,
    Operation, Phase, PimMode, PimStatus, RecordedTarget, RetryState,
};
use crate::azure::error::AzureError;
use crate::constants::{HISTORY_LIMIT, REQUEST_NAMESPACE, condition as cond, reason};
use crate::guard::Verdict;
use crate::validate::{InvalidSpec, ValidGrant, ValidJit, ValidPim, ValidTarget};
use chrono::{DateTime, Duration, Utc};

/// Planner settings (all durations; defaults follow Azure's documented behaviour).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    /// JIT early close window: supersede our request with one this short on revoke. None leaves
    /// the ports open until their end time (`--jit-early-close=none`).
    pub jit_early_close: Option<Duration>,
    /// PIM minimum active time before deactivation (ActiveDurationTooShort), 5 minutes.
    pub deactivation_floor: Duration,
    /// First retry delay for transient failures.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long after a grant's start a missing instance is taken as "not visible yet".
    pub visibility_grace: Duration,
    /// How often to look again while waiting for Azure to confirm something.
    pub confirm_poll: Duration,
    /// How often an active grant is checked for out-of-band changes (drift).
    pub drift_check: Duration,
    /// How long after its intent is recorded an Azure write may still be sent or awaited: the
    /// controller abandons a write it has not finished by then (the ARM request timeout).
    pub write_deadline: Duration,
    /// How long after the operator stopped waiting for a write Azure may still apply it.
    pub write_settle: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            jit_early_close: Some(Duration::minutes(1)),
            deactivation_floor: Duration::minutes(5),
            backoff_base: Duration::seconds(2),
            backoff_max: Duration::minutes(5),
            visibility_grace: Duration::seconds(30),
            confirm_poll: Duration::seconds(2),
            drift_check: Duration::minutes(5),
            write_deadline: Duration::seconds(30),
            write_settle: Duration::seconds(10),
        }
    }
}

/// Facts about the object itself.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GrantMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Our finalizer is present.
    pub has_finalizer: bool,
    /// Verified requester's user name, if any.
    pub requested_by: Option<String>,
    /// The verified requester in full (groups, time, provenance), if any.
    pub requester: Option<crate::api::RequesterStatus>,
    /// Why the object's requester stamp was not trusted (None: valid or absent).
    pub stamp_problem: Option<String>,
}

/// Everything `plan` decides from.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The object.
    pub meta: &'a GrantMeta,
    /// Validation result of the spec.
    pub spec: Result<&'a ValidGrant, &'a InvalidSpec>,
    /// Raw `spec.suspend` (readable even when the spec is invalid).
    pub suspend: bool,
    /// Current status.
    pub status: &'a AccessGrantStatus,
    /// Policy verdict (None when the spec is invalid).
    pub verdict: Option<&'a Verdict>,
    /// Azure reads and the last write's outcome.
    pub observed: &'a Observed,
    /// Another live grant covers the same access (overlap-aware revocation).
    pub covered_by_other: bool,
    /// Now.
    pub now: DateTime<Utc>,
    /// Settings.
    pub config: &'a PlannerConfig,
}

/// Deterministic PIM request name: UUIDv5 of (uid, attempt, operation).
pub fn request_name(uid: &str, attempt: u32, op: Operation) -> String {
    uuid::Uuid::new_v5(
        &REQUEST_NAMESPACE,
        format!("{uid}/{attempt}/{}", op.as_str()).as_bytes(),
    )
    .to_string()
}

/// The JIT justification marker for (grant, attempt). JIT requests have no id, so this is how
/// the operator finds its own request again. The uid prefix keeps a re-created grant of the same
/// name from adopting its predecessor's requests.
pub fn jit_marker(meta: &GrantMeta, attempt: u32) -> String {
    let uid8: String = meta.uid.chars().take(8).collect();
    format!("[ag:{}/{}#{attempt}.{uid8}]", meta.namespace, meta.name)
}

/// PIM request status classes (azure-api.md §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PimClass {
    /// Still being processed.
    InProgress,
    /// Waiting for an approver.
    Pending,
    /// Granted and in force.
    Granted,
    /// Removed (success of a removal request).
    Revoked,
    /// Canceled.
    Canceled,
    /// Denied by an approver.
    Denied,
    /// Timed out, failed or invalid.
    Failed,
}

/// Classifies a PIM request status (case-insensitive; unknown = in progress).
pub fn pim_class(status: &str) -> PimClass {
    match status.to_ascii_lowercase().as_str() {
        "provisioned" => PimClass::Granted,
        "pendingapproval" | "pendingapprovalprovisioning" | "pendingadmindecision" => {
            PimClass::Pending
        }
        "revoked" => PimClass::Revoked,
        "canceled" => PimClass::Canceled,
        "denied" | "admindenied" => PimClass::Denied,
        "timedout" | "failed" | "failedasresourceislocked" | "invalid" => PimClass::Failed,
        _ => PimClass::InProgress,
    }
}

struct Ctx<'a> {
    input: &'a PlanInput<'a>,
    /// Azure's answer to this pass's write made the grant Active: nothing to re-read.
    fresh: bool,
    st: AccessGrantStatus,
    steps: Vec<Step>,
    events: Vec<PlannedEvent>,
    wake: Option<DateTime<Utc>>,
    needs: Vec<Need>,
}

/// Why access is not wanted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unwanted {
    Deleted,
    Suspended,
    Invalid,
    Denied,
    DryRun,
}

/// Decides what to do now. Pure.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut c = Ctx {
        input,
        fresh: false,
        st: input.status.clone(),
        steps: vec![],
        events: vec![],
        wake: None,
        needs: vec![],
    };
    c.run();
    c.finish()
}

impl<'a> Ctx<'a> {
    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }
    fn cfg(&self) -> &PlannerConfig {
        self.input.config
    }
    fn meta(&self) -> &GrantMeta {
        self.input.meta
    }

    fn run(&mut self) {
        // The requester of the current spec: a valid stamp binds it to this very spec.
        self.st.requested_by = self.meta().requested_by.clone();
        self.st.requester = self.meta().requester.clone();
        if let Some(problem) = self.meta().stamp_problem.clone() {
            let known = self.st.conditions.iter().any(|c| {
                c.type_ == cond::REQUESTER_VERIFIED
                    && c.reason == reason::STAMP_INVALID
                    && c.message == problem
            });
            if !known {
                self.history(reason::STAMP_INVALID, problem.clone());
                self.event(
                    true,
                    reason::STAMP_INVALID,
                    format!("requester stamp ignored: {problem}"),
                );
            }
        }
        if let Ok(g) = self.input.spec {
            self.st.summary = Some(summary(g));
        }
        if let Some(w) = self.input.observed.last_write.clone() {
            self.apply_write_result(&w);
            self.fresh = self.st.phase == Phase::Active && self.st.intent.is_none();
            if !self.needs.is_empty() {
                return;
            }
        }
        // A write whose outcome is unknown (crash, or a retry is due): learn what Azure has.
        if self.st.intent.is_some() && self.input.observed.last_write.is_none() {
            if let Some(until) = self.st.retry.as_ref().map(|r| r.not_before)
                && until > self.now()
            {
                self.wake_at(until);
                return;
            }
            if !self.resolve_intent() {
                return;
            }
        }
        match self.unwanted() {
            Some(why) => self.take_away(why),
            None => self.keep(),
        }
    }

    fn dry_run(&self) -> bool {
        self.input.spec.is_ok_and(|g| g.dry_run)
    }

    fn unwanted(&self) -> Option<Unwanted> {
        if self.meta().deleting {
            return Some(Unwanted::Deleted);
        }
        if self.input.suspend {
            return Some(Unwanted::Suspended);
        }
        if self.input.spec.is_err() {
            return Some(Unwanted::Invalid);
        }
        if let Some(Verdict::Denied { .. }) | None = self.input.verdict {
            return Some(Unwanted::Denied);
        }
        if self.dry_run() && self.may_hold() {
            // A dry run never holds access: switching an active grant to dry run revokes it.
            return Some(Unwanted::DryRun);
        }
        None
    }

    /// Whether Azure access may exist for this grant (or a request is in flight).
    fn may_hold(&self) -> bool {
        self.st.intent.is_some()
            || matches!(
                self.st.phase,
                Phase::Requesting
                    | Phase::PendingApproval
                    | Phase::Active
                    | Phase::Renewing
                    | Phase::Revoking
            )
    }

    // ----- bookkeeping -----

    fn wake_at(&mut self, t: DateTime<Utc>) {
        let t = t.max(self.now() + Duration::seconds(1));
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    fn need(&mut self, n: Need) {
        if !self.needs.contains(&n) {
            self.needs.push(n);
        }
    }

    fn history(&mut self, event: &str, detail: String) {
        self.st.history.push(HistoryEntry {
            time: self.now(),
            event: event.to_string(),
            detail,
        });
        let n = self.st.history.len();
        if n > HISTORY_LIMIT {
            self.st.history.drain(0..n - HISTORY_LIMIT);
        }
    }

    fn event(&mut self, warning: bool, reason: &str, note: String) {
        self.events.push(PlannedEvent {
            warning,
            reason: reason.to_string(),
            note,
        });
    }

    /// Moves to a phase; records history and an event when phase or reason changes.
    fn transition(&mut self, phase: Phase, why: &str, message: String) {
        let changed = self.st.phase != phase || self.st.reason.as_deref() != Some(why);
        self.st.phase = phase;
        self.st.reason = Some(why.to_string());
        self.st.message = Some(message.clone());
        if changed {
            let warning = matches!(phase, Phase::Failed | Phase::Denied)
                || why == reason::REVOKED_OUT_OF_BAND;
            self.history(&format!("{phase:?}"), format!("{why}: {message}"));
            self.event(warning, why, message);
        }
    }

    fn retry_later(&mut self, e: &AzureError) {
        self.retry_later_min(e, Duration::zero());
    }

    /// As `retry_later`, never sooner than `floor` from now.
    fn retry_later_min(&mut self, e: &AzureError, floor: Duration) {
        let failures = self.st.retry.as_ref().map_or(0, |r| r.failures) + 1;
        let exp = self.cfg().backoff_base * 2i32.saturating_pow(failures.saturating_sub(1).min(16));
        // Our own client-side budget said "not yet" (nothing reached Azure): come back when the
        // bucket refills, without growing the backoff.
        let client_side =
            matches!(e, AzureError::Throttled { code, .. } if code == "ClientThrottled");
        let backoff = if client_side {
            Duration::zero()
        } else {
            exp.min(self.cfg().backoff_max)
        };
        let retry_after = match e {
            AzureError::Throttled {
                retry_after_secs, ..
            } => Duration::seconds(i64::try_from(*retry_after_secs).unwrap_or(3600).min(3600)),
            _ => Duration::zero(),
        };
        let not_before = self.now() + backoff.max(retry_after).max(floor);
        self.st.retry = Some(RetryState {
            failures,
            not_before,
            category: e.category().to_string(),
        });
        let why = if matches!(e, AzureError::Throttled { .. }) {
            reason::THROTTLED
        } else {
            reason::TRANSIENT
        };
        self.st.message = Some(format!("{e}; retrying at {}", not_before.to_rfc3339()));
        self.event(
            true,
            why,
            format!("{e}; retry {failures} at {}", not_before.to_rfc3339()),
        );
        self.wake_at(not_before);
    }

    fn clear_retry(&mut self) {
        self.st.retry = None;
    }

    /// Records the intent (status written before the call), then the call. Adds the finalizer
    /// first if missing. Planning stops after this: the executor plans again with the answer.
    #[allow(clippy::too_many_arguments)] // one call shape for every write keeps the ordering rule in one place
    fn write(
        &mut self,
        op: Operation,
        attempt: u32,
        request_id: String,
        end: Option<DateTime<Utc>>,
        w: AzureWrite,
        phase: Phase,
        why: &str,
        message: String,
    ) {
        if self.dry_run() && !op.is_removal() {
            let (request, body) = crate::azure::ops::describe(&w);
            self.st.attempt = attempt;
            self.st.observed_generation = Some(self.meta().generation);
            self.st.dry_run = Some(crate::api::DryRunStatus {
                operation: op,
                request,
                body,
                end_time: end,
                evaluated_at: self.now(),
            });
            self.transition(
                Phase::DryRun,
                reason::DRY_RUN,
                format!(
                    "dry run: validation, AccessPolicy and the Azure policy pre-check passed; would send {} (see status.dryRun); nothing was requested",
                    op.as_str()
                ),
            );
            return;
        }
        if !op.is_removal()
            && let Ok(g) = self.input.spec
            && g.break_glass
        {
            let who = self
                .st
                .requested_by
                .clone()
                .unwrap_or_else(|| "an unverified requester".into());
            let note = format!(
                "BREAK-GLASS {} requested by {who}: {}",
                op.as_str(),
                g.justification.clone().unwrap_or_default()
            );
            self.history(reason::BREAK_GLASS, note.clone());
            self.event(true, reason::BREAK_GLASS, note);
        }
        if !self.meta().has_finalizer {
            self.steps.push(Step::AddFinalizer);
        }
        self.st.attempt = attempt;
        self.st.observed_generation = Some(self.meta().generation);
        self.st.intent = Some(Intent {
            operation: op,
            attempt,
            request_id: request_id.clone(),
            recorded_at: self.now(),
            requested_end: end,
        });
        self.transition(phase, why, message);
        self.history(
            "Intent",
            format!("{} attempt {attempt} id {request_id}", op.as_str()),
        );
        self.finish_conditions();
        self.steps
            .push(Step::RecordIntent(Box::new(self.st.clone())));
        self.steps.push(Step::Azure(w));
    }

    // ----- outcomes -----

    fn apply_write_result(&mut self, w: &WriteResult) {
        let Some(intent) = self.st.intent.clone() else {
            return;
        };
        if intent.operation != w.operation || intent.request_id != w.request_id {
            return;
        }
        match &w.outcome {
            Ok(answer) => {
                self.clear_retry();
                self.apply_answer(&intent, answer);
            }
            Err(e) => self.apply_error(&intent, e),
        }
    }

    fn apply_answer(&mut self, intent: &Intent, answer: &WriteAnswer) {
        match (intent.operation, answer) {
            (Operation::Cancel, _) => {
                self.st.intent = None;
                if let Some(p) = self.st.pim.as_mut() {
                    p.status = Some("Canceled".into());
                }
                self.access_gone(reason::CANCELED, "the pending request was canceled".into());
            }
            (_, WriteAnswer::Pim(req)) => self.apply_pim_request(intent, req),
            (Operation::JitInitiate, WriteAnswer::Jit(req)) => {
                self.st.intent = None;
                self.record_jit_request(intent, req);
                let renewing = self.st.renewals > 0 || self.st.phase == Phase::Renewing;
                let end = jit_end(req).or(intent.requested_end);
                if renewing && intent.attempt > 1 && self.st.start_time.is_some() {
                    self.st.renewals += 1;
                    self.st.end_time = end;
                    self.transition(
                        Phase::Active,
                        reason::RENEWED,
                        format!("JIT access renewed until {}", fmt_t(end)),
                    );
                } else {
                    self.st.start_time = req.start.or(Some(self.now()));
                    self.st.end_time = end;
                    self.transition(
                        Phase::Active,
                        reason::GRANTED,
                        format!("JIT access open until {}", fmt_t(end)),
                    );
                }
                self.st.status_reason = req.ports.first().and_then(|p| p.status_reason.clone());
            }
            (Operation::JitClose, WriteAnswer::Jit(req)) => {
                self.st.intent = None;
                self.record_jit_request(intent, req);
                let end = jit_end(req).or(intent.requested_end);
                self.st.end_time = end;
                self.transition(
                    Phase::Revoking,
                    self.revoke_reason(),
                    format!(
                        "JIT has no revoke API: superseded our request with one that closes at {}",
                        fmt_t(end)
                    ),
                );
            }
            _ => {}
        }
    }

    fn record_jit_request(&mut self, intent: &Intent, req: &JitRequestView) {
        self.st.jit = Some(JitStatus {
            marker: Some(intent.request_id.clone()),
            request_start_time: req.start,
            requestor: req.requestor.clone(),
            ports: req
                .ports
                .iter()
                .map(|p| JitPortStatus {
                    vm_id: p.vm_id.clone(),
                    number: i32::from(p.number),
                    allowed_source_address_prefix: p.prefix.clone(),
                    status: Some(p.status.clone()),
                    status_reason: p.status_reason.clone(),
                    end_time_utc: p.end,
                })
                .collect(),
        });
    }

    fn apply_pim_request(&mut self, intent: &Intent, req: &PimRequestView) {
        let pim = self.st.pim.get_or_insert_with(PimStatus::default);
        pim.request_name = Some(req.name.clone());
        pim.request_id = req.id.clone();
        pim.status = Some(req.status.clone());
        if req.target_schedule_id.is_some() {
            pim.target_schedule_id = req.target_schedule_id.clone();
        }
        self.st.status_reason = Some(req.status.clone());
        let class = pim_class(&req.status);
        if intent.operation == Operation::Cancel {
            // `req` is the request we tried to cancel.
            self.st.intent = None;
            match class {
                PimClass::Canceled | PimClass::Denied | PimClass::Failed | PimClass::Revoked => {
                    self.access_gone(
                        reason::CANCELED,
                        format!("the pending request ended as {}", req.status),
                    );
                }
                // Still pending: the cancel did not land; take_away sends it again.
                PimClass::Pending | PimClass::InProgress => {}
                // Granted before the cancel landed: remove it like any active access.
                PimClass::Granted => {
                    self.st.start_time = self.st.start_time.or(req.start);
                    self.st.end_time = self.st.end_time.or(req.end);
                    self.st.phase = Phase::Revoking;
                }
            }
            return;
        }
        if intent.operation.is_removal() {
            match class {
                PimClass::Revoked | PimClass::Granted => {
                    // Removal accepted: confirm from the instance list before letting go.
                    self.st.intent = None;
                    self.transition(
                        Phase::Revoking,
                        self.revoke_reason(),
                        "removal accepted by Azure; confirming".into(),
                    );
                }
                PimClass::InProgress | PimClass::Pending => {
                    self.st.intent = None;
                    self.transition(
                        Phase::Revoking,
                        self.revoke_reason(),
                        format!("removal in progress ({})", req.status),
                    );
                }
                _ => {
                    // A failed removal must not be forgotten: retry.
                    self.retry_later(&AzureError::Transient {
                        status: None,
                        code: req.status.clone(),
                        message: "removal request did not succeed".into(),
                    });
                }
            }
            return;
        }
        match class {
            PimClass::Granted => {
                self.st.intent = None;
                let end = req.end.or(intent.requested_end);
                if intent.operation == Operation::AdminExtend {
                    self.st.renewals += 1;
                    self.st.end_time = end;
                    self.transition(
                        Phase::Active,
                        reason::RENEWED,
                        format!("assignment extended until {}", fmt_t(end)),
                    );
                } else {
                    let gap = self.st.end_time.filter(|_| {
                        self.st.renewals > 0
                            || intent.attempt > 1 && self.st.phase == Phase::Renewing
                    });
                    if self.st.phase == Phase::Renewing {
                        self.st.renewals += 1;
                        let gap_s = gap.map_or(0, |old_end| {
                            (req.start.unwrap_or(self.now()) - old_end)
                                .num_seconds()
                                .max(0)
                        });
                        self.st.end_time = end;
                        self.transition(Phase::Active, reason::RENEWED, format!("re-activated until {} after a gap of {gap_s}s (PIM activations cannot overlap)", fmt_t(end)));
                    } else {
                        self.st.start_time = req.start.or(Some(self.now()));
                        self.st.end_time = end;
                        self.transition(
                            Phase::Active,
                            reason::GRANTED,
                            format!("role active until {}", fmt_t(end)),
                        );
                    }
                }
            }
            PimClass::Pending => {
                self.st.intent = None;
                self.transition(
                    Phase::PendingApproval,
                    reason::PENDING_APPROVAL,
                    "waiting for a PIM approver".into(),
                );
            }
            PimClass::InProgress => {
                self.st.intent = None;
                self.transition(
                    Phase::Requesting,
                    reason::REQUESTED,
                    format!("Azure is processing the request ({})", req.status),
                );
            }
            PimClass::Denied => {
                self.st.intent = None;
                self.transition(
                    Phase::Denied,
                    reason::APPROVAL_DENIED,
                    format!("the PIM request was denied ({})", req.status),
                );
            }
            PimClass::Canceled => {
                self.st.intent = None;
                self.transition(
                    Phase::Failed,
                    reason::CANCELED,
                    "the PIM request was canceled outside the operator".into(),
                );
            }
            PimClass::Revoked | PimClass::Failed => {
                self.st.intent = None;
                self.transition(
                    Phase::Failed,
                    reason::AZURE_REJECTED,
                    format!("the PIM request ended with status {}", req.status),
                );
            }
        }
    }

    fn apply_error(&mut self, intent: &Intent, e: &AzureError) {
        let removal = intent.operation.is_removal();
        match e {
            AzureError::Throttled { .. }
            | AzureError::Transient { .. }
            | AzureError::Auth { .. } => {
                // A write without an answer may still be applied by Azure: look for it (and
                // only then decide, or send it again) once it cannot.
                let unanswered = matches!(e, AzureError::Transient { status: None, .. });
                let floor = if unanswered {
                    self.cfg().write_settle
                } else {
                    Duration::zero()
                };
                self.retry_later_min(e, floor);
            }
            AzureError::RoleAssignmentExists { .. } if !removal => {
                match &self.input.observed.pim_instance {
                    Read::NotRead => self.need(Need::PimInstance),
                    Read::Found(inst) => {
                        let inst = inst.clone();
                        self.st.intent = None;
                        self.clear_retry();
                        let pim = self.st.pim.get_or_insert_with(PimStatus::default);
                        pim.adopted = true;
                        pim.schedule_instance_id = Some(inst.id.clone());
                        pim.target_schedule_id = inst.schedule_id.clone();
                        pim.status = Some("Provisioned".into());
                        self.st.status_reason = Some("RoleAssignmentExists".into());
                        self.st.start_time = inst.start.or(Some(self.now()));
                        self.st.end_time = inst.end;
                        self.transition(Phase::Active, reason::ADOPTED, format!("the role was already active (RoleAssignmentExists); adopted instance {} until {}", inst.id, fmt_t(inst.end)));
                    }
                    Read::Missing => self.retry_later(e),
                }
            }
            AzureError::RequestExists { .. } => match &self.input.observed.pim_request {
                Read::Found(req) => {
                    let req = req.clone();
                    self.apply_pim_request(intent, &req);
                }
                _ => self.need(Need::PimRequest(intent.request_id.clone())),
            },
            AzureError::ActiveDurationTooShort { .. } if removal => {
                self.st.intent = None;
                // Azure's floor may be longer than ours: never retry before both the floor and
                // a growing backoff have passed.
                let failures = self.st.retry.as_ref().map_or(0, |r| r.failures) + 1;
                let backoff = (self.cfg().backoff_base * 2i32.saturating_pow(failures.min(16)))
                    .min(self.cfg().backoff_max);
                let floor = self.st.start_time.map_or(self.now(), |s| {
                    s + self.cfg().deactivation_floor + Duration::seconds(1)
                });
                let at = floor.max(self.now() + backoff);
                self.st.retry = Some(RetryState {
                    failures,
                    not_before: at,
                    category: reason::WAITING_MINIMUM_ACTIVE.into(),
                });
                self.transition(
                    Phase::Revoking,
                    reason::WAITING_MINIMUM_ACTIVE,
                    format!(
                        "Azure keeps an activation for at least 5 minutes; deactivating at {}",
                        at.to_rfc3339()
                    ),
                );
                self.wake_at(at);
            }
            AzureError::DoesNotExist { .. } if removal => {
                self.st.intent = None;
                self.clear_retry();
                self.access_gone(
                    self.revoke_reason(),
                    "Azure reports no assignment left to remove".into(),
                );
            }
            AzureError::DoesNotExist { .. } if intent.operation == Operation::AdminExtend => {
                // The assignment to extend is gone, e.g. it ended before a late renewal got
                // there: not a rejected request. Decide from Azure's view as for any active
                // grant (Expired at its end, revoked out of band before it, or extend again).
                match &self.input.observed.pim_instance {
                    Read::NotRead => self.need(Need::PimInstance),
                    _ => {
                        self.st.intent = None;
                        self.clear_retry();
                    }
                }
            }
            _ if removal => {
                // Never give up on taking access away: keep retrying, loudly.
                self.retry_later(e);
            }
            AzureError::PolicyRules { rules, message } => {
                self.st.intent = None;
                self.clear_retry();
                let first = rules
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "PolicyRule".into());
                self.st.status_reason = Some(format!(
                    "RoleAssignmentRequestPolicyValidationFailed: {}",
                    rules.join(", ")
                ));
                let hint = rules
                    .iter()
                    .map(|r| rule_hint(r))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.transition(
                    Phase::Failed,
                    &first,
                    format!("Azure refused the request: {message}. {hint}"),
                );
            }
            AzureError::NotFound { code, message } if self.is_jit() => {
                self.st.intent = None;
                self.clear_retry();
                self.st.status_reason = Some(code.clone());
                self.transition(
                    Phase::Failed,
                    reason::JIT_POLICY_NOT_FOUND,
                    format!("the JIT policy was not found: {message}"),
                );
            }
            AzureError::Forbidden { code, message } => {
                self.st.intent = None;
                self.clear_retry();
                self.st.status_reason = Some(code.clone());
                self.transition(
                    Phase::Failed,
                    reason::AUTHORIZATION_FAILED,
                    format!("the operator's Azure identity is not allowed to do this: {message}"),
                );
            }
            AzureError::PendingRequestExists { .. } => self.retry_later(e),
            _ => {
                self.st.intent = None;
                self.clear_retry();
                let (code, message) = error_code_message(e);
                self.st.status_reason = Some(code);
                let why = if self.is_jit() {
                    reason::JIT_REQUEST_REJECTED
                } else {
                    reason::AZURE_REJECTED
                };
                self.transition(
                    Phase::Failed,
                    why,
                    format!("Azure rejected the request: {message}"),
                );
            }
        }
    }

    fn is_jit(&self) -> bool {
        match &self.st.target {
            Some(t) => t.jit.is_some(),
            None => matches!(self.input.spec, Ok(g) if matches!(g.target, ValidTarget::Jit(_))),
        }
    }

    /// Pending intent with unknown outcome: read Azure, adopt what exists, else re-send.
    /// Returns true when planning may continue.
    fn resolve_intent(&mut self) -> bool {
        let Some(intent) = self.st.intent.clone() else {
            return true;
        };
        if self.is_jit() {
            match &self.input.observed.jit_policy {
                Read::NotRead => {
                    self.need(Need::JitPolicy);
                    false
                }
                Read::Found(pol) => {
                    if let Some(req) = pol.requests.iter().find(|r| {
                        r.justification
                            .as_deref()
                            .is_some_and(|j| j.contains(&intent.request_id))
                    }) {
                        let req = req.clone();
                        self.clear_retry();
                        self.apply_answer(&intent, &WriteAnswer::Jit(req));
                        true
                    } else {
                        self.resend(&intent)
                    }
                }
                Read::Missing => self.resend(&intent),
            }
        } else {
            match &self.input.observed.pim_request {
                Read::NotRead => {
                    self.need(Need::PimRequest(intent.request_id.clone()));
                    false
                }
                Read::Found(req) => {
                    let req = req.clone();
                    self.clear_retry();
                    self.apply_pim_request(&intent, &req);
                    true
                }
                Read::Missing => self.resend(&intent),
            }
        }
    }

    /// Until when the write named by `intent` may still reach Azure, sent by whichever replica
    /// recorded it (another one in a split brain, or this one before a restart); None once it
    /// cannot any more.
    ///
    /// Every send records its intent anew (`recorded_at`) right before the call, and the
    /// controller abandons a write `write_deadline` after that; Azure may apply what it received
    /// until `write_settle` later. A retry recorded after the intent (its `not_before` is later
    /// than `recorded_at`, and the next send is recorded no earlier than `not_before`) means the
    /// write came back and its outcome is known; a write that came back without an answer has
    /// its retry held back by `write_settle` (see `apply_error`).
    fn in_flight_until(&self, intent: &Intent) -> Option<DateTime<Utc>> {
        if self
            .st
            .retry
            .as_ref()
            .is_some_and(|r| r.not_before > intent.recorded_at)
        {
            return None;
        }
        let until = intent.recorded_at + self.cfg().write_deadline + self.cfg().write_settle;
        (until > self.now()).then_some(until)
    }

    /// The recorded write is not in Azure. While it may still be on its way (`in_flight_until`)
    /// it is neither dropped nor planned anew, because a new plan would read an Azure that the
    /// write may change a moment later: a PIM grant write is sent again exactly (same operation
    /// and attempt, so the same request name: Azure answers the second PUT with a 409 that is
    /// adopted), anything else is waited out (a JIT write has no id, so a second send would open
    /// the ports twice; a grant no longer wanted must not let go while its grant may still
    /// land). PIM removals are planned anew at once: same names, and their conclusion (access
    /// gone) is read from Azure's instances. Once the write cannot land any more: re-send it
    /// (same id) if still wanted, otherwise drop it. Returns true when planning may continue.
    fn resend(&mut self, intent: &Intent) -> bool {
        let wanted = self.unwanted().is_none();
        let keyed = !matches!(
            intent.operation,
            Operation::JitInitiate | Operation::JitClose
        );
        if let Some(until) = self.in_flight_until(intent)
            && !(keyed && intent.operation.is_removal())
        {
            if keyed && wanted {
                self.send_again(intent);
            } else {
                self.wake_at(until);
            }
            return false;
        }
        if intent.operation.is_removal() {
            // Removal intents are re-planned from scratch by take_away (same ids: the JIT
            // close takes the attempt after the one held, as the lost one did).
            self.st.intent = None;
            if intent.operation == Operation::JitClose {
                self.st.attempt = intent.attempt.saturating_sub(1);
            }
            return true;
        }
        if !wanted {
            // Never granted and no longer wanted.
            self.st.intent = None;
            if matches!(self.st.phase, Phase::Requesting) && self.st.start_time.is_none() {
                self.st.phase = Phase::Pending;
            }
            return true;
        }
        // Grant intents: plan again from the phase; the same attempt gives the same ids.
        self.st.intent = None;
        if self.st.phase == Phase::Renewing && intent.attempt > 1 {
            // A renewal Azure never saw: what we hold is still the previous attempt's access
            // (for JIT, the request with the previous marker). Go back to it; the renewal is
            // planned again with the same attempt, so the same ids.
            let held = intent.attempt - 1;
            self.st.attempt = held;
            self.st.phase = Phase::Active;
            let marker = jit_marker(self.meta(), held);
            if intent.operation == Operation::JitInitiate
                && let Some(js) = self.st.jit.as_mut()
            {
                js.marker = Some(marker);
            }
        }
        true
    }

    /// Sends the write of a PIM grant intent that may still be in flight again, exactly: the
    /// same operation and attempt, so the same request name. Planning stops after it.
    fn send_again(&mut self, intent: &Intent) {
        let Ok(g) = self.input.spec else { return };
        let g = g.clone();
        let renewing = intent.operation == Operation::AdminExtend
            || (self.st.phase == Phase::Renewing && intent.attempt > 1);
        self.st.intent = None;
        self.st.attempt = if renewing {
            intent.attempt - 1
        } else {
            intent.attempt
        };
        self.request(&g, renewing);
    }

    // ----- taking access away -----

    fn revoke_reason(&self) -> &'static str {
        match self.unwanted() {
            Some(Unwanted::Deleted) => reason::DELETED,
            Some(Unwanted::Suspended) => reason::SUSPENDED,
            Some(Unwanted::DryRun) => reason::DRY_RUN,
            Some(_) => reason::WITHDRAWN,
            None => reason::WITHDRAWN,
        }
    }

    fn take_away(&mut self, why: Unwanted) {
        if self.may_hold() {
            if let Some(until) = self.st.retry.as_ref().map(|r| r.not_before)
                && until > self.now()
            {
                self.wake_at(until);
                return;
            }
            if self.meta().deleting && !self.meta().has_finalizer {
                // Cannot happen by construction (finalizer before any write); nothing we may do.
                return;
            }
            if self.input.covered_by_other
                && matches!(self.st.phase, Phase::Active | Phase::Renewing)
            {
                self.transition(Phase::Revoked, reason::HANDED_OVER, "another live AccessGrant covers the same access; left it in place for that grant".into());
                self.access_gone_done();
                return;
            }
            if self.is_jit() {
                self.take_away_jit();
            } else {
                self.take_away_pim();
            }
            return;
        }
        // Holds nothing.
        match why {
            Unwanted::Deleted => {}
            Unwanted::Suspended => {
                if !self.st.phase.is_terminal() || self.generation_moved() {
                    self.transition(
                        Phase::Revoked,
                        reason::SUSPENDED,
                        "suspended before access was granted".into(),
                    );
                }
            }
            Unwanted::Invalid => {
                if let Err(e) = self.input.spec {
                    let msg = format!("{}: {}", e.field, e.reason);
                    self.transition(Phase::Failed, reason::INVALID_SPEC, msg);
                }
            }
            Unwanted::Denied => {
                if let Some(Verdict::Denied { rule, message }) = self.input.verdict {
                    self.st.status_reason = Some(rule.clone());
                    self.transition(Phase::Denied, reason::POLICY_DENIED, message.clone());
                }
            }
            Unwanted::DryRun => {}
        }
        self.access_gone_done();
    }

    /// Access confirmed gone: record and let go of the finalizer when deleting.
    fn access_gone(&mut self, why: &str, message: String) {
        self.st.intent = None;
        self.clear_retry();
        if self.unwanted().is_some() {
            self.transition(Phase::Revoked, why, message);
            self.access_gone_done();
        } else {
            self.transition(Phase::Revoked, why, message);
        }
    }

    fn access_gone_done(&mut self) {
        if self.meta().deleting && self.meta().has_finalizer {
            self.steps.push(Step::RemoveFinalizer);
        }
    }

    fn take_away_pim(&mut self) {
        let Some(t) = self.st.target.as_ref().and_then(|t| t.pim.clone()) else {
            // Nothing recorded: nothing was ever sent.
            self.st.intent = None;
            self.transition(
                Phase::Revoked,
                self.revoke_reason(),
                "no access had been requested".into(),
            );
            self.access_gone_done();
            return;
        };
        let attempt = self.st.attempt.max(1);
        // A request still waiting (approval or processing) must be canceled first, whatever
        // the phase says: an approver could otherwise grant it after we let go.
        // An Active grant's latest request was seen Provisioned, which Azure never turns back
        // into a pending one: no read is needed to know there is nothing to cancel (saves ARM's
        // read budget when many grants are revoked at once).
        let provisioned = self.st.phase == Phase::Active
            && self
                .st
                .pim
                .as_ref()
                .and_then(|p| p.status.as_deref())
                .is_some_and(|s| pim_class(s) == PimClass::Granted);
        if let Some(name) = self.st.pim.as_ref().and_then(|p| p.request_name.clone())
            && !provisioned
        {
            match &self.input.observed.pim_request {
                Read::NotRead => return self.need(Need::PimRequest(name)),
                Read::Missing => {}
                Read::Found(req) => {
                    let class = pim_class(&req.status);
                    let is_grant =
                        !matches!(req.request_type.as_str(), "SelfDeactivate" | "AdminRemove");
                    if is_grant && matches!(class, PimClass::Pending | PimClass::InProgress) {
                        let w = AzureWrite::PimCancel {
                            scope: t.scope.clone(),
                            name: name.clone(),
                            identity: t.identity.clone(),
                        };
                        self.write(
                            Operation::Cancel,
                            attempt,
                            name,
                            None,
                            w,
                            Phase::Revoking,
                            self.revoke_reason(),
                            "canceling the pending PIM request".into(),
                        );
                        return;
                    }
                }
            }
        }
        let inst = match &self.input.observed.pim_instance {
            Read::NotRead => return self.need(Need::PimInstance),
            Read::Missing => {
                self.access_gone(
                    self.revoke_reason(),
                    "Azure shows no active assignment".into(),
                );
                return;
            }
            Read::Found(i) => i.clone(),
        };
        let adopted = self.st.pim.as_ref().is_some_and(|p| p.adopted);
        if adopted && inst.end.is_none() {
            self.access_gone(reason::HANDED_OVER, "the assignment is permanent and existed before this grant; it was not created by the operator and is left in place".into());
            return;
        }
        let started = inst.start.or(self.st.start_time);
        if let Some(s) = started {
            let floor = s + self.cfg().deactivation_floor;
            if self.now() < floor {
                self.transition(
                    Phase::Revoking,
                    reason::WAITING_MINIMUM_ACTIVE,
                    format!(
                        "Azure keeps an activation for at least 5 minutes; removing at {}",
                        floor.to_rfc3339()
                    ),
                );
                self.wake_at(floor + Duration::seconds(1));
                return;
            }
        }
        let op = match t.mode {
            PimMode::Activate => Operation::SelfDeactivate,
            PimMode::Assign => Operation::AdminRemove,
        };
        let name = request_name(&self.meta().uid, attempt, op);
        let body = PimRequestBody {
            request_type: if op == Operation::SelfDeactivate {
                "SelfDeactivate"
            } else {
                "AdminRemove"
            },
            principal_id: t.principal_id.clone(),
            role_definition_id: t.role_definition_id.clone(),
            linked_role_eligibility_schedule_id: None,
            target_role_assignment_schedule_id: None,
            start: None,
            duration: None,
            justification: Some(format!(
                "accessgrant {}/{}: {}",
                self.meta().namespace,
                self.meta().name,
                self.revoke_reason()
            )),
            ticket: None,
        };
        let w = AzureWrite::Pim {
            scope: t.scope.clone(),
            name: name.clone(),
            body,
            identity: if op == Operation::SelfDeactivate {
                t.identity.clone()
            } else {
                None
            },
        };
        self.write(
            op,
            attempt,
            name,
            None,
            w,
            Phase::Revoking,
            self.revoke_reason(),
            "removing the role assignment".into(),
        );
    }

    fn take_away_jit(&mut self) {
        let Some(t) = self.st.target.as_ref().and_then(|t| t.jit.clone()) else {
            self.st.intent = None;
            self.transition(
                Phase::Revoked,
                self.revoke_reason(),
                "no access had been requested".into(),
            );
            self.access_gone_done();
            return;
        };
        let pol = match &self.input.observed.jit_policy {
            Read::NotRead => return self.need(Need::JitPolicy),
            Read::Missing => {
                self.access_gone(
                    self.revoke_reason(),
                    "the JIT policy no longer exists; its requests are gone".into(),
                );
                return;
            }
            Read::Found(p) => p.clone(),
        };
        let Some(marker) = self.st.jit.as_ref().and_then(|j| j.marker.clone()) else {
            self.access_gone(
                self.revoke_reason(),
                "no JIT request had reached Azure".into(),
            );
            return;
        };
        let open_until = jit_open_until(&pol, &marker, self.now());
        let Some(open_until) = open_until else {
            self.access_gone(self.revoke_reason(), "JIT shows our ports closed".into());
            return;
        };
        // Already superseded by our own close request (Azure lists it, still in its window), so
        // never close twice. Read from Azure, not from the phase: a close whose intent was
        // recorded but which never reached Azure (crash) leaves the grant Revoking with nothing
        // sent. A close whose window had already passed when Azure took it (it waited longer
        // than the window for ARM's write budget) was recorded as expired and superseded
        // nothing: the ports are still open, so it does not count and a new close goes out.
        let now = self.now();
        let closing = pol.requests.iter().any(|r| {
            r.justification
                .as_deref()
                .is_some_and(|j| j.contains(JIT_CLOSE_WORDS) && jit_same_grant(j, &marker))
                && r.ports.iter().any(|p| {
                    !p.status.eq_ignore_ascii_case("Revoked") && p.end.is_some_and(|e| e > now)
                })
        });
        if let (Some(window), false) = (self.cfg().jit_early_close, closing)
            && open_until > self.now() + window
        {
            {
                let attempt = self.st.attempt + 1;
                let marker = jit_marker(self.meta(), attempt);
                let end = self.now() + window;
                let vms = jit_initiate_vms(&t, end);
                let justification = format!(
                    "accessgrant {}/{}: {JIT_CLOSE_WORDS} ({}) {marker}",
                    self.meta().namespace,
                    self.meta().name,
                    self.revoke_reason()
                );
                let w = AzureWrite::JitInitiate {
                    subscription_id: t.subscription_id.clone(),
                    resource_group: t.resource_group.clone(),
                    location: t.location.clone(),
                    policy_name: t.policy_name.clone(),
                    vms,
                    justification,
                };
                self.write(
                    Operation::JitClose,
                    attempt,
                    marker,
                    Some(end),
                    w,
                    Phase::Revoking,
                    self.revoke_reason(),
                    "closing JIT access early by superseding it with a one-minute window".into(),
                );
                return;
            }
        }
        let msg = if self.cfg().jit_early_close.is_none() {
            format!(
                "JIT has no revoke API and early close is off: the ports close at {}",
                open_until.to_rfc3339()
            )
        } else {
            format!(
                "waiting for the JIT ports to close at {}",
                open_until.to_rfc3339()
            )
        };
        self.st.end_time = Some(open_until);
        self.transition(Phase::Revoking, self.revoke_reason(), msg);
        self.wake_at(open_until + self.cfg().confirm_poll);
    }

    // ----- keeping access -----

    fn generation_moved(&self) -> bool {
        self.st
            .observed_generation
            .is_some_and(|g| g < self.meta().generation)
    }

    fn keep(&mut self) {
        let Ok(g) = self.input.spec else { return };
        let g = g.clone();
        if self.st.phase.is_terminal() {
            if !self.generation_moved() {
                return; // Finished; a spec change asks again.
            }
            self.start_over();
        }
        if let Some(until) = self.st.retry.as_ref().map(|r| r.not_before)
            && until > self.now()
        {
            self.wake_at(until);
            return;
        }
        match self.st.phase {
            Phase::Pending | Phase::Scheduled => self.request(&g, false),
            Phase::Requesting | Phase::PendingApproval => self.poll_request(&g),
            Phase::Active | Phase::Renewing if self.fresh => self.schedule_active(&g),
            Phase::Active | Phase::Renewing => self.watch_active(&g),
            Phase::Revoking => {
                // Was being taken away but is wanted again (e.g. unsuspended): finish the
                // removal first; a new generation will ask again.
                self.take_away(Unwanted::Suspended);
            }
            _ => {}
        }
    }

    fn start_over(&mut self) {
        let attempt = self.st.attempt + 1;
        self.st.attempt = attempt;
        self.st.observed_generation = Some(self.meta().generation);
        self.st.phase = Phase::Pending;
        self.st.reason = None;
        self.st.status_reason = None;
        self.st.start_time = None;
        self.st.end_time = None;
        self.st.renewals = 0;
        self.st.intent = None;
        self.st.retry = None;
        self.st.jit = None;
        self.st.pim = None;
        self.history(
            "NewGeneration",
            format!(
                "spec changed (generation {}); requesting again as attempt {attempt}",
                self.meta().generation
            ),
        );
    }

    /// The window end for a grant with a scheduled start.
    fn window_end(&self, g: &ValidGrant) -> Option<DateTime<Utc>> {
        g.start_time.map(|s| s + g.duration)
    }

    fn request(&mut self, g: &ValidGrant, renewing: bool) {
        let now = self.now();
        if !renewing {
            if let Some(start) = g.start_time
                && start > now
            {
                self.transition(
                    Phase::Scheduled,
                    reason::SCHEDULED,
                    format!("access starts at {}", start.to_rfc3339()),
                );
                self.wake_at(start);
                return;
            }
            if let Some(end) = self.window_end(g)
                && end <= now + Duration::seconds(1)
            {
                self.transition(
                    Phase::Expired,
                    reason::WINDOW_ELAPSED,
                    format!(
                        "the window {} + {} ended before access could be granted",
                        fmt_t(g.start_time),
                        crate::api::duration::format_iso_duration(g.duration)
                    ),
                );
                self.st.status_reason = Some("Expired".into());
                return;
            }
        }
        // End of this request: duration from now, within the window and the renewal limit.
        let mut end = now + g.duration;
        if !renewing && let Some(w) = self.window_end(g) {
            end = end.min(w);
        }
        if let Some(r) = &g.renewal {
            end = end.min(r.until.max(now + Duration::seconds(1)));
        }
        match &g.target {
            ValidTarget::Pim(p) => self.request_pim(g, p, end, renewing),
            ValidTarget::Jit(j) => self.request_jit(g, j, end, renewing),
        }
    }

    fn record_target(&mut self, g: &ValidGrant) {
        if self.st.target.is_some() {
            return;
        }
        self.st.target = Some(match &g.target {
            ValidTarget::Pim(p) => RecordedTarget {
                jit: None,
                pim: Some(crate::api::PimTarget {
                    mode: p.mode,
                    scope: p.scope.to_string(),
                    role_definition_id: p.role_definition_id.to_string(),
                    principal_id: p.principal_id.clone(),
                    linked_role_eligibility_schedule_id: p
                        .linked_role_eligibility_schedule_id
                        .clone(),
                    identity: p.identity.clone(),
                }),
            },
            ValidTarget::Jit(j) => RecordedTarget {
                pim: None,
                jit: Some(crate::api::JitTarget {
                    subscription_id: j.subscription_id.clone(),
                    resource_group: j.resource_group.clone(),
                    location: j.location.clone(),
                    policy_name: j.policy_name.clone(),
                    virtual_machines: j
                        .vms
                        .iter()
                        .map(|v| crate::api::JitVirtualMachine {
                            id: v.id.to_string(),
                            ports: v
                                .ports
                                .iter()
                                .map(|p| crate::api::JitPort {
                                    number: i32::from(p.number),
                                    allowed_source_address_prefix: None,
                                    allowed_source_address_prefixes: Some(
                                        p.prefixes.iter().map(ToString::to_string).collect(),
                                    ),
                                })
                                .collect(),
                        })
                        .collect(),
                }),
            },
        });
    }

    fn request_pim(&mut self, g: &ValidGrant, p: &ValidPim, end: DateTime<Utc>, renewing: bool) {
        let now = self.now();
        let policy = match &self.input.observed.pim_policy {
            Read::NotRead => return self.need(Need::PimPolicy),
            Read::Found(pol) => Some(pol.clone()),
            Read::Missing => None,
        };
        let mut dur = end - now;
        let mut note = String::new();
        if let Some(pol) = &policy {
            let (max, enabled, level) = match p.mode {
                PimMode::Activate => (
                    pol.enduser_max_duration,
                    &pol.enduser_enabled_rules,
                    "activation",
                ),
                PimMode::Assign => (
                    pol.admin_max_duration,
                    &pol.admin_enabled_rules,
                    "assignment",
                ),
            };
            let mut failed: Vec<(&str, String)> = vec![];
            if let Some(max) = max
                && dur > max
            {
                if g.clamp_duration {
                    note = format!(
                        " (clamped from {} to the role's maximum {})",
                        crate::api::duration::format_iso_duration(dur),
                        crate::api::duration::format_iso_duration(max)
                    );
                    dur = max;
                } else {
                    failed.push(("ExpirationRule", format!("the duration {} exceeds the role's maximum {level} duration {}: set spec.duration to {} or less, or spec.clampDuration: true.", crate::api::duration::format_iso_duration(dur), crate::api::duration::format_iso_duration(max), crate::api::duration::format_iso_duration(max))));
                }
            }
            let has = |r: &str| enabled.iter().any(|e| e.eq_ignore_ascii_case(r));
            if has("Justification") && g.justification.is_none() {
                failed.push((
                    "JustificationRule",
                    "the role requires a justification: set spec.justification.".into(),
                ));
            }
            if has("Ticketing") && g.ticket.is_none() && p.mode == PimMode::Activate {
                failed.push((
                    "TicketingRule",
                    "the role requires ticket information: set spec.ticket.".into(),
                ));
            }
            if has("MultiFactorAuthentication") {
                failed.push(("MfaRule", format!("the role's {level} settings require multi-factor authentication, which a workload identity cannot satisfy: remove MFA from the role settings or use a role without it.")));
            }
            if !failed.is_empty() {
                let names: Vec<&str> = failed.iter().map(|f| f.0).collect();
                let msg = failed
                    .iter()
                    .map(|f| f.1.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.st.status_reason = Some(format!("PolicyPreCheck: {}", names.join(", ")));
                self.transition(
                    Phase::Failed,
                    names[0],
                    format!("refused before asking Azure, by the role's PIM settings: {msg}"),
                );
                return;
            }
        }
        self.record_target(g);
        let attempt = if renewing {
            self.st.attempt + 1
        } else {
            self.st.attempt.max(1)
        };
        let (op, request_type) = match (p.mode, renewing) {
            (PimMode::Activate, _) => (Operation::SelfActivate, "SelfActivate"),
            (PimMode::Assign, false) => (Operation::AdminAssign, "AdminAssign"),
            (PimMode::Assign, true) => (Operation::AdminExtend, "AdminExtend"),
        };
        let name = request_name(&self.meta().uid, attempt, op);
        let target_schedule = if op == Operation::AdminExtend {
            self.st
                .pim
                .as_ref()
                .and_then(|x| x.target_schedule_id.clone())
        } else {
            None
        };
        let body = PimRequestBody {
            request_type,
            principal_id: p.principal_id.clone(),
            role_definition_id: p.role_definition_id.to_string(),
            linked_role_eligibility_schedule_id: p.linked_role_eligibility_schedule_id.clone(),
            target_role_assignment_schedule_id: target_schedule,
            start: Some(now),
            duration: Some(dur),
            justification: self.justification_text(g),
            ticket: g.ticket.clone(),
        };
        let w = AzureWrite::Pim {
            scope: p.scope.to_string(),
            name: name.clone(),
            body,
            identity: if p.mode == PimMode::Activate {
                p.identity.clone()
            } else {
                None
            },
        };
        let (phase, why) = if renewing {
            (Phase::Renewing, reason::RENEWED)
        } else {
            (Phase::Requesting, reason::REQUESTED)
        };
        let pim = self.st.pim.get_or_insert_with(PimStatus::default);
        pim.request_name = Some(name.clone());
        self.write(
            op,
            attempt,
            name,
            Some(now + dur),
            w,
            phase,
            why,
            format!(
                "{request_type} requested for {}{note}",
                crate::api::duration::format_iso_duration(dur)
            ),
        );
    }

    /// The justification sent to Azure: the user's words plus who asked. Never invented when
    /// the user gave none, so a role that requires a justification is not satisfied by us.
    fn justification_text(&self, g: &ValidGrant) -> Option<String> {
        let mut s = g.justification.clone()?;
        if let Some(by) = &self.st.requested_by {
            s.push_str(&format!(" (requested by {by})"));
        }
        Some(s)
    }

    fn request_jit(&mut self, g: &ValidGrant, j: &ValidJit, end: DateTime<Utc>, renewing: bool) {
        let now = self.now();
        let pol = match &self.input.observed.jit_policy {
            Read::NotRead => return self.need(Need::JitPolicy),
            Read::Missing => {
                self.transition(Phase::Failed, reason::JIT_POLICY_NOT_FOUND, format!("JIT policy {} in {}/{} does not exist: check spec.jit.policyName, resourceGroup and location", j.policy_name, j.resource_group, j.location));
                return;
            }
            Read::Found(p) => p.clone(),
        };
        let mut end = end;
        let mut note = String::new();
        for vm in &j.vms {
            let Some(pvm) = pol
                .vms
                .iter()
                .find(|v| crate::azure::ids::ArmId::parse(&v.id).is_ok_and(|id| id == vm.id))
            else {
                self.st.status_reason = Some("VirtualMachineNotInPolicy".into());
                self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("VM {} is not configured in JIT policy {}: ask an admin to enable JIT for it", vm.id, j.policy_name));
                return;
            };
            for port in &vm.ports {
                let Some(rule) = pvm.ports.iter().find(|r| r.number == port.number) else {
                    self.st.status_reason = Some("PortNotInPolicy".into());
                    self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("port {} is not configured for VM {} in JIT policy {} (configured: {:?})", port.number, vm.id.name().unwrap_or_default(), j.policy_name, pvm.ports.iter().map(|r| r.number).collect::<Vec<_>>()));
                    return;
                };
                for prefix in &port.prefixes {
                    let ok = rule.allowed_prefixes.iter().any(|a| {
                        a == "*"
                            || crate::validate::parse_prefix(a).is_ok_and(|net| {
                                net == *prefix
                                    || (net.contains(prefix)
                                        && matches!(
                                            (net, prefix),
                                            (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_))
                                                | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
                                        ))
                            })
                    });
                    if !ok {
                        self.st.status_reason = Some("SourcePrefixNotAllowed".into());
                        self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("source {prefix} is not allowed for port {} by JIT policy {} (allowed: {})", port.number, j.policy_name, rule.allowed_prefixes.join(", ")));
                        return;
                    }
                }
                if let Some(max) = rule.max_duration
                    && end - now > max
                {
                    if g.clamp_duration {
                        note = format!(
                            " (clamped to the JIT policy's maximum {})",
                            crate::api::duration::format_iso_duration(max)
                        );
                        end = now + max;
                    } else {
                        self.st.status_reason = Some("MaxRequestAccessDuration".into());
                        self.transition(Phase::Failed, reason::JIT_REQUEST_REJECTED, format!("the duration {} exceeds the JIT policy's maxRequestAccessDuration {} for port {}: shorten spec.duration or set spec.clampDuration: true", crate::api::duration::format_iso_duration(end - now), crate::api::duration::format_iso_duration(max), port.number));
                        return;
                    }
                }
            }
        }
        self.record_target(g);
        let attempt = if renewing {
            self.st.attempt + 1
        } else {
            self.st.attempt.max(1)
        };
        let marker = jit_marker(self.meta(), attempt);
        let Some(t) = self.st.target.as_ref().and_then(|t| t.jit.clone()) else {
            return;
        };
        // Azure already lists a request with this attempt's marker (its intent was lost, or
        // another replica sent it): adopt it rather than open the ports a second time.
        if let Some(req) = pol
            .requests
            .iter()
            .find(|r| {
                r.justification
                    .as_deref()
                    .is_some_and(|j| j.contains(&marker))
            })
            .cloned()
        {
            if !self.meta().has_finalizer {
                self.steps.push(Step::AddFinalizer);
            }
            self.st.attempt = attempt;
            self.st.observed_generation = Some(self.meta().generation);
            if renewing {
                self.st.phase = Phase::Renewing;
            }
            let intent = Intent {
                operation: Operation::JitInitiate,
                attempt,
                request_id: marker,
                recorded_at: now,
                requested_end: Some(end),
            };
            self.apply_answer(&intent, &WriteAnswer::Jit(req));
            self.wake_at(now + self.cfg().confirm_poll);
            return;
        }
        let mut justification = self.justification_text(g).unwrap_or_else(|| {
            format!("accessgrant {}/{}", self.meta().namespace, self.meta().name)
        });
        if let Some(tk) = &g.ticket {
            justification.push_str(&format!(" ticket {} {}", tk.system, tk.number));
        }
        justification.push(' ');
        justification.push_str(&marker);
        let w = AzureWrite::JitInitiate {
            subscription_id: j.subscription_id.clone(),
            resource_group: j.resource_group.clone(),
            location: j.location.clone(),
            policy_name: j.policy_name.clone(),
            vms: jit_initiate_vms(&t, end),
            justification,
        };
        let js = self.st.jit.get_or_insert_with(JitStatus::default);
        js.marker = Some(marker.clone());
        let (phase, why) = if renewing {
            (Phase::Renewing, reason::RENEWED)
        } else {
            (Phase::Requesting, reason::REQUESTED)
        };
        self.write(
            Operation::JitInitiate,
            attempt,
            marker,
            Some(end),
            w,
            phase,
            why,
            format!("JIT initiate requested until {}{note}", end.to_rfc3339()),
        );
    }

    fn poll_request(&mut self, _g: &ValidGrant) {
        let Some(name) = self.st.pim.as_ref().and_then(|p| p.request_name.clone()) else {
            // JIT has no pending state; a Requesting JIT grant without intent re-requests.
            self.st.phase = Phase::Pending;
            let g = _g.clone();
            return self.request(&g, false);
        };
        match &self.input.observed.pim_request {
            Read::NotRead => self.need(Need::PimRequest(name)),
            Read::Missing => {
                // Azure lost it (or purged it): ask again with the same attempt.
                self.st.phase = Phase::Pending;
                let g = _g.clone();
                self.request(&g, false);
            }
            Read::Found(req) => {
                let req = req.clone();
                let op = if self
                    .st
                    .target
                    .as_ref()
                    .and_then(|t| t.pim.as_ref())
                    .is_some_and(|p| p.mode == PimMode::Assign)
                {
                    Operation::AdminAssign
                } else {
                    Operation::SelfActivate
                };
                let intent = Intent {
                    operation: op,
                    attempt: self.st.attempt,
                    request_id: name,
                    recorded_at: self.now(),
                    requested_end: None,
                };
                self.apply_pim_request(&intent, &req);
                match self.st.phase {
                    Phase::PendingApproval => {
                        // Approvals take minutes to hours: look again with growing gaps.
                        let since = self
                            .st
                            .history
                            .iter()
                            .rev()
                            .find(|h| h.event == "PendingApproval")
                            .map_or(self.now(), |h| h.time);
                        let gap = ((self.now() - since) / 4)
                            .clamp(Duration::seconds(5), Duration::minutes(5));
                        self.wake_at(self.now() + gap);
                    }
                    Phase::Requesting => self.wake_at(self.now() + self.cfg().confirm_poll),
                    Phase::Active => {
                        let g = _g.clone();
                        self.watch_active(&g);
                    }
                    _ => {}
                }
            }
        }
    }

    fn watch_active(&mut self, g: &ValidGrant) {
        let now = self.now();
        let Some(end) = self.st.end_time else {
            // Active without an end: permanent adopted access; check now and then.
            self.wake_at(now + self.cfg().drift_check);
            return;
        };
        let renew_limit = g.renewal.as_ref().map(|r| r.until);
        let can_renew = renew_limit.is_some_and(|u| u > end + Duration::seconds(30));
        if self.is_jit() {
            let pol = match &self.input.observed.jit_policy {
                Read::NotRead => return self.need(Need::JitPolicy),
                Read::Missing => {
                    self.st.status_reason = Some("JitPolicyNotFound".into());
                    self.transition(Phase::Revoked, reason::REVOKED_OUT_OF_BAND, "the JIT policy was deleted; its access is gone. Not re-granted: change the spec to ask again".into());
                    return;
                }
                Read::Found(p) => p.clone(),
            };
            let marker = self
                .st
                .jit
                .as_ref()
                .and_then(|j| j.marker.clone())
                .unwrap_or_default();
            // The newest request with our marker: if Azure lists two (two writers raced), the
            // newer superseded the older and is the one in force.
            let ours = pol
                .requests
                .iter()
                .filter(|r| {
                    r.justification
                        .as_deref()
                        .is_some_and(|j| j.contains(&marker))
                })
                .max_by_key(|r| r.start);
            let Some(req) = ours.cloned() else {
                if now >= end {
                    self.expired("Expired".into());
                } else {
                    self.st.status_reason = Some("RequestNotListed".into());
                    self.transition(
                        Phase::Revoked,
                        reason::REVOKED_OUT_OF_BAND,
                        "our JIT request is no longer listed in the policy; not re-granted".into(),
                    );
                }
                return;
            };
            self.record_jit_request(
                &Intent {
                    operation: Operation::JitInitiate,
                    attempt: self.st.attempt,
                    request_id: marker.clone(),
                    recorded_at: now,
                    requested_end: None,
                },
                &req,
            );
            let closed: Vec<&JitRequestPortView> = req
                .ports
                .iter()
                .filter(|p| p.status.eq_ignore_ascii_case("Revoked"))
                .collect();
            if !closed.is_empty() {
                let reason_s = closed[0].status_reason.clone().unwrap_or_default();
                if reason_s.eq_ignore_ascii_case("Expired") || now >= end {
                    if can_renew && self.st.phase != Phase::Renewing {
                        // Missed the renewal window: renew now (a gap happened; record it).
                        return self.renew(g);
                    }
                    self.expired(reason_s);
                } else {
                    self.st.status_reason = Some(reason_s.clone());
                    self.transition(Phase::Revoked, reason::REVOKED_OUT_OF_BAND, format!("JIT access ended before its end time ({reason_s}); not re-granted: change the spec to ask again"));
                }
                return;
            }
            if now >= end + self.cfg().confirm_poll {
                // Past the end but Azure has not closed it yet.
                self.wake_at(now + self.cfg().confirm_poll);
                return;
            }
            let renew_at = end - g.renewal.as_ref().map_or(Duration::zero(), |r| r.before);
            if can_renew && now >= renew_at {
                return self.renew(g);
            }
            if can_renew {
                self.wake_at(renew_at);
            }
            self.wake_at(end + self.cfg().confirm_poll);
            self.wake_at(now + self.cfg().drift_check);
            return;
        }
        // PIM
        let inst = match &self.input.observed.pim_instance {
            Read::NotRead => return self.need(Need::PimInstance),
            Read::Missing => None,
            Read::Found(i) => Some(i.clone()),
        };
        let mode = self
            .st
            .target
            .as_ref()
            .and_then(|t| t.pim.as_ref())
            .map_or(PimMode::Activate, |p| p.mode);
        match inst {
            None => {
                if now + self.cfg().confirm_poll >= end {
                    if can_renew && mode == PimMode::Activate {
                        // Activations cannot overlap: re-activate right after the end.
                        return self.renew(g);
                    }
                    self.expired("Expired".into());
                } else if self
                    .st
                    .start_time
                    .is_some_and(|s| now - s < self.cfg().visibility_grace)
                {
                    self.wake_at(now + self.cfg().confirm_poll);
                } else {
                    self.st.status_reason = Some("Revoked".into());
                    self.transition(Phase::Revoked, reason::REVOKED_OUT_OF_BAND, format!("the role assignment ended before {} (removed outside the operator); not re-granted: change the spec to ask again", end.to_rfc3339()));
                }
            }
            Some(i) => {
                if let Some(p) = self.st.pim.as_mut() {
                    p.schedule_instance_id = Some(i.id.clone());
                    if i.schedule_id.is_some() {
                        p.target_schedule_id = i.schedule_id.clone();
                    }
                }
                if let Some(e) = i.end
                    && e != end
                    && self.st.phase == Phase::Active
                {
                    self.st.end_time = Some(e);
                }
                let end = self.st.end_time.unwrap_or(end);
                if now >= end {
                    self.wake_at(now + self.cfg().confirm_poll);
                    return;
                }
                if can_renew && mode == PimMode::Assign {
                    let renew_at = end - g.renewal.as_ref().map_or(Duration::zero(), |r| r.before);
                    if now >= renew_at {
                        return self.renew(g);
                    }
                    self.wake_at(renew_at);
                }
                self.wake_at(end);
                self.wake_at(now + self.cfg().drift_check);
            }
        }
    }

    /// Wake-ups for a grant Azure just confirmed: renewal, end, and the drift check.
    fn schedule_active(&mut self, g: &ValidGrant) {
        let now = self.now();
        let Some(end) = self.st.end_time else {
            self.wake_at(now + self.cfg().drift_check);
            return;
        };
        let mode_assign = self
            .st
            .target
            .as_ref()
            .and_then(|t| t.pim.as_ref())
            .is_some_and(|p| p.mode == PimMode::Assign);
        let can_renew = g
            .renewal
            .as_ref()
            .is_some_and(|r| r.until > end + Duration::seconds(30));
        if can_renew && (self.is_jit() || mode_assign) {
            let renew_at = end - g.renewal.as_ref().map_or(Duration::zero(), |r| r.before);
            if renew_at <= now {
                // Granted so short that renewal is already due: decide from Azure's view.
                return self.watch_active(g);
            }
            self.wake_at(renew_at);
        }
        self.wake_at(
            end + if self.is_jit() {
                self.cfg().confirm_poll
            } else {
                Duration::zero()
            },
        );
        self.wake_at(now + self.cfg().drift_check);
    }

    fn renew(&mut self, g: &ValidGrant) {
        self.request(g, true);
    }

    fn expired(&mut self, status_reason: String) {
        self.st.status_reason = Some(if status_reason.is_empty() {
            "Expired".into()
        } else {
            status_reason
        });
        self.transition(
            Phase::Expired,
            reason::EXPIRED,
            format!("access ended at {}", fmt_t(self.st.end_time)),
        );
    }

    // ----- finishing -----

    fn finish_conditions(&mut self) {
        let now = self.now();
        let generation = self.meta().generation;
        let spec_ok = self
            .input
            .spec
            .as_ref()
            .err()
            .map(|e| format!("{}: {}", e.field, e.reason));
        match spec_ok {
            None => set_condition(
                &mut self.st.conditions,
                cond::SPEC_VALID,
                true,
                "Valid",
                "",
                now,
                generation,
            ),
            Some(m) => set_condition(
                &mut self.st.conditions,
                cond::SPEC_VALID,
                false,
                reason::INVALID_SPEC,
                &m,
                now,
                generation,
            ),
        }
        match self.input.verdict {
            Some(Verdict::Allowed { policy }) => set_condition(
                &mut self.st.conditions,
                cond::POLICY_ALLOWED,
                true,
                reason::POLICY_ALLOWED,
                &format!("allowed by AccessPolicy {policy}"),
                now,
                generation,
            ),
            Some(Verdict::Denied { rule, message }) => set_condition(
                &mut self.st.conditions,
                cond::POLICY_ALLOWED,
                false,
                rule,
                message,
                now,
                generation,
            ),
            None => {}
        }
        let active = matches!(self.st.phase, Phase::Active | Phase::Renewing)
            || (self.st.phase == Phase::Revoking && self.st.end_time.is_some_and(|e| e > now));
        let r = self
            .st
            .reason
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.st.phase));
        let m = self.st.message.clone().unwrap_or_default();
        set_condition(
            &mut self.st.conditions,
            cond::ACTIVE,
            active,
            &r,
            &m,
            now,
            generation,
        );
        set_condition(
            &mut self.st.conditions,
            cond::READY,
            self.st.phase == Phase::Active,
            &r,
            &m,
            now,
            generation,
        );
        // kstatus (Flux, kpt, `kubectl wait`): Reconciling while the grant moves, Stalled when
        // it cannot get there, neither once settled, so an expired grant is not an error.
        let (reconciling, stalled) = kstatus_conditions(self.st.phase);
        for (type_, on) in [(cond::RECONCILING, reconciling), (cond::STALLED, stalled)] {
            if on {
                set_condition(
                    &mut self.st.conditions,
                    type_,
                    true,
                    &r,
                    &m,
                    now,
                    generation,
                );
            } else {
                self.st.conditions.retain(|c| c.type_ != type_);
            }
        }
        let (verified, why, msg) = match (&self.meta().requester, &self.meta().stamp_problem) {
            (Some(r), _) => (
                true,
                reason::STAMP_VALID,
                format!(
                    "requested by {} (stamped {})",
                    r.username,
                    r.stamped_at.to_rfc3339()
                ),
            ),
            (None, Some(p)) => (false, reason::STAMP_INVALID, p.clone()),
            (None, None) => (
                false,
                reason::STAMP_MISSING,
                "no requester stamp: the grant was created or changed without the operator's admission webhook".to_string(),
            ),
        };
        set_condition(
            &mut self.st.conditions,
            cond::REQUESTER_VERIFIED,
            verified,
            why,
            &msg,
            now,
            generation,
        );
        match &self.st.retry {
            Some(rt) => {
                let msg = format!(
                    "{} failure(s); next try at {}",
                    rt.failures,
                    rt.not_before.to_rfc3339()
                );
                let cat = rt.category.clone();
                set_condition(
                    &mut self.st.conditions,
                    cond::RETRYING,
                    true,
                    &cat,
                    &msg,
                    now,
                    generation,
                );
            }
            None => set_condition(
                &mut self.st.conditions,
                cond::RETRYING,
                false,
                "NoError",
                "",
                now,
                generation,
            ),
        }
    }

    fn finish(mut self) -> Plan {
        self.st.observed_generation = Some(self.meta().generation);
        self.finish_conditions();
        if let Some(w) = self.wake
            && w <= self.now()
        {
            self.wake = Some(self.now() + Duration::seconds(1));
        }
        Plan {
            steps: self.steps,
            status: self.st,
            events: self.events,
            wake_at: self.wake,
            needs: self.needs,
        }
    }
}

/// Sets a condition, keeping `lastTransitionTime` unless status or reason changed.
/// Which kstatus conditions a phase carries: (Reconciling, Stalled).
pub fn kstatus_conditions(phase: Phase) -> (bool, bool) {
    match phase {
        Phase::Denied | Phase::Failed => (false, true),
        Phase::Active | Phase::Expired | Phase::Revoked | Phase::DryRun => (false, false),
        Phase::Pending
        | Phase::Scheduled
        | Phase::Requesting
        | Phase::PendingApproval
        | Phase::Renewing
        | Phase::Revoking => (true, false),
    }
}

pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    why: &str,
    message: &str,
    now: DateTime<Utc>,
    generation: i64,
) {
    let status_s = if status { "True" } else { "False" };
    let why = if why.is_empty() { "Unknown" } else { why };
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status_s || c.reason != why {
            c.last_transition_time = now;
        }
        c.status = status_s.into();
        c.reason = why.into();
        c.message = message.into();
        c.observed_generation = Some(generation);
    } else {
        conds.push(Condition {
            type_: type_.into(),
            status: status_s.into(),
            reason: why.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: Some(generation),
        });
    }
}

fn fmt_t(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "unknown".into(), |t| t.to_rfc3339())
}

fn jit_end(req: &JitRequestView) -> Option<DateTime<Utc>> {
    req.ports.iter().filter_map(|p| p.end).max()
}

/// The latest instant any port of our (marker) request is still open, or None when closed.
fn jit_open_until(pol: &JitPolicyView, marker: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Our own close request (a newer attempt) may hold the ports open until its end too.
    pol.requests
        .iter()
        .filter(|r| {
            r.justification
                .as_deref()
                .is_some_and(|j| j.contains(marker) || jit_same_grant(j, marker))
        })
        .flat_map(|r| r.ports.iter())
        .filter(|p| !p.status.eq_ignore_ascii_case("Revoked"))
        .filter_map(|p| p.end)
        .filter(|e| *e > now)
        .max()
}

/// Words in the justification of our JIT close requests (how a pass recognises its own close).
const JIT_CLOSE_WORDS: &str = "closing early";

/// True when a justification carries a marker of the same grant (any attempt).
fn jit_same_grant(justification: &str, marker: &str) -> bool {
    // marker = [ag:ns/name#N.uid8]; same grant = same "[ag:ns/name#" prefix and ".uid8]" suffix.
    let (Some(hash), Some(dot)) = (marker.find('#'), marker.rfind('.')) else {
        return false;
    };
    let (prefix, suffix) = (&marker[..=hash], &marker[dot..]);
    justification.find(prefix).is_some_and(|i| {
        let rest = &justification[i + prefix.len()..];
        rest.find(']').is_some_and(|close| {
            rest[..=close].ends_with(suffix)
                && rest[..rest.len().min(close)]
                    .split('.')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
    })
}

fn jit_initiate_vms(t: &crate::api::JitTarget, end: DateTime<Utc>) -> Vec<JitInitiateVm> {
    t.virtual_machines
        .iter()
        .map(|vm| JitInitiateVm {
            id: vm.id.clone(),
            ports: vm
                .ports
                .iter()
                .flat_map(|p| {
                    let prefixes: Vec<String> = match (
                        &p.allowed_source_address_prefix,
                        &p.allowed_source_address_prefixes,
                    ) {
                        (Some(one), _) => vec![one.clone()],
                        (None, Some(many)) => many.clone(),
                        (None, None) => vec![],
                    };
                    prefixes.into_iter().map(move |prefix| JitInitiatePort {
                        number: u16::try_from(p.number).unwrap_or(0),
                        allowed_source_address_prefix: prefix,
                        end_time_utc: end,
                    })
                })
                .collect(),
        })
        .collect()
}

fn summary(g: &ValidGrant) -> GrantSummary {
    match &g.target {
        ValidTarget::Jit(j) => GrantSummary {
            kind: "JIT".into(),
            target: j
                .vms
                .iter()
                .map(|v| {
                    format!(
                        "{}:{}",
                        v.id.name().unwrap_or_default(),
                        v.ports
                            .iter()
                            .map(|p| p.number.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        },
        ValidTarget::Pim(p) => {
            let role = p
                .role_definition_id
                .role_guid()
                .map(|g| g.chars().take(8).collect::<String>())
                .unwrap_or_default();
            let scope = p.scope.name().unwrap_or("/");
            let mode = match p.mode {
                PimMode::Activate => "Activate",
                PimMode::Assign => "Assign",
            };
            GrantSummary {
                kind: "PIM".into(),
                target: format!("{mode} {role}@{scope}"),
            }
        }
    }
}

fn rule_hint(rule: &str) -> &'static str {
    match rule {
        "ExpirationRule" => {
            "ExpirationRule: the duration exceeds the role's maximum; shorten spec.duration or set spec.clampDuration: true."
        }
        "JustificationRule" => {
            "JustificationRule: the role requires a justification; set spec.justification."
        }
        "TicketingRule" => "TicketingRule: the role requires ticket information; set spec.ticket.",
        "MfaRule" => {
            "MfaRule: the role requires multi-factor authentication, which a workload identity cannot satisfy; change the role's settings or use another role."
        }
        "EligibilityRule" => {
            "EligibilityRule: the principal is not eligible for this role at this scope; ask an admin for an eligible assignment, or check spec.pim.scope and roleDefinitionId."
        }
        _ => "Change the spec to satisfy the role's PIM settings.",
    }
}

fn error_code_message(e: &AzureError) -> (String, String) {
    match e {
        AzureError::Invalid { code, message, .. }
        | AzureError::NotFound { code, message }
        | AzureError::Forbidden { code, message }
        | AzureError::Auth { code, message }
        | AzureError::Transient { code, message, .. } => {
            (code.clone(), format!("{code}: {message}"))
        }
        other => (other.category().to_string(), other.to_string()),
    }
}
