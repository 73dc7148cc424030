//! The pure lifecycle planner: `plan(input) -> Plan` (see ARCHITECTURE.md for its files).
//!
//! No I/O, no clock reads, no randomness. Everything the planner remembers between passes is in
//! `status`; everything it knows about Azure is in `Observed`. A crash anywhere is handled by
//! the next pass seeing the recorded intent and reading Azure before writing again.

mod error;
mod failure;
mod intent;
mod jit;
mod names;
mod pim;
mod ports;
mod removal;
mod renewal;
mod status;
mod types;

pub use error::AzureError;
pub use names::{jit_marker, parse_marker, request_name};
pub use ports::{PortClaim, jit_port_key, port_holder};
pub use status::{kstatus_conditions, set_condition};
pub use types::*;

use crate::api::{AccessGrantStatus, Intent, Operation, Phase};
use crate::constants::{FINALIZER, condition as cond, reason};
use crate::guard::Verdict;
use crate::validate::{InvalidSpec, ValidGrant, ValidTarget};
use chrono::{DateTime, Duration, Utc};
use status::{fmt_t, summary};

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
    pub namespace: String,
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
    /// Another grant of ours holds (or goes first on) a JIT VM port this grant asks for.
    pub port_holder: Option<&'a PortHolder>,
    pub now: DateTime<Utc>,
    /// Settings.
    pub config: &'a PlannerConfig,
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
    dry_run_write: Option<AzureWrite>,
}

/// Why access is not wanted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unwanted {
    Deleted,
    Suspended,
    Invalid,
    Denied,
    DryRun,
    /// `spec.duration` was shortened and its end has passed.
    Shortened,
}

/// Another grant of ours on a JIT VM port this one asks for: Azure keeps one request per VM
/// port (a newer one closes the older), so this grant waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    /// `namespace/name` of the other grant.
    pub grant: String,
    /// The VM port, `vm-name:port`.
    pub port: String,
    /// Its end, when it holds access with one.
    pub until: Option<DateTime<Utc>>,
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
        dry_run_write: None,
    };
    c.run();
    c.finish()
}

/// History event of a spec edit.
const EDITED: &str = "Edited";

/// How far Azure's end may lie from the spec's (start + duration) before an edit is assumed:
/// Azure's JIT start comes a moment after the request, and it keeps whole seconds.
const EDIT_TOLERANCE: Duration = Duration::seconds(30);

