//! Property tests over random grants, random Azure answers (errors, lost answers, approvals,
//! out-of-band revocations) and random crash points between steps.

use crate::support;

use accessgrant_operator::api::*;
use accessgrant_operator::azure::error::AzureError;
use accessgrant_operator::lifecycle::PimPolicyView;
use accessgrant_testkit::{ReconcileReport, reconcile};
use chrono::Duration;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use support::*;

#[derive(Clone, Debug)]
enum Action {
    Advance(i64),
    Reconcile,
    Crash(usize),
    Fault(u8),
    LoseAnswer,
    Approve(bool),
    RevokeOutOfBand,
    Delete,
    Suspend(bool),
    Edit,
    DropPolicy,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1i64..4000).prop_map(Action::Advance),
        4 => Just(Action::Reconcile),
        3 => (0usize..6).prop_map(Action::Crash),
        2 => (0u8..5).prop_map(Action::Fault),
        1 => Just(Action::LoseAnswer),
        1 => any::<bool>().prop_map(Action::Approve),
        1 => Just(Action::RevokeOutOfBand),
        1 => Just(Action::Delete),
        1 => any::<bool>().prop_map(Action::Suspend),
        1 => Just(Action::Edit),
        1 => Just(Action::DropPolicy),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    kind: u8,
    renewal: bool,
    start_offset: Option<i64>,
    approval: bool,
    eligible: bool,
    invalid: bool,
    denied: bool,
    duration_min: i64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        0u8..3,
        any::<bool>(),
        prop::option::of(-7200i64..7200),
        any::<bool>(),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        6i64..120,
    )
        .prop_map(
            |(kind, renewal, start_offset, approval, eligible, invalid, denied, duration_min)| {
                Setup {
                    kind,
                    renewal,
                    start_offset,
                    approval,
                    eligible,
                    invalid,
                    denied,
                    duration_min,
                }
            },
        )
}

fn fault(n: u8) -> AzureError {
    match n {
        0 => AzureError::Throttled {
            code: "TooManyRequests".into(),
            retry_after_secs: 20,
        },
        1 => AzureError::Transient {
            status: Some(503),
            code: "ServiceUnavailable".into(),
            message: "x".into(),
        },
        2 => AzureError::Transient {
            status: None,
            code: "ConnectionReset".into(),
            message: "x".into(),
        },
        3 => AzureError::Auth {
            code: "ExpiredAuthenticationToken".into(),
            message: "x".into(),
        },
        _ => AzureError::Transient {
            status: Some(500),
            code: "InternalServerError".into(),
            message: "x".into(),
        },
    }
}

struct Run {
    w: World,
    /// (generation, log length) when the grant was first seen Expired.
    expired_at: Option<(i64, usize)>,
}

impl Run {
    fn check(&mut self, rep: &ReconcileReport) -> Result<(), TestCaseError> {
        prop_assert!(
            rep.violations.is_empty(),
            "violations: {:?}",
            rep.violations
        );
        if let Some(wk) = rep.wake_at {
            prop_assert!(
                wk > self.w.now,
                "wake_at {} not after now {}",
                wk,
                self.w.now
            );
        }
        // Never two applied grant writes for one request id (PIM name or JIT marker).
        let mut seen: HashMap<String, usize> = HashMap::new();
        for l in self.w.model.log.iter().filter(|l| {
            l.applied
                && matches!(
                    l.kind.as_str(),
                    "SelfActivate" | "AdminAssign" | "JitInitiate"
                )
        }) {
            let key = match l.id.find("[ag:") {
                Some(i) => l.id[i..].to_string(),
                None => l.id.clone(),
            };
            *seen.entry(key).or_default() += 1;
        }
        prop_assert!(
            seen.values().all(|n| *n == 1),
            "an attempt was granted twice: {seen:?}"
        );
        // An Expired grant is never granted again in the same generation.
        if self.w.grant.status.phase == Phase::Expired && self.expired_at.is_none() {
            self.expired_at = Some((self.w.grant.meta.generation, self.w.model.log.len()));
        }
        if let Some((g, mark)) = self.expired_at {
            if self.w.grant.meta.generation == g {
                let regrants = self.w.model.log[mark..]
                    .iter()
                    .filter(|l| {
                        l.applied
                            && matches!(
                                l.kind.as_str(),
                                "SelfActivate" | "AdminAssign" | "JitInitiate"
                            )
                    })
                    .count();
                prop_assert_eq!(regrants, 0, "an Expired grant was granted again");
            } else {
                self.expired_at = None;
            }
        }
        Ok(())
    }

