//! Removal: taking access away when it is no longer wanted, or recording why none is held.

use super::{Ctx, Unwanted};
use crate::api::Phase;
use crate::constants::reason;
use crate::guard::Verdict;

impl Ctx<'_> {
    pub(super) fn take_away(&mut self, why: Unwanted) {
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
        // The recorded phase says nothing is held. Before the finalizer goes, Azure has the last
        // word (one read): a status written by someone else must not hide open access.
        if matches!(why, Unwanted::Deleted)
            && self.meta().has_finalizer
            && self.st.target.is_some()
            && !self.input.covered_by_other
        {
            let open = if self.is_jit() {
                self.jit_open_in_azure()
            } else {
                self.pim_grant_in_force_in_azure()
            };
            match open {
                None => return,
                Some(true) => {
                    let note = format!(
                        "status says {:?}, but Azure shows this grant's access still in force; taking it away before the grant goes",
                        self.st.phase
                    );
                    self.history(reason::STATUS_CONTRADICTED, note.clone());
                    self.event(true, reason::STATUS_CONTRADICTED, note);
                    if self.is_jit() {
                        self.take_away_jit();
                    } else {
                        self.take_away_pim();
                    }
                    return;
                }
                Some(false) => {}
            }
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
            Unwanted::DryRun | Unwanted::Shortened => {}
        }
        self.access_gone_done();
    }
}