impl Ctx<'_> {
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
        // The requester of the current spec: a valid stamp binds it to this very spec. Who
        // asked first stays `requestedBy`; whoever made a later spec is its `editedBy`.
        let current = self.meta().requested_by.clone();
        if self.st.requested_by.is_none() {
            self.st.requested_by = current.clone();
        }
        self.st.edited_by = current
            .clone()
            .filter(|c| self.st.requested_by.as_ref() != Some(c));
        self.st.requester = self.meta().requester.clone();
        self.record_edit(current.as_deref());
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
        if !self.meta().deleting && !self.meta().has_finalizer && self.may_hold() {
            // Removed by hand (with the webhook that refuses it bypassed): without it a delete
            // would leave the access in Azure.
            let note = format!(
                "finalizer {FINALIZER} was removed while the grant may hold access; put back (to end access: delete the grant or set spec.suspend: true)"
            );
            self.history(reason::FINALIZER_RESTORED, note.clone());
            self.event(true, reason::FINALIZER_RESTORED, note);
            self.ensure_finalizer();
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
        if self.shortened() {
            return Some(Unwanted::Shortened);
        }
        None
    }

    /// The end the current spec asks for, for a granted grant whose end is not governed by
    /// renewal: its start plus `spec.duration`, within its window.
    fn spec_end(&self, g: &ValidGrant) -> Option<DateTime<Utc>> {
        if g.renewal.is_some() {
            return None;
        }
        let mut end = self.st.start_time? + g.duration;
        if let Some(w) = self.window_end(g) {
            end = end.min(w);
        }
        Some(end)
    }

    /// `spec.duration` was made shorter and the shorter end has passed while Azure's is later
    /// (or the removal that follows from it is under way).
    fn shortened(&self) -> bool {
        if self.st.phase == Phase::Revoking {
            return self.st.reason.as_deref() == Some(reason::SHORTENED);
        }
        let Ok(g) = self.input.spec else { return false };
        matches!(self.st.phase, Phase::Active | Phase::Renewing)
            && self.st.intent.is_none()
            && self.spec_end(g).is_some_and(|want| {
                want <= self.now()
                    && self
                        .st
                        .end_time
                        .is_some_and(|end| end > want + EDIT_TOLERANCE)
            })
    }

    /// An edited `spec.duration` of granted access takes effect: a later end extends it (JIT:
    /// a new request with the new end; PIM Assign: AdminExtend), an earlier one closes it then
    /// (`shortened`). Azure cannot extend a PIM activation: a condition says so. Returns
    /// whether this pass acts on it.
    fn follow_duration_edit(&mut self, g: &ValidGrant, end: DateTime<Utc>) -> bool {
        let Some(want) = self.spec_end(g) else {
            return false;
        };
        let now = self.now();
        let activation = self
            .st
            .target
            .as_ref()
            .and_then(|t| t.pim.as_ref())
            .is_some_and(|p| p.mode == crate::api::PimMode::Activate);
        let generation = self.meta().generation;
        if want > end + EDIT_TOLERANCE && want > now && self.st.intent.is_none() {
            if activation {
                set_condition(
                    &mut self.st.conditions,
                    cond::EXTENDED,
                    false,
                    "ActivationCannotBeExtended",
                    &format!(
                        "Azure cannot extend a PIM activation: it ends at {}, not at {} as spec.duration now asks; add spec.renewal to activate again at its end",
                        end.to_rfc3339(),
                        want.to_rfc3339()
                    ),
                    now,
                    generation,
                );
                return false;
            }
            self.history(
                "Extending",
                format!(
                    "spec.duration now ends at {}; extending from {}",
                    want.to_rfc3339(),
                    end.to_rfc3339()
                ),
            );
            self.renew(g);
            return true;
        }
        if want + EDIT_TOLERANCE < end {
            // Shortened: `shortened` takes it away when `want` comes.
            self.wake_at(want.max(now + Duration::seconds(1)));
        }
        self.st.conditions.retain(|c| c.type_ != cond::EXTENDED);
        false
    }

    /// Whether Azure access may exist for this grant (or a request is in flight).
    fn may_hold(&self) -> bool {
        self.st.may_hold_access()
    }

    fn is_jit(&self) -> bool {
        match &self.st.target {
            Some(t) => t.jit.is_some(),
            None => matches!(self.input.spec, Ok(g) if matches!(g.target, ValidTarget::Jit(_))),
        }
    }

    /// A history entry per spec edit seen (generation after the first), naming its author.
    fn record_edit(&mut self, by: Option<&str>) {
        let generation = self.meta().generation;
        if generation <= 1 || !self.generation_moved() {
            return;
        }
        let tag = format!("generation {generation} ");
        if self
            .st
            .history
            .iter()
            .any(|h| h.event == EDITED && h.detail.starts_with(&tag))
        {
            return;
        }
        let who = by.unwrap_or("a user the admission webhook did not verify");
        let what = if self.input.suspend {
            "suspended"
        } else {
            "spec changed"
        };
        self.history(EDITED, format!("{tag}{what} by {who}"));
    }

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
                // Was being taken away but is wanted again (resumed, or allowed again by
                // policy): finish the removal first (a JIT close cannot be called back), then
                // ask again in this same pass, not end `Revoked` with nothing open.
                self.take_away(Unwanted::Suspended);
                if self.st.phase == Phase::Revoked && self.st.intent.is_none() {
                    self.history(
                        "WantedAgain",
                        "the removal finished; the grant is wanted again, so it is requested again"
                            .into(),
                    );
                    self.start_over();
                    self.keep();
                }
            }
            _ => {}
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
            (_, WriteAnswer::Jit(req)) => self.apply_jit_answer(intent, req),
            _ => {}
        }
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
        // End of this request: duration from now, within the window and the renewal limit. A
        // renewal of a grant without `spec.renewal` is the extension of an edited duration
        // (`follow_duration_edit`; also when its intent is sent again after a crash): it ends
        // where the spec does, start + duration.
        let mut end = match (renewing, self.spec_end(g)) {
            (true, Some(spec_end)) => spec_end,
            _ => now + g.duration,
        };
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

    fn watch_active(&mut self, g: &ValidGrant) {
        let now = self.now();
        let Some(end) = self.st.end_time else {
            // Active without an end: permanent adopted access; check now and then.
            self.wake_at(now + self.cfg().drift_check);
            return;
        };
        if self.follow_duration_edit(g, end) {
            return;
        }
        let can_renew = g
            .renewal
            .as_ref()
            .is_some_and(|r| r.until > end + Duration::seconds(30));
        if self.is_jit() {
            self.watch_active_jit(g, end, can_renew);
        } else {
            self.watch_active_pim(g, end, can_renew);
        }
    }
}
