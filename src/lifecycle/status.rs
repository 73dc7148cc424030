//! Bookkeeping every flow shares: wake-ups, reads needed, history, events, phase
//! transitions and the outcomes they end in, conditions, and the finished plan.

use super::types::*;
use super::{Ctx, Unwanted};
use crate::api::{Condition, GrantSummary, HistoryEntry, Phase, PimMode, RecordedTarget};
use crate::constants::{HISTORY_LIMIT, condition as cond, reason};
use crate::guard::Verdict;
use crate::validate::{ValidGrant, ValidTarget};
use chrono::{DateTime, Duration, Utc};

impl Ctx<'_> {
    pub(super) fn wake_at(&mut self, t: DateTime<Utc>) {
        let t = t.max(self.now() + Duration::seconds(1));
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    pub(super) fn need(&mut self, n: Need) {
        if !self.needs.contains(&n) {
            self.needs.push(n);
        }
    }

    /// Our finalizer before anything that may leave access in Azure (added once per plan).
    pub(super) fn ensure_finalizer(&mut self) {
        if !self.meta().has_finalizer && !self.steps.contains(&Step::AddFinalizer) {
            self.steps.push(Step::AddFinalizer);
        }
    }

    pub(super) fn history(&mut self, event: &str, detail: String) {
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

    pub(super) fn event(&mut self, warning: bool, reason: &str, note: String) {
        self.events.push(PlannedEvent {
            warning,
            reason: reason.to_string(),
            note,
        });
    }

    /// Moves to a phase; records history and an event when phase or reason changes.
    pub(super) fn transition(&mut self, phase: Phase, why: &str, message: String) {
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

    /// Access confirmed gone: record and let go of the finalizer when deleting.
    pub(super) fn access_gone(&mut self, why: &str, message: String) {
        self.st.intent = None;
        self.clear_retry();
        if self.unwanted().is_some() {
            self.transition(Phase::Revoked, why, message);
            self.access_gone_done();
        } else {
            self.transition(Phase::Revoked, why, message);
        }
    }

    /// Taking away a grant whose target was never recorded: nothing was ever sent.
    pub(super) fn nothing_requested(&mut self) {
        self.st.intent = None;
        self.transition(
            Phase::Revoked,
            self.revoke_reason(),
            "no access had been requested".into(),
        );
        self.access_gone_done();
    }

    pub(super) fn access_gone_done(&mut self) {
        if self.meta().deleting && self.meta().has_finalizer {
            self.steps.push(Step::RemoveFinalizer);
        }
    }

    pub(super) fn expired(&mut self, status_reason: String) {
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

    pub(super) fn revoke_reason(&self) -> &'static str {
        match self.unwanted() {
            Some(Unwanted::Deleted) => reason::DELETED,
            Some(Unwanted::Suspended) => reason::SUSPENDED,
            Some(Unwanted::DryRun) => reason::DRY_RUN,
            Some(Unwanted::Shortened) => reason::SHORTENED,
            Some(_) => reason::WITHDRAWN,
            None => reason::WITHDRAWN,
        }
    }

    pub(super) fn finish_conditions(&mut self) {
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

    pub(super) fn finish(mut self) -> Plan {
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
            dry_run: self.dry_run_write,
        }
    }

    pub(super) fn record_target(&mut self, g: &ValidGrant) {
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
}

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

/// Sets a condition, keeping `lastTransitionTime` unless status or reason changed.
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

pub(super) fn fmt_t(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "unknown".into(), |t| t.to_rfc3339())
}

pub(super) fn summary(g: &ValidGrant) -> GrantSummary {
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
