//! Failure mapping: what an Azure error means for the grant (retry, adopt, fail, wait).

use super::AzureError;
use super::Ctx;
use super::status::fmt_t;
use super::types::*;
use crate::api::{Intent, Operation, Phase, PimStatus, RetryState};
use crate::constants::reason;
use chrono::Duration;

impl Ctx<'_> {
    pub(super) fn retry_later(&mut self, e: &AzureError) {
        self.retry_later_min(e, Duration::zero());
    }

    /// As `retry_later`, never sooner than `floor` from now.
    pub(super) fn retry_later_min(&mut self, e: &AzureError, floor: Duration) {
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

    /// A removal write failed: a `RevocationFailing` history entry, once per failure streak
    /// (the notifications are sent from the history). A streak lasts while nothing but retried
    /// intents follows the last such entry, so it is noted again after a phase change, or once
    /// the 20-entry history has rotated it out (about every 20 attempts). Our own client-side
    /// budget saying "not yet" reached no Azure and is no failure.
    fn revocation_failing(&mut self, e: &AzureError) {
        if matches!(e, AzureError::Throttled { code, .. } if code == "ClientThrottled") {
            return;
        }
        let noted = self
            .st
            .history
            .iter()
            .rev()
            .find(|h| h.event != "Intent")
            .is_some_and(|h| h.event == reason::REVOCATION_FAILING);
        if !noted {
            self.history(
                reason::REVOCATION_FAILING,
                format!("taking the access away failed ({e}); retrying"),
            );
        }
    }

    pub(super) fn clear_retry(&mut self) {
        self.st.retry = None;
    }

    pub(super) fn apply_error(&mut self, intent: &Intent, e: &AzureError) {
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
                if removal {
                    self.revocation_failing(e);
                }
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
                self.revocation_failing(e);
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
