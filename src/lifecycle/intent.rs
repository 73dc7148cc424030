//! Intents and answers: a write is recorded before it is sent, and a write of unknown outcome
//! is resolved from Azure before anything else is decided.

use super::Ctx;
use super::names::jit_marker;
use super::types::*;
use crate::api::{Intent, Operation, Phase};
use crate::constants::reason;
use crate::validate::ValidGrant;
use chrono::{DateTime, Utc};

impl Ctx<'_> {
    /// Records the intent (status written before the call), then the call. Adds the finalizer
    /// first if missing. Planning stops after this: the executor plans again with the answer.
    #[allow(clippy::too_many_arguments)] // one call shape for every write keeps the ordering rule in one place
    pub(super) fn write(
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
            self.st.attempt = attempt;
            self.st.observed_generation = Some(self.meta().generation);
            // The request and body are rendered by the executor from `Plan::dry_run` (the wire
            // format is the Azure adapter's).
            self.st.dry_run = Some(crate::api::DryRunStatus {
                operation: op,
                request: String::new(),
                body: String::new(),
                end_time: end,
                evaluated_at: self.now(),
            });
            self.dry_run_write = Some(w);
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
        self.ensure_finalizer();
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

    pub(super) fn apply_write_result(&mut self, w: &WriteResult) {
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

    /// Pending intent with unknown outcome: read Azure, adopt what exists, else re-send.
    /// Returns true when planning may continue.
    pub(super) fn resolve_intent(&mut self) -> bool {
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
    pub(super) fn in_flight_until(&self, intent: &Intent) -> Option<DateTime<Utc>> {
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
    pub(super) fn resend(&mut self, intent: &Intent) -> bool {
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
    pub(super) fn send_again(&mut self, intent: &Intent) {
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

    /// The justification sent to Azure: who asked, then the user's words. Never invented when
    /// the user gave none, so a role that requires a justification is not satisfied by us.
    pub(super) fn justification_text(&self, g: &ValidGrant) -> Option<String> {
        Some(self.attributed(g.justification.clone()?))
    }

    /// `text` after the [`attribution`](Self::attribution), when there is one.
    pub(super) fn attributed(&self, text: String) -> String {
        match self.attribution() {
            Some(a) => format!("{a} {text}"),
            None => text,
        }
    }

    /// Who asked, as Azure keeps it (its `requestor` is the operator's principal): always
    /// first in the justification, `[requested-by:alice@example.com]`, with
    /// `; edited-by:bob@example.com` when someone else made the current spec. User text can
    /// neither contain nor imitate it (`validate`). None when the current spec's requester is
    /// not verified: the operator then claims nobody.
    pub(super) fn attribution(&self) -> Option<String> {
        let current = self.meta().requested_by.as_deref()?;
        let first = self.st.requested_by.as_deref().unwrap_or(current);
        Some(if first == current {
            format!("{}{first}]", crate::validate::ATTRIBUTION_PREFIX)
        } else {
            format!(
                "{}{first}; edited-by:{current}]",
                crate::validate::ATTRIBUTION_PREFIX
            )
        })
    }
}