    fn reconcile(&mut self, crash: Option<usize>) -> Result<(), TestCaseError> {
        let rep = reconcile(
            &mut self.w.grant,
            &mut self.w.model,
            &self.w.policies,
            &BTreeMap::new(),
            false,
            self.w.now,
            &self.w.config,
            crash,
        );
        self.check(&rep)?;
        // Re-planning on the same observation at the same instant repeats no write.
        if !rep.crashed && !self.w.grant.gone {
            let before = self.w.model.log.len();
            let again = reconcile(
                &mut self.w.grant,
                &mut self.w.model,
                &self.w.policies,
                &BTreeMap::new(),
                false,
                self.w.now,
                &self.w.config,
                None,
            );
            self.check(&again)?;
            prop_assert_eq!(
                self.w.model.log.len(),
                before,
                "a second pass at the same instant wrote again"
            );
        }
        self.w.last = rep;
        Ok(())
    }

    /// Deletes (if not yet) and runs until the object is gone; then no access may remain.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.w.model.faults.clear();
        self.w.model.lose_next_answer = false;
        self.w.grant.meta.deleting = true;
        for _ in 0..60 {
            if self.w.grant.gone {
                break;
            }
            self.reconcile(None)?;
            let next = self
                .w
                .last
                .wake_at
                .unwrap_or(self.w.now + Duration::minutes(1));
            self.w.now = next.max(self.w.now + Duration::seconds(1));
        }
        prop_assert!(
            self.w.grant.gone || !self.w.grant.meta.has_finalizer,
            "a deleted grant never let go: {:?}",
            self.w.grant.status
        );
        let ours: Vec<String> = self.w.model.log.iter().map(|l| l.id.clone()).collect();
        let live_pim = self
            .w
            .model
            .instances
            .values()
            .filter(|i| i.request_name.as_ref().is_some_and(|n| ours.contains(n)))
            .count();
        prop_assert_eq!(live_pim, 0, "PIM access left after delete");
        self.w.model.tick(self.w.now);
        let open_jit = self
            .w
            .model
            .open_jit_ports()
            .into_iter()
            .filter(|p| p.2.contains("[ag:team-a/g1#"))
            .count();
        prop_assert_eq!(open_jit, 0, "JIT ports left open after delete");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn planner_invariants_hold(s in setup(), actions in prop::collection::vec(action(), 1..30)) {
        let mut spec = match s.kind {
            0 => pim_spec(PimMode::Activate),
            1 => pim_spec(PimMode::Assign),
            _ => jit_spec(),
        };
        spec.duration = IsoDuration::new(format!("PT{}M", s.duration_min));
        if s.renewal {
            spec.renewal = Some(RenewalSpec { until: t0() + Duration::hours(4), before: Some(IsoDuration::new("PT3M")) });
        }
        if let Some(off) = s.start_offset {
            spec.start_time = Some(t0() + Duration::seconds(off));
        }
        if s.invalid {
            spec.duration = IsoDuration::new("PT0S");
        }
        let mut w = World::new(spec);
        if s.denied {
            w.policies.clear();
        }
        if !s.eligible {
            w.model.eligible.clear();
        }
        if s.approval {
            w.model.pim_policies.insert((scope().to_ascii_lowercase(), role().to_ascii_lowercase()), PimPolicyView { approval_required: true, ..Default::default() });
        }
        let mut run = Run { w, expired_at: None };
        for a in &actions {
            match a {
                Action::Advance(secs) => run.w.now += Duration::seconds(*secs),
                Action::Reconcile => run.reconcile(None)?,
                Action::Crash(n) => run.reconcile(Some(*n))?,
                Action::Fault(n) => run.w.model.faults.push_back(fault(*n)),
                Action::LoseAnswer => run.w.model.lose_next_answer = true,
                Action::Approve(yes) => {
                    let names: Vec<String> = run.w.model.requests.keys().cloned().collect();
                    for n in names { run.w.model.decide(&n, *yes, run.w.now); }
                }
                Action::RevokeOutOfBand => {
                    run.w.model.instances.clear();
                    for pol in run.w.model.jit_policies.values_mut() {
                        for r in &mut pol.requests { for p in &mut r.ports { if p.status != "Revoked" { p.status = "Revoked".into(); p.status_reason = Some("UserRequested".into()); } } }
                    }
                }
                Action::Delete => run.w.grant.meta.deleting = true,
                Action::Suspend(on) => { run.w.grant.spec.suspend = Some(*on); run.w.grant.meta.generation += 1; }
                Action::Edit => { run.w.grant.spec.justification = Some(format!("edit {}", run.w.now)); run.w.grant.meta.generation += 1; }
                Action::DropPolicy => run.w.policies.clear(),
            }
            if run.w.grant.gone { break; }
        }
        if s.invalid || s.denied {
            prop_assert!(run.w.model.log.is_empty(), "Denied/InvalidSpec made Azure writes: {:?}", run.w.model.log);
            prop_assert_eq!(run.w.model.reads, 0, "Denied/InvalidSpec made Azure reads");
        }
        run.drain()?;
    }
}
