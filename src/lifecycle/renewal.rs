//! Renewal and spec changes: wake-ups for granted access, and starting over on a new generation.

use super::Ctx;
use crate::api::{Phase, PimMode};
use crate::validate::ValidGrant;
use chrono::{DateTime, Duration, Utc};

impl Ctx<'_> {
    /// Wake-ups for a grant Azure just confirmed: renewal, end, and the drift check.
    pub(super) fn schedule_active(&mut self, g: &ValidGrant) {
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

    pub(super) fn renew(&mut self, g: &ValidGrant) {
        self.request(g, true);
    }

    pub(super) fn start_over(&mut self) {
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
    pub(super) fn window_end(&self, g: &ValidGrant) -> Option<DateTime<Utc>> {
        g.start_time.map(|s| s + g.duration)
    }
}
