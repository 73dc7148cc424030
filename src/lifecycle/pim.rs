//! PIM: asking for a role (SelfActivate, AdminAssign, AdminExtend), following the request,
//! watching the active assignment, and taking it away (cancel, SelfDeactivate, AdminRemove).

use super::AzureError;
use super::Ctx;
use super::names::{jit_marker, request_name};
use super::status::fmt_t;
use super::types::*;
use crate::api::{Intent, Operation, Phase, PimMode, PimStatus};
use crate::constants::reason;
use crate::validate::{ValidGrant, ValidPim};
use chrono::{DateTime, Duration, Utc};

impl Ctx<'_> {
    pub(super) fn apply_pim_request(&mut self, intent: &Intent, req: &PimRequestView) {
        let pim = self.st.pim.get_or_insert_with(PimStatus::default);
        pim.request_name = Some(req.name.clone());
        pim.request_id = req.id.clone();
        pim.status = Some(req.status.clone());
        if req.target_schedule_id.is_some() {
            pim.target_schedule_id = req.target_schedule_id.clone();
        }
        self.st.status_reason = Some(req.status.clone());
        let class = req.class;
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

    /// Whether this grant's last recorded PIM request is a grant Azure provisioned and whose
    /// schedule has not ended; None until it is read (the need is pushed).
    pub(super) fn pim_grant_in_force_in_azure(&mut self) -> Option<bool> {
        let Some(name) = self.st.pim.as_ref().and_then(|p| p.request_name.clone()) else {
            return Some(false);
        };
        match &self.input.observed.pim_request {
            Read::NotRead => {
                self.need(Need::PimRequest(name));
                None
            }
            Read::Missing => Some(false),
            Read::Found(r) => Some(
                !r.removal && r.class == PimClass::Granted && r.end.is_none_or(|e| e > self.now()),
            ),
        }
    }

    pub(super) fn take_away_pim(&mut self) {
        let Some(t) = self.st.target.as_ref().and_then(|t| t.pim.clone()) else {
            return self.nothing_requested();
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
                // Azure's status recorded from an answer classed Granted (or written on adoption).
                .is_some_and(|s| s.eq_ignore_ascii_case("Provisioned"));
        if let Some(name) = self.st.pim.as_ref().and_then(|p| p.request_name.clone())
            && !provisioned
        {
            match &self.input.observed.pim_request {
                Read::NotRead => return self.need(Need::PimRequest(name)),
                Read::Missing => {}
                Read::Found(req) => {
                    let class = req.class;
                    let is_grant = !req.removal;
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

    pub(super) fn request_pim(
        &mut self,
        g: &ValidGrant,
        p: &ValidPim,
        end: DateTime<Utc>,
        renewing: bool,
    ) {
        let now = self.now();
        let policy = match &self.input.observed.pim_policy {
            Read::NotRead => return self.need(Need::PimPolicy),
            Read::Found(pol) => Some(pol.clone()),
            Read::Missing => None,
        };
        let mut dur = end - now;
        let mut note = String::new();
        let justification_optional = policy.as_ref().is_some_and(|pol| {
            let enabled = match p.mode {
                PimMode::Activate => &pol.enduser_enabled_rules,
                PimMode::Assign => &pol.admin_enabled_rules,
            };
            !enabled
                .iter()
                .any(|e| e.eq_ignore_ascii_case("Justification"))
        });
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
            // The marker links the access in Azure back to this grant (the orphan sweep finds
            // access whose grant is gone by it, as for JIT). It never stands in for a
            // justification the user did not give: without one, it is sent only where the
            // role's settings were read and require none (else Azure's JustificationRule
            // would be satisfied by the operator's words, not a person's).
            justification: match self.justification_text(g) {
                Some(text) => Some(format!("{text} {}", jit_marker(self.meta(), attempt))),
                None if justification_optional => Some(format!(
                    "{} {}",
                    self.attributed(format!(
                        "accessgrant {}/{}",
                        self.meta().namespace,
                        self.meta().name
                    )),
                    jit_marker(self.meta(), attempt)
                )),
                None => None,
            },
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

    pub(super) fn poll_request(&mut self, _g: &ValidGrant) {
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

    /// An Active PIM grant: is the assignment still there, is renewal due.
    pub(super) fn watch_active_pim(&mut self, g: &ValidGrant, end: DateTime<Utc>, can_renew: bool) {
        let now = self.now();
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
}
